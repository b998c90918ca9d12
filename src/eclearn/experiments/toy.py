"""The built-in ``toy`` experiment: constrained least squares with a closed-form answer.

Synthetic data (no download): features ``x ∈ R^d`` whose mean depends on a group
``g ∈ {0..G-1}``, and ``y = w*ᵀx + b* + noise``. A linear model ``f(x) = wᵀx + b`` solves

    minimise    E[(f(x) − y)²]
    subject to  E[f(x) | g = k] = target      k = 0..G-1   (vector equality, one per group)
                E[x₀ · f(x)]    ≤ bound                     (inequality)

Every statistic is linear in θ = (w, b), so the exact minimiser on the training set and its
multipliers solve the KKT linear system (float64; the inequality is active exactly when
the equality-only solution violates it). The run reports how close the primal-dual
solution gets: ``param_error`` = ‖θ − θ*‖/‖θ*‖, ``multiplier_error`` (the penalty
formulation has no multipliers: its *implied* ones, the penalty's derivative at the final
violation, are compared instead), the objective gap, and the held-out objective and
constraint verdicts from :func:`eclearn.evaluate`. Mini-batches are shuffled through
:class:`eclearn.Batches`, so resuming mid-epoch exercises the RNG replay.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

import eclearn as ecl
from eclearn.batches import validation_split
from eclearn.experiments.base import (
    Experiment,
    ExperimentConfig,
    RunContext,
    RunRecord,
    Setup,
)
from eclearn.solver import FitResult

__all__ = ["ToyConfig", "ToyExperiment", "kkt_solution", "make_data"]


class ToyConfig(ExperimentConfig):
    """Settings of the toy experiment (all have defaults; see ``eclearn/configs/toy.toml``)."""

    formulation: Literal["lagrangian", "penalty", "augmented"] = Field(
        "lagrangian", description="ecl.Lagrangian, ecl.Penalty or ecl.AugmentedLagrangian"
    )
    n_train: int = Field(8192, ge=16, description="training samples")
    n_test: int = Field(20000, ge=16, description="held-out samples")
    dim: int = Field(4, ge=1, le=64, description="features")
    groups: int = Field(3, ge=1, le=16, description="groups (one equality each)")
    noise: float = Field(0.5, ge=0, description="label noise std")
    target: float = Field(0.75, description="prescribed mean prediction of every group")
    bound: float = Field(0.5, description="bound of E[x0 · f(x)]")
    batch_size: int = Field(1024, ge=1)
    epochs: int = Field(100, ge=1)
    max_steps: int | None = Field(None, ge=1, description="optional step budget")
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.1, gt=0, description="primal learning rate (cosine-decayed)")
    lr_final: float = Field(0.01, gt=0, le=1, description="final lr as a fraction of lr")
    dual_optimizer: Literal["sgd", "adam", "nupi"] = "sgd"
    dual_lr: float = Field(0.2, gt=0)
    rho: float = Field(1.0, gt=0, description="augmented Lagrangian penalty parameter")
    penalty_weight: float = Field(
        2.0, ge=0, description="weight of the penalty formulation (above ~3, lower lr)"
    )
    penalty_power: Literal[1, 2] = 2
    tolerance: float = Field(0.05, ge=0, description="constraint tolerance for verdicts")
    checkpoint_every: int = Field(200, ge=1, description="steps between checkpoints")

    @model_validator(mode="after")
    def _enough_parameters(self) -> ToyConfig:
        if self.groups > self.dim:
            raise ValueError(
                f"groups ({self.groups}) must be ≤ dim ({self.dim}): the {self.groups} group "
                f"equalities and the inequality constrain only {self.dim + 1} parameters"
            )
        return self


def make_data(n: int, config: ToyConfig) -> dict[str, Tensor]:
    """``n`` samples drawn from torch's global generator (seeded by the runner)."""
    d, k = config.dim, config.groups
    group = torch.randint(0, k, (n,))
    shift = torch.zeros(k, d)
    shift[torch.arange(k), torch.arange(k) % d] = 1.0
    x = torch.randn(n, d) + shift[group]
    w_true = torch.linspace(1.0, -0.5, d)
    y = (x * w_true).sum(1) + 0.3 + config.noise * torch.randn(n)
    onehot = nn.functional.one_hot(group, k).to(torch.float32)
    return {"x": x, "y": y, "onehot": onehot}


def _design(data: dict[str, Tensor]) -> Tensor:
    x = data["x"].double()
    return torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], dim=1)


