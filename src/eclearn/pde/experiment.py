"""The convection experiment as a runner plug-in (``eclearn run convection``).

    u_t + β u_x = 0,   x ∈ [0, 2π], t ∈ [0, 1],   u(x, 0) = sin x,   periodic in x.

One network (MLP 4 × 50 tanh), one optimizer (Adam, lr 1e-3 × 0.9 every 5000 steps),
fresh uniform collocation points every step, and four formulations sharing the
:class:`~eclearn.PrimalDual` loop so the comparison is apples to apples:

``pinn``
    The physics-informed baseline 100·IC + 100·BC + 1·PDE (mean-squared residuals),
    written as :class:`~eclearn.Penalty` with the three mean squares as equality
    constraints and fixed weights ``pinn_weights`` (no objective, no dual step).
``ecl-average``
    The paper's formulation: no objective, the three mean-squared residuals as
    :class:`~eclearn.Equality` constraints, dual Adam-ascent (lr 1e-4).
``ecl-pointwise``
    One multiplier per point: the initial-condition residual ``r = u(x, 0) − sin x`` and
    the periodicity residual ``r = u(0, t) − u(2π, t)`` are pointwise equalities on fixed
    point sets (``index_key="ic_index"`` / ``"bc_index"``), on ``r²`` by default
    (``pointwise_residual="signed"`` constrains ``r`` itself, which diverges under
    gradient descent–ascent: the Lagrangian is bilinear in (μ, r)); the PDE residual's
    mean square is an average equality (``pde_term="constraint"``) or the objective.
``augmented``
    ``ecl-average`` under :class:`~eclearn.AugmentedLagrangian` (``rho``).

Besides the final metrics, a callback records the relative L2 error every
``eval_every`` steps on a sub-grid of the reference grid (``curve_grid``) so that every
run carries an error-vs-step curve (``error_curve_steps`` / ``error_curve_rel_l2`` in
``metrics.json``); :func:`report_figures` plots the curves of many runs together.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import Tensor, nn

import eclearn as ecl
from eclearn.experiments.base import Experiment, ExperimentConfig, RunContext, Setup
from eclearn.pde.convection import (
    DOMAIN_HIGH,
    DOMAIN_LOW,
    PINN_WEIGHTS,
    ConvectionProblem,
    ReferenceGrid,
    predict_on_grid,
    reference_grid,
)
from eclearn.pde.derivatives import mean_squared
from eclearn.pde.models import MLP
from eclearn.pde.sampling import CollocationBatches, PairedFaces, UniformSampler
from eclearn.solver import Callback, FitResult, PrimalDual, SolverView

__all__ = [
    "FORMULATIONS",
    "ConvectionConfig",
    "ConvectionExperiment",
    "ErrorCurve",
    "build_problem",
    "heldout_residuals",
    "plot_error_curves",
    "plot_solution",
    "report_figures",
]

Formulation = Literal["pinn", "ecl-average", "ecl-pointwise", "augmented"]
FORMULATIONS: tuple[str, ...] = ("pinn", "ecl-average", "ecl-pointwise", "augmented")
"""The formulations, in the order tables and figures list them."""
TERMS = ("ic", "bc", "pde")
"""Residual terms, in the order the constraints are declared."""
"""Side file in the run directory holding the error curve so far (survives a resume)."""
_STEPS_PER_EPOCH = 1000
"""Batches per "epoch" of the endless collocation stream: bounds what a resume replays."""
_HELDOUT_SEED_OFFSET = 1_000_003
_COLOURS = {
    "pinn": "tab:red",
    "ecl-average": "tab:blue",
    "ecl-pointwise": "tab:green",
    "augmented": "tab:orange",
}


class ConvectionConfig(ExperimentConfig):
    """Settings of one convection run (unknown keys are rejected)."""

    formulation: Formulation = Field("ecl-average", description="which formulation to train")
    beta: float = Field(30.0, description="convection speed β")
    steps: int = Field(20_000, ge=1, description="training steps (primal Adam steps)")
    num_points: int = Field(
        1000, ge=1, description="fresh collocation points per term per step (PDE, IC, BC)"
    )
    hidden: int = Field(50, ge=1, description="hidden width of the MLP")
    depth: int = Field(4, ge=1, description="hidden layers of the MLP")
    activation: Literal["tanh", "sigmoid", "softplus", "gelu", "silu"] = Field(
        "tanh", description="MLP activation (smooth: residuals use input derivatives)"
    )
    lr: float = Field(1e-3, gt=0, description="primal Adam learning rate")
    lr_decay: float = Field(0.9, gt=0, le=1, description="StepLR factor")
    lr_decay_every: int = Field(5000, ge=1, description="steps between StepLR decays")
    dual_optimizer: Literal["adam", "sgd"] = Field(
        "adam", description="dual ascent: Adam-ascent (paper) or plain gradient ascent"
    )
    dual_lr: float = Field(1e-4, ge=0, description="dual learning rate")
    pinn_weights: dict[str, float] = Field(
        default_factory=lambda: dict(PINN_WEIGHTS),
        description="pinn: fixed weights of the ic, bc and pde mean-squared residuals",
    )
    rho: float = Field(
        1e-3,
        gt=0,
        description="augmented: penalty parameter ρ (≥ 0.1 stalls under primal Adam: the "
        "ρ/2·v² term of the initial PDE residual ≈ 22 inflates Adam's second moments)",
    )
    pointwise_points: int = Field(
        1000, ge=1, description="ecl-pointwise: size of the fixed IC set and of the BC pair set"
    )
    pointwise_batch: int | None = Field(
        None, ge=1, description="ecl-pointwise: points of each fixed set per step (None: all)"
    )
    pointwise_dual_lr: float | None = Field(
        None,
        ge=0,
        description="ecl-pointwise: dual lr of the per-point multipliers (None: dual_lr)",
    )
    pointwise_residual: Literal["squared", "signed"] = Field(
        "squared",
        description="ecl-pointwise: constrain each point's squared residual r² = 0 (one "
        "non-negative weight per point) or the signed residual r = 0",
    )
    optimizer: Literal["adam", "lbfgs"] = Field(
        "adam",
        description="primal oracle: Adam every step, or Adam for lbfgs_after steps then "
        "L-BFGS (strong-Wolfe line search, lbfgs_max_iter inner iterations per dual step; "
        "no StepLR)",
    )
    lbfgs_after: int = Field(0, ge=0, description="lbfgs: Adam steps before the L-BFGS phase")
    lbfgs_max_iter: int = Field(
        20, ge=1, description="lbfgs: inner L-BFGS iterations per step (one dual step each)"
    )
    collocation: Literal["resample", "fixed"] = Field(
        "resample",
        description="fresh PDE/IC/BC points every step, or one set of num_points each drawn "
        "once (a deterministic Lagrangian for L-BFGS; ecl-pointwise keeps its own fixed "
        "IC/BC sets of pointwise_points)",
    )
    dtype: Literal["float32", "float64"] = Field(
        "float32", description="floating type of the model and the collocation points"
    )
    mode: Literal["simultaneous", "alternating"] = Field(
        "simultaneous", description="primal-dual update order (see ecl.PrimalDual)"
    )
    pde_term: Literal["constraint", "objective"] = Field(
        "constraint",
        description="ecl-pointwise: PDE mean square as an average equality or as the objective",
    )
    eval_every: int = Field(500, ge=1, description="steps between error-curve evaluations")
    curve_grid: tuple[int, int] = Field(
        (256, 126), description="(nx, nt) of the error-curve grid (a sub-grid of 512 × 251)"
    )
    heldout_points: int = Field(
        10_000, ge=1, description="fresh held-out points per term for the final residuals"
    )
    checkpoint_every: int = Field(2000, ge=1, description="steps between checkpoints")

    @field_validator("beta")
    @classmethod
    def _finite_beta(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError(f"beta must be a finite number, got {value}")
        return value

    @field_validator("pinn_weights")
    @classmethod
    def _check_weights(cls, value: dict[str, float]) -> dict[str, float]:
        if set(value) != set(TERMS):
            raise ValueError(
                f"pinn_weights needs exactly the keys {list(TERMS)}, got {sorted(value)}"
            )
        bad = {k: v for k, v in value.items() if not (math.isfinite(v) and v >= 0)}
        if bad:
            raise ValueError(f"pinn_weights must be finite and >= 0, got {bad}")
        return value

    @field_validator("curve_grid")
    @classmethod
    def _check_grid(cls, value: tuple[int, int]) -> tuple[int, int]:
        if min(value) < 2:
            raise ValueError(f"curve_grid (nx, nt) needs at least 2 points each, got {value}")
        return value

    @model_validator(mode="after")
    def _check_pointwise_batch(self) -> ConvectionConfig:
        if self.pointwise_batch is not None and self.pointwise_batch > self.pointwise_points:
            raise ValueError(
                f"pointwise_batch={self.pointwise_batch} exceeds pointwise_points="
                f"{self.pointwise_points}; lower it or use None (the whole set every step)"
            )
        return self


# ---------------------------------------------------------------------------- problems
def _fixed_sets(
    num_points: int,
    batch_size: int | None,
    device: torch.device | str,
    dtype: torch.dtype | None = None,
) -> tuple[Any, Any]:
    """The fixed IC points ``(x, 0)`` and the fixed periodic pairs ``(0, t)``/``(2π, t)``,
    drawn once from the global RNG (deterministic under the runner's seed)."""
    box = UniformSampler(DOMAIN_LOW, DOMAIN_HIGH, num_points, device=device, dtype=dtype)
    ic = box.face(1, DOMAIN_LOW[1]).fixed(batch_size=batch_size)
    bc = PairedFaces(box.fixed(batch_size=batch_size), 0, DOMAIN_LOW[0], DOMAIN_HIGH[0])
    return ic, bc


def build_problem(
    config: ConvectionConfig, convection: ConvectionProblem
) -> tuple[ecl.Problem, ecl.Formulation]:
    """The :class:`~eclearn.Problem` and formulation of ``config.formulation``."""
    if config.formulation != "ecl-pointwise":
        constraints = [ecl.Equality(name) for name in TERMS]
        formulation: ecl.Formulation
        if config.formulation == "pinn":
            formulation = ecl.Penalty(dict(config.pinn_weights))
        elif config.formulation == "augmented":
            formulation = ecl.AugmentedLagrangian(config.rho)
        else:
            formulation = ecl.Lagrangian()

        def evaluate_average(model: Any, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
            return convection.evaluate(model, batch)

        return ecl.Problem(evaluate_average, constraints), formulation

    n = config.pointwise_points
    lr = config.pointwise_dual_lr
    constraints = [
        ecl.Equality("ic", pointwise=True, num_samples=n, index_key="ic_index", lr=lr),
        ecl.Equality("bc", pointwise=True, num_samples=n, index_key="bc_index", lr=lr),
    ]
    pde_as_constraint = config.pde_term == "constraint"
    if pde_as_constraint:
        constraints.append(ecl.Equality("pde"))

    squared = config.pointwise_residual == "squared"

    def evaluate_pointwise(model: Any, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        residuals = convection.residuals(model, batch)
        pde = mean_squared(residuals["pde"])
        ic, bc = residuals["ic"], residuals["bc"]
        return {
            "ic": ic * ic if squared else ic,
            "bc": bc * bc if squared else bc,
            ("pde" if pde_as_constraint else "objective"): pde,
        }

    return ecl.Problem(evaluate_pointwise, constraints), ecl.Lagrangian()


# ---------------------------------------------------------------------------- error curve
class ErrorCurve(Callback):
    """Relative L2 error on ``grid`` at step 0, every ``every`` steps and at ``final_step``.

    The curve lives in ``curve`` (``{"steps": [...], "rel_l2": [...]}``, the dict the
    experiment keeps in ``setup.state``). It is the callback's ``state_dict``, so the
    solver's checkpoints carry it and a resumed run continues the same curve; the points do
    not depend on how the training is split into ``fit`` calls. (A diagnostic of the run,
    recorded only: nothing is selected on it.)
    """

    def __init__(
        self,
        reference: Tensor,
        grid: ReferenceGrid,
        every: int,
        curve: dict[str, list[float]] | None = None,
        final_step: int | None = None,
    ) -> None:
        self.reference = reference
        self.norm = float(torch.linalg.vector_norm(reference))
        self.grid = grid
        self.every = every
        self.final_step = final_step
        self.curve = curve if curve is not None else {"steps": [], "rel_l2": []}
        self.curve.setdefault("steps", [])
        self.curve.setdefault("rel_l2", [])

    def error(self, model: Any) -> float:
        """Relative L2 error of ``model`` on the grid."""
        prediction = predict_on_grid(model, self.grid)
        return float(torch.linalg.vector_norm(prediction - self.reference)) / self.norm

    def _record(self, solver: SolverView) -> None:
        if self.curve["steps"] and self.curve["steps"][-1] >= solver.step:
            return
        self.curve["steps"].append(solver.step)
        self.curve["rel_l2"].append(self.error(solver.model))

    def on_fit_start(self, solver: SolverView) -> None:
        if solver.step == 0:
            self.curve["steps"].clear()
            self.curve["rel_l2"].clear()
            self._record(solver)

    def on_step_end(self, solver: SolverView) -> None:
        if solver.step % self.every == 0 or solver.step == self.final_step:
            self._record(solver)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": list(self.curve["steps"]), "rel_l2": list(self.curve["rel_l2"])}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.curve["steps"][:] = [int(s) for s in state["steps"]]
        self.curve["rel_l2"][:] = [float(v) for v in state["rel_l2"]]


def primal_oracle(config: ConvectionConfig, model: nn.Module) -> tuple[Any, Any]:
    """The primal optimizer and its scheduler: Adam with StepLR, or (``optimizer="lbfgs"``)
    ``ecl.Phases`` of Adam for ``lbfgs_after`` steps and then L-BFGS with a strong-Wolfe
    line search — an approximate minimiser of each Lagrangian problem, as Algorithm 1
    assumes (and as the best constrained-PINN results use)."""
    adam = torch.optim.Adam(model.parameters(), lr=config.lr)
    if config.optimizer == "adam":
        scheduler = torch.optim.lr_scheduler.StepLR(
            adam, step_size=config.lr_decay_every, gamma=config.lr_decay
        )
        return adam, scheduler
    lbfgs = torch.optim.LBFGS(
        model.parameters(),
        lr=1.0,
        max_iter=config.lbfgs_max_iter,
        history_size=50,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )
    if config.lbfgs_after == 0:
        return lbfgs, None
    return ecl.Phases([(adam, config.lbfgs_after), (lbfgs, None)]), None


# ---------------------------------------------------------------------------- metrics
def heldout_residuals(
    convection: ConvectionProblem,
    model: Any,
    num_points: int,
    seed: int,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Mean-squared IC, BC and PDE residuals on fresh points from a private generator
    (seeded by ``seed``; the global RNG is left alone), in the model's floating type."""
    generator = torch.Generator().manual_seed(seed)
    param = next(iter(model.parameters()), None)
    dtype = None if param is None else param.dtype
    draw = convection.batches(num_points, generator=generator, device=device, dtype=dtype)
    batch = draw.sample()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():  # pde_residual re-enables grad locally for u_t, u_x
            residuals = convection.residuals(model, batch)
    finally:
        model.train(was_training)
    return {f"residual_{k}": float(mean_squared(residuals[k].detach())) for k in TERMS}


def _multiplier_metrics(setup: Setup) -> dict[str, Any]:
    solver = setup.solver
    if not solver.formulation.updates_multipliers:
        return {}
    out: dict[str, Any] = {}
    for name, value in solver.multipliers.items():
        if value.numel() == 1:
            out[f"multiplier_{name}"] = float(value)
        else:
            flat = value.detach().double().reshape(-1)
            out[f"multiplier_{name}_mean_abs"] = float(flat.abs().mean())
            out[f"multiplier_{name}_max_abs"] = float(flat.abs().max())
    return out


# ---------------------------------------------------------------------------- experiment
class ConvectionExperiment(Experiment):
    """u_t + β u_x = 0 with u(x, 0) = sin x, periodic: PINN vs equality-constrained learning."""

    name = "convection"
    description = (
        "1-D convection u_t + βu_x = 0 (paper §5): PINN penalty vs average / pointwise "
        "equality constraints vs augmented Lagrangian; relative L2 error on 512 × 251"
    )
    Config = ConvectionConfig
    table_metrics = ("rel_l2", "max_abs_error", "residual_ic", "residual_bc", "residual_pde")
    budget_keys = frozenset({"steps"})

    def setup(self, config: ExperimentConfig, context: RunContext) -> Setup:
        if not isinstance(config, ConvectionConfig):
            raise TypeError(
                f"ConvectionExperiment.setup needs a ConvectionConfig, got {type(config).__name__}"
            )
        device = torch.device(context.device)
        convection = ConvectionProblem(config.beta)
        model = MLP(hidden=config.hidden, depth=config.depth, activation=config.activation)
        dtype = torch.float64 if config.dtype == "float64" else torch.float32
        model.to(device=device, dtype=dtype)
        problem, formulation = build_problem(config, convection)
        batches: CollocationBatches
        if config.formulation == "ecl-pointwise":
            ic, bc = _fixed_sets(config.pointwise_points, config.pointwise_batch, device, dtype)
            box = UniformSampler(
                DOMAIN_LOW, DOMAIN_HIGH, config.num_points, device=device, dtype=dtype
            )
            pde = box.fixed() if config.collocation == "fixed" else box
            batches = CollocationBatches(
                {"pde": pde, "ic": ic, "bc": bc}, steps_per_epoch=_STEPS_PER_EPOCH
            )
        elif config.collocation == "fixed":
            ic, bc = _fixed_sets(config.num_points, None, device, dtype)
            box = UniformSampler(
                DOMAIN_LOW, DOMAIN_HIGH, config.num_points, device=device, dtype=dtype
            )
            batches = CollocationBatches(
                {"pde": box.fixed(), "ic": ic, "bc": bc}, steps_per_epoch=_STEPS_PER_EPOCH
            )
        else:
            batches = convection.batches(
                config.num_points, steps_per_epoch=_STEPS_PER_EPOCH, device=device, dtype=dtype
            )
        optimizer, scheduler = primal_oracle(config, model)
        dual: ecl.dual.DualOptimizer = (
            ecl.dual.Adam(lr=config.dual_lr)
            if config.dual_optimizer == "adam"
            else ecl.dual.SGD(lr=config.dual_lr)
        )
        solver = PrimalDual(
            problem,
            model,
            optimizer,
            dual,
            formulation=formulation,
            mode=config.mode,
            scheduler=scheduler,
            scheduler_interval="step",
            device=device,
        )
        nx, nt = config.curve_grid
        curve_grid = reference_grid(nx, nt)
        curve: dict[str, list[float]] = {"steps": [], "rel_l2": []}
        tracker = ErrorCurve(
            convection.reference_solution(curve_grid),
            curve_grid,
            config.eval_every,
            curve,
            final_step=config.steps,
        )
        state = {
            "config": config,
            "convection": convection,
            "error_curve": curve,
            "error_tracker": tracker,
            "seed": context.seed,
            "device": str(device),
        }
        heldout = train_sample = validation = None
        if config.formulation != "ecl-pointwise":  # fixed point sets have no held-out twin
            generator = torch.Generator().manual_seed(10_000 + context.seed)
            draw = convection.batches(
                config.num_points, generator=generator, device=device, dtype=dtype
            )
            heldout = [draw.sample() for _ in range(20)]
            train_sample = [draw.sample() for _ in range(4)]
            if config.validation_share() > 0:
                # selection judges fresh collocation points of the training distribution
                # (its own generator), never the reference solution
                picker = torch.Generator().manual_seed(20_000 + context.seed)
                pool = convection.batches(
                    config.num_points, generator=picker, device=device, dtype=dtype
                )
                validation = [pool.sample() for _ in range(4)]
        return Setup(
            solver=solver,
            train_batches=batches,
            max_steps=config.steps,
            callbacks=[tracker],
            state=state,
            heldout_batches=heldout,
            certify_train_batches=train_sample,
            validation_batches=validation,
            validation_description=(
                "no validation points"
                if validation is None
                else f"validation collocation points (4 batches of {config.num_points} per term, "
                f"seed {20_000 + context.seed})"
            ),
            inference=False,
        )

    def metrics(self, setup: Setup, result: FitResult, context: RunContext) -> dict[str, Any]:
        config: ConvectionConfig = setup.state["config"]
        convection: ConvectionProblem = setup.state["convection"]
        model = setup.solver.model
        grid = reference_grid()
        reference = convection.reference_solution(grid)
        error = predict_on_grid(model, grid) - reference
        out: dict[str, Any] = {
            "beta": config.beta,
            "rel_l2": float(torch.linalg.vector_norm(error) / torch.linalg.vector_norm(reference)),
            "max_abs_error": float(error.abs().max()),
        }
        out.update(
            heldout_residuals(
                convection,
                model,
                config.heldout_points,
                context.seed + _HELDOUT_SEED_OFFSET,
                setup.state.get("device", "cpu"),
            )
        )
        out.update(_multiplier_metrics(setup))
        curve = setup.state["error_tracker"].curve
        out.update(
            {
                "ms_per_step": 1000.0 * result.seconds / max(result.steps, 1),
                "final_lr": float(setup.solver.primal_optimizer.param_groups[0]["lr"]),
                "error_curve_steps": [int(s) for s in curve["steps"]],
                "error_curve_rel_l2": [float(v) for v in curve["rel_l2"]],
                "error_curve_grid": list(config.curve_grid),
            }
        )
        return out

    @classmethod
    def memory_estimate(cls, config: ExperimentConfig) -> dict[str, float]:
        """Autograd memory of the residuals, measured on the 4 × 50 tanh MLP (CPU, one
        batch of all three terms): about 8 numbers per point and hidden unit and layer when
        training (forward, input derivatives, backward), 5 for the held-out residuals."""
        assert isinstance(config, ConvectionConfig)
        unit = (8 if config.dtype == "float64" else 4) * config.hidden * config.depth
        nx, nt = config.curve_grid
        return {
            "num_points": 8.0 * unit * config.num_points,
            "pointwise_points": 8.0 * unit * (config.pointwise_batch or config.pointwise_points)
            if config.formulation == "ecl-pointwise"
            else 0.0,
            "heldout_points": 5.0 * unit * config.heldout_points,
            "curve_grid": 2.0 * unit * nx * nt,
        }

    def figures(self, setup: Setup, result: FitResult, figure_dir: Path) -> list[Path]:
        config: ConvectionConfig = setup.state["config"]
        convection: ConvectionProblem = setup.state["convection"]
        figure_dir = Path(figure_dir)
        figure_dir.mkdir(parents=True, exist_ok=True)
        title = f"{config.formulation}, β = {config.beta:g}, {result.steps} steps"
        paths = [
            plot_solution(setup.solver.model, convection, figure_dir / "solution.png", title=title)
        ]
        curve = setup.state["error_tracker"].curve
        if curve["steps"]:
            paths.append(
                plot_error_curves(
                    [(config.formulation, curve["steps"], curve["rel_l2"])],
                    figure_dir / "error_vs_step.png",
                    title=f"relative L2 error, β = {config.beta:g}",
                )
            )
        return paths

    @classmethod
    def report_figures(cls, runs: Sequence[Any], out_dir: Path) -> list[Path]:
        """Error vs step of every formulation on one plot per β (see :func:`report_figures`)."""
        return report_figures(runs, out_dir)


# ---------------------------------------------------------------------------- figures
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_solution(
    model: Any, convection: ConvectionProblem, path: Path, *, title: str = ""
) -> Path:
    """Exact, predicted and |error| heatmaps over (t, x) on the 512 × 251 grid."""
    plt = _pyplot()
    grid = reference_grid()
    exact = convection.reference_solution(grid).numpy()
    predicted = predict_on_grid(model, grid).numpy()
    extent = (float(grid.t[0]), float(grid.t[-1]), 0.0, DOMAIN_HIGH[0])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), constrained_layout=True)
    panels = (
        ("exact u", exact, "RdBu_r", (-1, 1)),
        ("predicted û", predicted, "RdBu_r", (-1, 1)),
        ("|û − u|", abs(predicted - exact), "viridis", (0, None)),
    )
    for ax, (label, values, cmap, (vmin, vmax)) in zip(axes, panels, strict=True):
        image = ax.imshow(
            values.T,  # rows x, columns t
            origin="lower",
            aspect="auto",
            extent=extent,
            cmap=cmap,
            vmin=vmin,
            vmax=vmax,
        )
        ax.set_xlabel("t")
        ax.set_ylabel("x")
        ax.set_title(label)
        fig.colorbar(image, ax=ax)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_error_curves(
    curves: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    path: Path,
    *,
    title: str = "",
    thin: Sequence[tuple[str, Sequence[float], Sequence[float]]] = (),
) -> Path:
    """Relative L2 error vs step, one labelled line per ``(label, steps, rel_l2)``; ``thin``
    curves (e.g. single seeds) are drawn faintly in the colour of their label."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), constrained_layout=True)
    colours: dict[str, Any] = {}
    for label, steps, values in curves:
        colour = _COLOURS.get(label.split(" (")[0])
        (line,) = ax.plot(steps, values, label=label, linewidth=2, color=colour)
        colours[label] = line.get_color()
    for label, steps, values in thin:
        ax.plot(steps, values, color=colours.get(label), alpha=0.3, linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("relative L2 error")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def _load_run(run: Any) -> Mapping[str, Any] | None:
    if isinstance(run, Mapping):
        return run
    if hasattr(run, "metrics") and hasattr(run, "path"):  # a report RunRecord
        return run.metrics
    path = Path(run)
    if path.is_dir():
        path = path / "metrics.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def report_figures(runs: Iterable[Any], out_dir: Path) -> list[Path]:
    """Cross-run figure: the error-vs-step curves of every formulation on one plot per β.

    ``runs``: the report's ``RunRecord`` s, run directories (holding ``metrics.json``),
    ``metrics.json`` paths or loaded metrics dicts; incomplete runs, runs of other
    experiments and runs without a curve are skipped. Each
    formulation gets its seed-mean curve (over the seeds sharing its evaluation steps) and
    a faint line per seed. Writes ``convection-error-vs-step-beta<β>.png`` files.
    """
    grouped: dict[float, dict[str, list[Mapping[str, Any]]]] = {}
    for run in runs:
        metrics = _load_run(run)
        if not metrics or metrics.get("experiment", "convection") != "convection":
            continue
        if not metrics.get("error_curve_steps"):
            continue
        beta = float(metrics.get("beta", math.nan))
        formulation = str(metrics.get("formulation", "?"))
        grouped.setdefault(beta, {}).setdefault(formulation, []).append(metrics)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    order = {name: i for i, name in enumerate(FORMULATIONS)}
    for beta, by_formulation in sorted(grouped.items()):
        curves, thin = [], []
        for formulation in sorted(by_formulation, key=lambda f: (order.get(f, 99), f)):
            members = by_formulation[formulation]
            steps = members[0]["error_curve_steps"]
            same = [m for m in members if m["error_curve_steps"] == steps]
            mean = torch.tensor([m["error_curve_rel_l2"] for m in same]).mean(0).tolist()
            label = formulation if len(same) == 1 else f"{formulation} (mean of {len(same)})"
            curves.append((label, steps, mean))
            if len(members) > 1:
                thin += [(label, m["error_curve_steps"], m["error_curve_rel_l2"]) for m in members]
        paths.append(
            plot_error_curves(
                curves,
                out_dir / f"convection-error-vs-step-beta{beta:g}.png",
                title=f"convection, β = {beta:g}: relative L2 error vs step",
                thin=thin,
            )
        )
    return paths
