"""The ``fairness`` experiment: fair logistic regression on COMPAS (the paper's §fairness).

One run trains a logistic regression on one 70/30 split of the ProPublica COMPAS file,
full batch (one batch of the whole training split per step), under one formulation of
:mod:`eclearn.fairness.training`: ``unconstrained``, ``dp-equality`` (the paper's),
``dp-tolerance`` (ε), ``prescribed-rate`` (r) or ``equalized-odds``.

**Seeds and splits.** ``split`` defaults to None, meaning *the run's seed is the split*:
``eclearn run fairness-dp`` with seeds 0–9 trains the paper's 10 splits, and the report
aggregates them (mean ± std) because the runs share one config. The seed also seeds the
model initialisation (irrelevant after the default warm start, which is deterministic).
Set ``split`` to fix the data and vary only the seed.

**Solver settings** (defaults; ``docs/fairness.md`` explains the measurements behind them):
warm start from the unconstrained fit (L-BFGS), primal Adam lr 0.2 (the paper's), dual
Adam-ascent lr 5e-3, the multipliers following the *exact* training rates
(``dual_signal="exact"``), the returned iterate chosen by the exact training statistics
(``select="best-steps"``: ``ecl.select.BestFeasible(on="steps")``, tolerance 0.01) and an
early stop once that choice has not improved for ``patience`` steps (``ecl.Patience``).
``select="best"`` judges a stratified validation split of the training rows instead
(``validation_fraction``, default 0.2). ``dual_signal="surrogate"``, ``select="last"``,
``warm_start=false``, ``dual_lr=1e-3``, ``patience=null``, ``max_steps=16000`` and
``stopping_window`` reproduce the paper's plain loop.

**Metrics** (``metrics.json``; rates are exact: a person is predicted positive when the
probability is > 0.5): ``test_accuracy``, ``test_disparity`` (max − min group positive
rate), ``train_disparity``, ``test_group_rates``, ``train_group_rates``, ``groups``, their
bootstrap intervals ``*_disparity_ci``, ``sampling_floor`` (the mean test disparity of a
classifier whose population rates are exactly equal, at the observed overall test rate),
the exact and surrogate training violations, final multipliers, the selected step and
the fit time including the warm start; equalized odds adds TPR/FPR rates and disparities,
prescribed rates the deviations from the target.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

import eclearn as ecl
from eclearn.batches import validation_split
from eclearn.experiments.base import Experiment, ExperimentConfig, RunContext, RunRecord, Setup
from eclearn.fairness.data import GROUPS, compas_split
from eclearn.fairness.rates import disparity, false_positive_rate, positive_rate, true_positive_rate
from eclearn.fairness.training import (
    FairnessEvaluate,
    build_constraints,
    fair_solver,
)
from eclearn.solver import FitResult

__all__ = [
    "FairlearnComparisonWarning",
    "FairnessConfig",
    "FairnessExperiment",
    "bootstrap_disparity_ci",
    "sampling_floor",
]

Formulation = Literal[
    "unconstrained", "dp-equality", "dp-tolerance", "prescribed-rate", "equalized-odds"
]
BENCHMARK_JSON = "fairness_vs_fairlearn.json"


class FairnessConfig(ExperimentConfig):
    """Settings of the fairness experiment (see ``eclearn/configs/fairness-*.toml``)."""

    formulation: Formulation = Field("dp-equality", description="which constraints to train")
    split: int | None = Field(
        None, ge=0, le=9, description="COMPAS 70/30 split (0–9); None: the run's seed"
    )
    tolerance: float | None = Field(
        None, ge=0, le=1, description="ε of dp-tolerance: |rate_k − rate_all| ≤ ε"
    )
    rate: float | None = Field(None, gt=0, lt=1, description="target rate of prescribed-rate")
    temperature: float = Field(8.0, gt=0, le=1000, description="surrogate slope T/4 at 0.5")
    surrogate: Literal["sigmoid", "hinge"] = Field("sigmoid", description="smoothed indicator")
    dual_signal: Literal["exact", "surrogate"] = Field(
        "exact", description="rates the multipliers follow (exact: straight-through)"
    )
    standardize: bool = Field(True, description="standardise features (fit on the train split)")
    warm_start: bool = Field(True, description="start from the unconstrained fit (L-BFGS)")
    optimizer: Literal["adam", "sgd"] = Field("adam", description="primal optimizer")
    lr: float = Field(0.2, gt=0, le=10, description="primal learning rate")
    dual_optimizer: Literal["adam", "sgd", "nupi"] = Field("adam", description="dual optimizer")
    dual_lr: float = Field(5e-3, ge=0, le=10, description="dual learning rate")
    nupi_kp: float = Field(1.0, ge=0, description="proportional gain of the nupi dual optimizer")
    primal_steps: int = Field(1, ge=1, le=100, description="primal steps per dual step")
    max_steps: int = Field(2000, ge=1, le=1_000_000, description="most full-batch steps")
    select: Literal["last", "best", "best-steps", "average", "mixture"] = Field(
        "best-steps",
        description=(
            "returned model: best-steps = best feasible iterate by the exact training rates; "
            "best/average/mixture judge a validation split of the training rows; last"
        ),
    )
    selection_tolerance: float = Field(
        0.01, ge=0, le=1, description="exact violation counted as feasible (constraint tolerance)"
    )
    patience: int = Field(
        100,
        ge=0,
        description="stop once the selection has not improved for this many steps (0: never)",
    )
    stopping_window: int | None = Field(
        None, ge=1, description="ecl.StoppingRule window (None: no Lagrangian-settling rule)"
    )
    stopping_rtol: float = Field(1e-5, ge=0, description="ecl.StoppingRule lagrangian_rtol")
    stopping_tolerance: float | None = Field(
        None, ge=0, description="ecl.StoppingRule violation tolerance (None: 1e-3)"
    )
    bootstrap: int = Field(2000, ge=100, le=100_000, description="bootstrap resamples for CIs")
    floor_draws: int = Field(20_000, ge=100, le=1_000_000, description="sampling-floor draws")
    checkpoint_every: int = Field(500, ge=1, description="steps between checkpoints")

    @model_validator(mode="after")
    def _needed_values(self) -> FairnessConfig:
        if self.formulation == "dp-tolerance" and self.tolerance is None:
            raise ValueError("formulation 'dp-tolerance' needs tolerance=ε (e.g. 0.05)")
        if self.formulation == "prescribed-rate" and self.rate is None:
            raise ValueError("formulation 'prescribed-rate' needs rate=r in (0, 1) (e.g. 0.3)")
        return self


def sampling_floor(
    group_sizes: Sequence[int], rate: float, draws: int = 20_000, seed: int = 0
) -> float:
    """Mean max − min of group positive rates when every group has the same population rate.

    A classifier whose population rates are exactly equal (at ``rate``) still shows a
    disparity on a finite test set: group k's observed rate is Binomial(n_k, rate)/n_k. This
    is the expected value of that disparity (``draws`` simulations, seeded), the floor a
    test disparity is judged against.
    """
    sizes = np.asarray([int(n) for n in group_sizes if int(n) > 0], dtype=np.int64)
    if len(sizes) < 2:
        return 0.0
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must lie in [0, 1], got {rate}")
    rng = np.random.default_rng(seed)
    rates = rng.binomial(sizes, rate, size=(int(draws), len(sizes))) / sizes
    return float((rates.max(axis=1) - rates.min(axis=1)).mean())


def bootstrap_disparity_ci(
    positives: Sequence[int],
    sizes: Sequence[int],
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Bootstrap interval of the disparity (max − min rate), resampling rows within groups.

    Resampling the n_k decisions of group k with replacement draws its count of positives
    from Binomial(n_k, p̂_k), which is how it is simulated. The max − min of resampled rates
    is biased upward (most of all near 0), so the percentile interval is shifted by the
    bootstrap estimate of that bias (mean of the resamples − estimate) and clipped at 0;
    the interval then contains the estimate. Compare near-0 disparities with
    :func:`sampling_floor`.
    """
    pos = np.asarray(positives, dtype=np.int64)
    n = np.asarray(sizes, dtype=np.int64)
    keep = n > 0
    pos, n = pos[keep], n[keep]
    if len(n) < 2:
        return (0.0, 0.0)
    rates = pos / n
    estimate = float(rates.max() - rates.min())
    rng = np.random.default_rng(seed)
    draws = rng.binomial(n, rates, size=(int(resamples), len(n))) / n
    stats = draws.max(axis=1) - draws.min(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    bias = float(stats.mean()) - estimate
    return (max(0.0, float(low) - bias), max(0.0, float(high) - bias))


def _device_batch(batch: dict[str, Tensor], device: str) -> dict[str, Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


class FairnessExperiment(Experiment):
    """Logistic regression on COMPAS under a fairness formulation (see the module doc)."""

    name = "fairness"
    description = "COMPAS logistic regression: demographic parity, tolerance, rates, odds"
    Config = FairnessConfig
    table_metrics = (
        "test_accuracy",
        "test_disparity",
        "test_disparity_ci",
        "sampling_floor",
        "train_disparity",
        "train_violation_exact",
        "selected_step",
        "fit_seconds_total",
    )
    budget_keys = frozenset({"max_steps", "patience"})

    # ------------------------------------------------------------------ setup
    def setup(self, config: FairnessConfig, context: RunContext) -> Setup:  # type: ignore[override]
        split_id = context.seed if config.split is None else config.split
        data = compas_split(split_id, context.data_path)
        x_train, x_test = data.x_train.astype(np.float64), data.x_test.astype(np.float64)
        if config.standardize:
            mean, std = x_train.mean(0), x_train.std(0)
            std[std == 0] = 1.0
            x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
        num_groups = len(data.groups)
        evaluate = FairnessEvaluate(
            config.formulation,
            num_groups,
            surrogate=config.surrogate,
            temperature=config.temperature,
            dual_signal=config.dual_signal,
        )

        def batch(x: np.ndarray, y: np.ndarray, g: np.ndarray) -> dict[str, Tensor]:
            raw = {
                "x": torch.as_tensor(x, dtype=torch.float32),
                "y": torch.as_tensor(y, dtype=torch.float32),
                "group": torch.as_tensor(g, dtype=torch.int64),
            }
            return _device_batch(evaluate.prepare(raw), context.device)

        x_fit, y_fit, g_fit = x_train, data.y_train, data.g_train
        validation = None
        share = config.validation_share()
        if share > 0:  # selection judges a split of the training rows, never the test split
            rows = {
                "x": torch.as_tensor(x_train),
                "y": torch.as_tensor(data.y_train),
                "g": torch.as_tensor(data.g_train),
            }
            strata = rows["g"].long() * 2 + rows["y"].long()
            kept, held = validation_split(rows, share, seed=context.seed, stratify=strata)
            x_fit, y_fit, g_fit = (kept[k].numpy() for k in ("x", "y", "g"))
            validation = batch(held["x"].numpy(), held["y"].numpy(), held["g"].numpy())
        train = batch(x_fit, y_fit, g_fit)
        test = batch(x_test, data.y_test, data.g_test)
        constraints = build_constraints(
            config.formulation,
            num_groups,
            tolerance=config.tolerance,
            rate=config.rate,
            constraint_tolerance=max(config.selection_tolerance, 1e-6),
        )
        model = nn.Linear(x_train.shape[1], 1)
        if config.optimizer == "adam":
            optimizer: torch.optim.Optimizer = ecl.eager_optimizer(torch.optim.Adam)(
                model.parameters(), lr=config.lr
            )
        else:
            optimizer = ecl.eager_optimizer(torch.optim.SGD)(model.parameters(), lr=config.lr)
        if config.dual_optimizer == "adam":
            dual: ecl.dual.DualOptimizer = ecl.dual.Adam(lr=config.dual_lr)
        elif config.dual_optimizer == "sgd":
            dual = ecl.dual.SGD(lr=config.dual_lr)
        else:
            dual = ecl.dual.NuPI(lr=config.dual_lr, kp=config.nupi_kp)
        recipe = fair_solver(
            evaluate,
            constraints,
            model,
            train,
            optimizer=optimizer,
            dual=dual,
            primal_steps=config.primal_steps,
            device=context.device,
            dtype=torch.float32,
            warm_start=config.warm_start,
            select=False,  # the runner selects (config.select, config.patience)
        )
        solver, warm = recipe.solver, recipe.warm_start
        stopping = None
        if config.stopping_window is not None:
            stopping = ecl.StoppingRule(
                tolerance=config.stopping_tolerance,
                window=config.stopping_window,
                lagrangian_rtol=config.stopping_rtol,
            )
        context.log(
            f"fairness: split {split_id} ({len(y_fit)} train"
            + ("" if validation is None else f" + {len(validation['y'])} validation")
            + f" / {len(data.y_test)} test), "
            f"{config.formulation}"
            + (f" ε={config.tolerance}" if config.formulation == "dp-tolerance" else "")
            + (f" r={config.rate}" if config.formulation == "prescribed-rate" else "")
            + f", {sum(c.size for c in constraints)} constraint components"
        )
        return Setup(
            solver,
            [train],
            max_steps=config.max_steps,
            stopping=stopping,
            callbacks=[warm],
            state={
                "config": config,
                "split": split_id,
                "train": train,
                "test": test,
                "groups": list(data.groups),
                "evaluate": evaluate,
                "warm": warm,
                "seed": context.seed,
            },
            heldout_batches=[test],
            certify_train_batches=[train],
            validation_batches=None if validation is None else [validation],
            validation_description=(
                "no validation split"
                if validation is None
                else f"validation split ({len(validation['y'])} of {len(data.y_train)} training "
                f"rows, stratified by group and label, seed {context.seed})"
            ),
        )

    # ------------------------------------------------------------------ metrics
    @staticmethod
    def _decisions(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            logits = model(batch["x"]).reshape(-1)
        model.train(was_training)
        return (logits > 0).to(torch.float64).cpu()

    def metrics(self, setup: Setup, result: FitResult, context: RunContext) -> dict[str, Any]:
        state = setup.state
        config: FairnessConfig = state["config"]
        solver = setup.solver
        model = solver.model
        problem = solver.problem
        seed = int(state["split"]) * 1000 + 17
        out: dict[str, Any] = {"split": state["split"], "groups": state["groups"]}
        k = len(state["groups"])
        for part in ("train", "test"):
            batch = state[part]
            decisions = self._decisions(model, batch)  # 0/1: "exact" rates of these are exact
            y = batch["y"].double().cpu()
            g = batch["group"].cpu()
            rates = positive_rate(decisions, g, k, surrogate="exact")
            counts = rates.denominator.round().long().tolist()
            positives = rates.numerator.round().long().tolist()
            out[f"{part}_accuracy"] = float((decisions == y).double().mean())
            out[f"{part}_disparity"] = disparity(rates)
            out[f"{part}_disparity_ci"] = list(
                bootstrap_disparity_ci(positives, counts, config.bootstrap, seed=seed)
            )
            out[f"{part}_group_rates"] = rates.value.tolist()
            out[f"{part}_group_sizes"] = counts
            out[f"{part}_positive_rate"] = float(decisions.mean())
            if config.formulation == "equalized-odds":
                for name, fn, label in (
                    ("tpr", true_positive_rate, 1),
                    ("fpr", false_positive_rate, 0),
                ):
                    r = fn(decisions, y, g, k, surrogate="exact")
                    out[f"{part}_{name}_group_rates"] = r.value.tolist()
                    out[f"{part}_{name}_disparity"] = disparity(r)
                    out[f"{part}_{name}_disparity_ci"] = list(
                        bootstrap_disparity_ci(
                            r.numerator.round().long().tolist(),
                            r.denominator.round().long().tolist(),
                            config.bootstrap,
                            seed=seed + label + 1,
                        )
                    )
                out[f"{part}_equalized_odds_disparity"] = max(
                    out[f"{part}_tpr_disparity"], out[f"{part}_fpr_disparity"]
                )
            if config.formulation == "prescribed-rate":
                deviation = np.abs(np.asarray(out[f"{part}_group_rates"]) - config.rate)
                out[f"{part}_rate_deviation_max"] = float(deviation.max())
                out[f"{part}_rate_deviation_mean"] = float(deviation.mean())
        test_sizes = out["test_group_sizes"]
        out["sampling_floor"] = sampling_floor(
            test_sizes, out["test_positive_rate"], config.floor_draws, seed=seed
        )
        if config.formulation == "prescribed-rate":
            out["target_rate"] = config.rate
        if config.formulation == "dp-tolerance":
            out["tolerance"] = config.tolerance
        train, test = state["train"], state["test"]
        if problem.constraints:
            exact_train = ecl.evaluate(problem, model, [train], exact=True)
            smooth_train = ecl.evaluate(problem, model, [train], exact=False)
            exact_test = ecl.evaluate(problem, model, [test], exact=True)
            for key, report in (
                ("train_violation_exact", exact_train),
                ("train_violation_surrogate", smooth_train),
                ("test_violation_exact", exact_test),
            ):
                values = torch.cat([c.excess.reshape(-1) for c in report.constraints.values()])
                out[key] = float(values.max())
                out[key.replace("violation", "violations")] = values.tolist()
            out["multipliers"] = torch.cat(
                [result.multipliers[c.name].reshape(-1).double().cpu() for c in problem.constraints]
            ).tolist()
            out["multiplier_names"] = [n for c in problem.constraints for n in c.component_names()]
        else:
            out["train_violation_exact"] = 0.0
            out["multipliers"] = []
        warm = state["warm"]
        chosen = result.selected
        out["selected_step"] = None if chosen is None else chosen.step
        out["selected_feasible"] = None if chosen is None else chosen.feasible
        out["selected_on"] = "last iterate" if chosen is None else chosen.data
        out["warm_start_seconds"] = round(warm.seconds, 4)
        out["fit_seconds_total"] = round(result.seconds + warm.seconds, 4)
        out["train_objective"] = float(ecl.evaluate(problem, model, [train]).objective or math.nan)
        return out

    # ------------------------------------------------------------------ figures
    def figures(self, setup: Setup, result: FitResult, figure_dir: Path) -> list[Path]:
        from eclearn.report.figures import new_figure, save_figure

        state = setup.state
        config: FairnessConfig = state["config"]
        model = setup.solver.model
        k = len(state["groups"])
        rates = {}
        for part in ("train", "test"):
            batch = state[part]
            decisions = self._decisions(model, batch)
            rates[part] = positive_rate(
                decisions, batch["group"].cpu(), k, surrogate="exact"
            ).value.numpy()
        fig, (ax,) = new_figure(1, width=6.5, height=3.4)
        at = np.arange(k)
        ax.bar(at - 0.2, rates["train"], 0.4, label="train")
        ax.bar(at + 0.2, rates["test"], 0.4, label="test")
        if config.formulation == "prescribed-rate":
            ax.axhline(
                config.rate, color="k", linestyle="--", linewidth=1, label=f"target {config.rate}"
            )
        else:
            overall = float(self._decisions(model, state["train"]).mean())
            ax.axhline(overall, color="0.4", linestyle=":", linewidth=1, label="overall (train)")
        ax.set_xticks(at, state["groups"], fontsize="small")
        ax.set_ylim(0, 1)
        ax.set_ylabel("positive rate (exact)")
        ax.set_title(f"fairness: {config.formulation}, split {state['split']}")
        ax.legend(fontsize="small")
        return [save_figure(fig, figure_dir / "fairness-group-rates.png")]

    @classmethod
    def report_figures(cls, runs: Sequence[RunRecord], out_dir: Path) -> list[Path]:
        """Accuracy vs test disparity per configuration (with Fairlearn when available),
        prescribed target vs achieved rate per group, and disparity vs ε."""
        complete = [r for r in runs if r.metrics is not None]
        if not complete:
            return []
        paths = [_tradeoff_figure(complete, out_dir)]
        prescribed = [r for r in complete if r.config.get("formulation") == "prescribed-rate"]
        if prescribed:
            paths.append(_prescribed_figure(prescribed, out_dir))
        tolerance = [r for r in complete if r.config.get("formulation") == "dp-tolerance"]
        if tolerance:
            paths.append(_tolerance_figure(tolerance, out_dir))
        return paths


# ---------------------------------------------------------------------------- report figures
def _label(record: RunRecord) -> str:
    c = record.config
    f = str(c.get("formulation"))
    if f == "dp-tolerance":
        return f"dp ε={c.get('tolerance')}"
    if f == "prescribed-rate":
        return f"rate {c.get('rate')}"
    extra = []
    if c.get("dual_signal") == "surrogate":
        extra.append("surrogate dual")
    if c.get("select", c.get("selection")) == "last":
        extra.append("last iterate")
    return f + (f" ({', '.join(extra)})" if extra else "")


def _by_label(runs: Sequence[RunRecord]) -> dict[str, list[RunRecord]]:
    grouped: dict[str, list[RunRecord]] = {}
    for r in runs:
        grouped.setdefault(_label(r), []).append(r)
    return grouped


def _mean_std(values: list[float]) -> tuple[float, float]:
    a = np.asarray([v for v in values if v is not None], dtype=float)
    if not len(a):
        return math.nan, 0.0
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


class FairlearnComparisonWarning(UserWarning):
    """The fairness report's trade-off figure has no Fairlearn point (the message says
    why: no benchmark JSON was found and fairlearn is not installed, or the fit failed)."""


def _fairlearn_points(runs: Sequence[RunRecord], out_dir: Path) -> list[dict[str, Any]] | None:
    """Fairlearn (ExponentiatedGradient, DP, eps 0.01) per split: from the benchmark's JSON
    (``fairness_vs_fairlearn.json`` in the report folder or above the runs), else fitted
    here when fairlearn is installed, else None with a :class:`FairlearnComparisonWarning`
    naming the reason (the figure is then drawn without Fairlearn)."""
    import warnings

    splits = sorted({int(r.metrics["split"]) for r in runs if r.metrics and "split" in r.metrics})
    candidates = [out_dir / BENCHMARK_JSON, out_dir.parent / BENCHMARK_JSON]
    for r in runs[:1]:
        candidates += [p / BENCHMARK_JSON for p in list(r.path.parents)[:4]]
    unreadable: list[str] = []
    for path in candidates:
        if path.is_file():
            try:
                rows = json.loads(path.read_text(encoding="utf-8"))["results"].get("fairlearn")
            except (OSError, ValueError, KeyError, AttributeError) as exc:
                unreadable.append(f"{path} ({type(exc).__name__}: {exc})")
                continue
            if rows:
                return [row for row in rows if row.get("split") in splits] or rows
            unreadable.append(f"{path} (no 'fairlearn' rows)")
    found = (
        "unreadable benchmark file(s): " + "; ".join(unreadable)
        if unreadable
        else f"no {BENCHMARK_JSON} in {out_dir} or above the runs"
    )
    if not splits:
        warnings.warn(
            f"fairness report: no Fairlearn point in the trade-off figure: {found}, and the "
            "runs record no split to fit Fairlearn on",
            FairlearnComparisonWarning,
            stacklevel=2,
        )
        return None
    try:
        from fairlearn.reductions import DemographicParity, ExponentiatedGradient
        from sklearn.linear_model import LogisticRegression
    except ImportError as exc:
        warnings.warn(
            f"fairness report: no Fairlearn point in the trade-off figure: {found}, and "
            f"fairlearn cannot be imported ({exc}); pip install fairlearn, or run "
            "benchmarks/fairness_vs_fairlearn.py --out <report folder>/"
            f"{BENCHMARK_JSON.replace('.json', '.md')}",
            FairlearnComparisonWarning,
            stacklevel=2,
        )
        return None
    data_path = next((r.info.get("data") for r in runs if r.info.get("data")), None)
    points = []
    try:
        for split in splits[:10]:
            data = compas_split(split, data_path)
            eg = ExponentiatedGradient(
                LogisticRegression(max_iter=1000), DemographicParity(difference_bound=0.01)
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                eg.fit(data.x_train, data.y_train, sensitive_features=data.g_train)
            pred = eg.predict(data.x_test, random_state=split)
            rates = [pred[data.g_test == k].mean() for k in range(len(GROUPS))]
            points.append(
                {
                    "split": split,
                    "test_accuracy": float((pred == data.y_test).mean()),
                    "test_disparity": float(max(rates) - min(rates)),
                }
            )
    except Exception as exc:  # the figure is still drawn; say why Fairlearn is missing
        warnings.warn(
            f"fairness report: no Fairlearn point in the trade-off figure: {found}, and "
            f"fitting Fairlearn here failed on split {split}: {type(exc).__name__}: {exc}",
            FairlearnComparisonWarning,
            stacklevel=2,
        )
        return None
    return points


def _tradeoff_figure(runs: Sequence[RunRecord], out_dir: Path) -> Path:
    import matplotlib

    from eclearn.report.figures import new_figure, save_figure

    fig, (ax,) = new_figure(1, width=7.0, height=4.2)
    markers = {
        "unconstrained": "X",
        "dp-equality": "o",
        "dp-tolerance": "^",
        "prescribed-rate": "D",
        "equalized-odds": "v",
    }
    colors = matplotlib.colormaps["tab20"].colors  # type: ignore[attr-defined]
    for i, (label, group) in enumerate(_by_label(runs).items()):
        acc = _mean_std([r.metrics.get("test_accuracy") for r in group])  # type: ignore[union-attr,misc]
        dis = _mean_std([r.metrics.get("test_disparity") for r in group])  # type: ignore[union-attr,misc]
        ax.errorbar(
            dis[0],
            acc[0],
            xerr=dis[1],
            yerr=acc[1],
            fmt=markers.get(str(group[0].config.get("formulation")), "o"),
            color=colors[(2 * i) % 20 + (2 * i) // 20 % 2],
            capsize=3,
            label=f"{label} (n={len(group)})",
        )
    # The floor depends on the overall rate: take it from the parity runs when there are some.
    parity = [r for r in runs if r.config.get("formulation") in ("dp-equality", "dp-tolerance")]
    floors = [r.metrics.get("sampling_floor") for r in parity or runs]  # type: ignore[union-attr]
    floor = _mean_std([f for f in floors if f is not None])[0]
    if math.isfinite(floor):
        ax.axvline(
            floor,
            color="0.5",
            linestyle=":",
            linewidth=1,
            label=f"sampling floor {floor:.3f}" + (" (parity runs)" if parity else ""),
        )
    fairlearn = _fairlearn_points(runs, out_dir)
    if fairlearn:
        acc = _mean_std([p["test_accuracy"] for p in fairlearn])
        dis = _mean_std([p["test_disparity"] for p in fairlearn])
        ax.errorbar(
            dis[0],
            acc[0],
            xerr=dis[1],
            yerr=acc[1],
            fmt="s",
            color="k",
            capsize=3,
            label=f"Fairlearn EG, DP eps 0.01 (n={len(fairlearn)})",
        )
    ax.set_xlabel("test disparity (max − min group positive rate)")
    ax.set_ylabel("test accuracy")
    ax.set_title("COMPAS: accuracy vs demographic disparity (mean ± std over splits)")
    ax.legend(fontsize="x-small", loc="best")
    return save_figure(fig, out_dir / "fairness-tradeoff.png")


def _prescribed_figure(runs: Sequence[RunRecord], out_dir: Path) -> Path:
    from eclearn.report.figures import new_figure, save_figure

    fig, axes = new_figure(2, width=6.5, height=3.4)
    groups = list(runs[0].metrics.get("groups") or GROUPS)  # type: ignore[union-attr]
    targets = sorted({float(r.config["rate"]) for r in runs})
    for ax, part in zip(axes, ("train", "test"), strict=True):
        for k, name in enumerate(groups):
            means, stds = [], []
            for t in targets:
                vals = [
                    r.metrics[f"{part}_group_rates"][k]  # type: ignore[index]
                    for r in runs
                    if float(r.config["rate"]) == t
                ]
                m, s = _mean_std(vals)
                means.append(m)
                stds.append(s)
            offset = (k - (len(groups) - 1) / 2) * 0.008
            ax.errorbar(
                np.asarray(targets) + offset, means, yerr=stds, fmt="o", ms=4, capsize=2, label=name
            )
        ax.plot([0, 1], [0, 1], color="0.5", linewidth=0.8, linestyle="--")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("prescribed rate")
        ax.set_ylabel(f"{part} rate (exact)")
        ax.set_title(f"prescribed vs achieved positive rate per group ({part})")
        ax.legend(fontsize="x-small", ncol=2)
    return save_figure(fig, out_dir / "fairness-prescribed.png")


def _tolerance_figure(runs: Sequence[RunRecord], out_dir: Path) -> Path:
    from eclearn.report.figures import new_figure, save_figure

    fig, (ax,) = new_figure(1, width=6.5, height=3.4)
    eps = sorted({float(r.config["tolerance"]) for r in runs})
    for part, marker in (("train", "o"), ("test", "s")):
        stats = [
            _mean_std(
                [
                    r.metrics[f"{part}_disparity"]  # type: ignore[index]
                    for r in runs
                    if float(r.config["tolerance"]) == e
                ]
            )
            for e in eps
        ]
        ax.errorbar(
            eps,
            [s[0] for s in stats],
            yerr=[s[1] for s in stats],
            fmt=marker + "-",
            capsize=3,
            label=f"{part} disparity",
        )
    grid = np.asarray(eps)
    ax.plot(grid, 2 * grid, color="0.5", linestyle="--", linewidth=0.8, label="2ε (bound)")
    ax.set_xscale("symlog", linthresh=1e-3)
    ax.set_xlabel("ε")
    ax.set_ylabel("max − min positive rate")
    ax.set_title("dp-tolerance: disparity vs ε (mean ± std over splits)")
    ax.legend(fontsize="small")
    return save_figure(fig, out_dir / "fairness-tolerance.png")