def statistics(data: dict[str, Tensor]) -> dict[str, Tensor]:
    """The problem's statistics as linear maps of θ = (w, b), in float64.

    Sums are plain elementwise reductions, not BLAS products: MKL's results for long
    float64 products depend on memory alignment, which would make the reference solution
    (and so ``metrics.json``) differ in the last bits between processes.
    """
    z = _design(data)
    y = data["y"].double()
    onehot = data["onehot"].double()
    n = len(z)
    return {
        "hessian": (z[:, :, None] * z[:, None, :]).sum(0) / n,
        "linear": (z * y[:, None]).sum(0) / n,
        "group_mean": (onehot[:, :, None] * z[:, None, :]).sum(0)
        / onehot.sum(0).clamp_min(1)[:, None],
        "moment": (data["x"][:, 0].double()[:, None] * z).mean(0),
        "yy": (y * y).mean(),
    }


def objective_of(theta: Tensor, s: dict[str, Tensor]) -> float:
    """Training mean squared error of θ from the statistics (no BLAS, see above)."""
    quadratic = (theta[:, None] * s["hessian"] * theta[None, :]).sum()
    return float(quadratic - 2 * (s["linear"] * theta).sum() + s["yy"])


def apply(rows: Tensor, theta: Tensor) -> Tensor:
    """``rows @ theta`` as an elementwise reduction (no BLAS, see :func:`statistics`)."""
    return (rows * theta).sum(-1)


def _solve(system: Tensor, rhs: Tensor) -> Tensor:
    try:
        return torch.linalg.solve(system, rhs)
    except RuntimeError:  # singular: dependent constraints; take the least-squares solution
        return torch.linalg.lstsq(system, rhs[:, None]).solution[:, 0]


def kkt_solution(data: dict[str, Tensor], target: float, bound: float) -> dict[str, Any]:
    """Exact constrained least squares on ``data``: θ*, multipliers (μ*, λ*), objective."""
    s = statistics(data)
    h, c, a, m = s["hessian"], s["linear"], s["group_mean"], s["moment"]
    k, p = a.shape

    def solve(rows: Tensor, rhs: Tensor) -> tuple[Tensor, Tensor]:
        n = rows.shape[0]
        system = torch.zeros(p + n, p + n, dtype=torch.float64)
        system[:p, :p] = 2 * h
        system[:p, p:] = rows.T
        system[p:, :p] = rows
        solution = _solve(system, torch.cat([2 * c, rhs]))
        return solution[:p], solution[p:]

    targets = torch.full((k,), float(target), dtype=torch.float64)
    theta, mu = solve(a, targets)
    active = bool(apply(m, theta) > bound)
    if active:
        theta, both = solve(torch.cat([a, m[None]]), torch.cat([targets, targets.new([bound])]))
        mu, lam = both[:k], both[k:]
    else:
        lam = torch.zeros(1, dtype=torch.float64)
    return {
        "theta": theta,
        "mu": mu,
        "lam": lam,
        "active": active,
        "objective": objective_of(theta, s),
        "unconstrained": _solve(h, c),
    }


def _parameters(model: nn.Module) -> Tensor:
    """(w, b) of the linear model; for a randomized mixture (``--select mixture``) the
    weighted average, whose predictions are the mixture's expected predictions."""
    if isinstance(model, ecl.MixtureModel):
        stacked = torch.stack([_parameters(m) for m in model.members])
        return (model.weights.double().cpu()[:, None] * stacked).sum(0)
    assert isinstance(model, nn.Linear)
    return torch.cat([model.weight.detach().reshape(-1), model.bias.detach()]).double().cpu()


class ToyExperiment(Experiment):
    """Constrained linear regression against its exact KKT solution (see the module doc)."""

    name = "toy"
    description = "constrained least squares with a closed-form KKT solution (no data)"
    Config = ToyConfig
    table_metrics = (
        "param_error",
        "multiplier_error",
        "objective_gap",
        "train_max_violation",
        "test_objective",
        "test_max_violation",
        "test_feasible",
    )

    @classmethod
    def memory_estimate(cls, config: ExperimentConfig) -> dict[str, float]:
        """The data (features, one-hot groups, targets; float32) with room for one copy."""
        assert isinstance(config, ToyConfig)
        row = 2 * 4 * (config.dim + config.groups + 1)
        return {"n_train": float(row * config.n_train), "n_test": float(row * config.n_test)}

    def setup(self, config: ToyConfig, context: RunContext) -> Setup:  # type: ignore[override]
        train, test = make_data(config.n_train, config), make_data(config.n_test, config)
        share = config.validation_share()
        validation = None
        if share > 0:  # model selection judges a split of the training data, never the test
            train, validation = validation_split(train, share, seed=context.seed)
        model = nn.Linear(config.dim, 1)
        k = config.groups

        def evaluate(model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Any]:
            pred = model(batch["x"]).squeeze(-1)
            onehot = batch["onehot"]
            return {
                "objective": ((pred - batch["y"]) ** 2).mean(),
                "group_mean": ecl.Ratio(onehot.T @ pred, onehot.sum(0)),
                "moment": (batch["x"][:, 0] * pred).mean(),
            }

        problem = ecl.Problem(
            evaluate,
            [
                ecl.Equality("group_mean", size=k, rhs=config.target, tolerance=config.tolerance),
                ecl.Inequality("moment", bound=config.bound, tolerance=config.tolerance),
            ],
        )
        optimizer: torch.optim.Optimizer
        if config.optimizer == "sgd":
            optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
        else:
            optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        batches = ecl.Batches(train, config.batch_size, shuffle=True, device=context.device)
        total = config.epochs * len(batches)
        if config.max_steps is not None:
            total = min(total, config.max_steps)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=total, eta_min=config.lr * config.lr_final
        )
        dual = {"sgd": ecl.dual.SGD, "adam": ecl.dual.Adam, "nupi": ecl.dual.NuPI}[
            config.dual_optimizer
        ](lr=config.dual_lr)
        formulation = {
            "lagrangian": ecl.Lagrangian,
            "penalty": lambda: ecl.Penalty(config.penalty_weight, power=config.penalty_power),
            "augmented": lambda: ecl.AugmentedLagrangian(config.rho),
        }[config.formulation]()
        solver = ecl.PrimalDual(
            problem,
            model,
            optimizer,
            dual,
            formulation=formulation,
            scheduler=scheduler,
            device=context.device,
        )
        kkt = kkt_solution(train, config.target, config.bound)
        context.log(
            f"toy: {config.n_train} samples, {k} group equalities + 1 inequality "
            f"({'active' if kkt['active'] else 'inactive'} at the optimum); exact objective "
            f"{kkt['objective']:.6g}, KKT multipliers "
            f"{[round(v, 4) for v in torch.cat([kkt['mu'], kkt['lam']]).tolist()]}"
        )
        test_batches = ecl.Batches(test, 4096, shuffle=False, device=context.device)
        return Setup(
            solver,
            batches,
            epochs=config.epochs,
            max_steps=config.max_steps,
            state={"config": config, "train": train, "test": test_batches, "kkt": kkt},
            heldout_batches=ecl.Batches(test, 32, shuffle=False, device=context.device),
            certify_train_batches=ecl.Batches(train, 4096, shuffle=False, device=context.device),
            validation_batches=None
            if validation is None
            else ecl.Batches(validation, 4096, shuffle=False, device=context.device),
            validation_description=(
                "no validation split"
                if validation is None
                else f"validation split ({len(validation['y'])} of {config.n_train} training "
                f"rows, seed {context.seed})"
            ),
        )

    def metrics(self, setup: Setup, result: FitResult, context: RunContext) -> dict[str, Any]:
        config: ToyConfig = setup.state["config"]
        kkt = setup.state["kkt"]
        model = setup.solver.model
        theta = _parameters(model)
        s = statistics(setup.state["train"])
        train_objective = objective_of(theta, s)
        eq_violation = apply(s["group_mean"], theta) - config.target
        ineq_violation = apply(s["moment"], theta) - config.bound
        multipliers = (
            torch.cat([result.multipliers["group_mean"], result.multipliers["moment"]])
            .double()
            .cpu()
        )
        if config.formulation == "penalty":
            multipliers = self._implied_multipliers(config, eq_violation, ineq_violation)
        reference = torch.cat([kkt["mu"], kkt["lam"]])
        report = ecl.evaluate(
            setup.solver.problem, model, setup.state["test"], tolerance=config.tolerance
        )
        test_eq = report["group_mean"].violation.abs()
        test_ineq = report["moment"].violation.clamp_min(0)
        unconstrained = kkt["unconstrained"].to(theta)
        test_unconstrained = ecl.evaluate(
            setup.solver.problem,
            _linear(unconstrained, config.dim).to(context.device),
            setup.state["test"],
        ).objective
        return {
            "param_error": float((theta - kkt["theta"]).norm() / kkt["theta"].norm()),
            "multiplier_error": float(
                (multipliers - reference).norm() / reference.norm().clamp_min(1e-12)
            ),
            "objective_gap": train_objective - kkt["objective"],
            "train_objective": train_objective,
            "kkt_objective": kkt["objective"],
            "train_max_violation": float(
                max(eq_violation.abs().max(), ineq_violation.clamp_min(0))
            ),
            "test_objective": report.objective,
            "unconstrained_test_objective": test_unconstrained,
            "test_max_violation": float(max(test_eq.max(), test_ineq.max())),
            "test_feasible": report.feasible,
            "test_group_means": report["group_mean"].value.tolist(),
            "test_moment": float(report["moment"].value),
            "inequality_active": kkt["active"],
            "multipliers": multipliers.tolist(),
            "kkt_multipliers": reference.tolist(),
            "parameters": theta.tolist(),
            "kkt_parameters": kkt["theta"].tolist(),
        }

    @staticmethod
    def _implied_multipliers(config: ToyConfig, eq: Tensor, ineq: Tensor) -> Tensor:
        """The derivative of the penalty at the final violations: the multipliers whose
        Lagrangian has the same stationary point as the penalised loss."""
        w, p = config.penalty_weight, config.penalty_power
        mu = w * p * eq.abs() ** (p - 1) * eq.sign()
        lam = w * p * ineq.clamp_min(0) ** (p - 1) * (ineq > 0).double()
        return torch.cat([mu, lam.reshape(1)])

    def figures(self, setup: Setup, result: FitResult, figure_dir: Path) -> list[Path]:
        from eclearn.report.figures import new_figure, save_figure

        model = setup.solver.model
        kkt = setup.state["kkt"]
        config: ToyConfig = setup.state["config"]
        theta = _parameters(model)
        s = statistics(setup.state["train"])
        multipliers = (
            torch.cat([result.multipliers["group_mean"], result.multipliers["moment"]])
            .double()
            .cpu()
        )
        if config.formulation == "penalty":
            multipliers = self._implied_multipliers(
                config,
                apply(s["group_mean"], theta) - config.target,
                apply(s["moment"], theta) - config.bound,
            )
        fig, (top, bottom) = new_figure(2, height=2.6)
        names = [f"w{i}" for i in range(config.dim)] + ["b"]
        _bars(top, names, theta.tolist(), kkt["theta"].tolist(), "parameters: fit vs exact")
        labels = [f"μ{i}" for i in range(config.groups)] + ["λ"]
        _bars(
            bottom,
            labels,
            multipliers.tolist(),
            torch.cat([kkt["mu"], kkt["lam"]]).tolist(),
            "multipliers: fit vs KKT"
            + (" (penalty: implied)" if config.formulation == "penalty" else ""),
        )
        return [save_figure(fig, figure_dir / "toy-solution.png")]

    @classmethod
    def report_figures(cls, runs: Sequence[RunRecord], out_dir: Path) -> list[Path]:
        """Parameter error and worst training violation per group (mean and seed spread)."""
        import numpy as np

        from eclearn.report.figures import new_figure, save_figure
        from eclearn.report.tables import group_runs

        groups = group_runs(runs)
        if not groups:
            return []
        fig, axes = new_figure(1, width=8.0, height=3.2)
        ax = axes[0]
        keys = [("param_error", "‖θ − θ*‖ / ‖θ*‖"), ("train_max_violation", "max train violation")]
        width = 0.8 / len(keys)
        for j, (key, label) in enumerate(keys):
            means, spreads = [], []
            for g in groups:
                values = np.asarray([v for v in g.values(key) if v is not None], dtype=float)
                means.append(values.mean() if len(values) else np.nan)
                spreads.append(values.std(ddof=1) if len(values) > 1 else 0.0)
            ax.bar(
                np.arange(len(groups)) + (j - 0.5 * (len(keys) - 1)) * width,
                means,
                width,
                yerr=spreads,
                label=label,
                capsize=3,
            )
        ax.set_xticks(np.arange(len(groups)), [g.label for g in groups], fontsize="small")
        ax.set_yscale("log")
        ax.set_title("toy: distance to the exact constrained solution")
        ax.legend(fontsize="small")
        return [save_figure(fig, out_dir / "toy-comparison.png")]


def _linear(theta: Tensor, dim: int) -> nn.Linear:
    """A linear model holding ``theta`` (built without drawing from the global RNG)."""
    model = nn.Linear(dim, 1, device="meta").to_empty(device="cpu")
    with torch.no_grad():
        model.weight.copy_(theta[:dim].reshape(1, dim).float())
        model.bias.copy_(theta[dim:].float())
    return model


def _bars(ax: Any, names: list[str], fit: list[float], exact: list[float], title: str) -> None:
    import numpy as np

    at = np.arange(len(names))
    ax.bar(at - 0.2, fit, 0.4, label="fit")
    ax.bar(at + 0.2, exact, 0.4, label="exact")
    ax.set_xticks(at, names)
    ax.axhline(0.0, color="0.6", linewidth=0.6)
    ax.set_title(title)
    ax.legend(fontsize="small")
