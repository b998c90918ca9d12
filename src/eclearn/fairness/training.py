"""Fair logistic regression on :mod:`eclearn`'s primal-dual solver: the pieces shared by
:class:`~eclearn.fairness.experiment.FairnessExperiment` (``eclearn run fairness``) and
:class:`~eclearn.fairness.estimator.FairClassifier` (scikit-learn).

Formulations (:data:`FORMULATIONS`), with ``rate_k`` the positive rate of group k:

- ``"unconstrained"``: cross-entropy only;
- ``"dp-equality"``: ``rate_k − rate_all = 0`` for every group (demographic parity as
  equalities, the paper's formulation);
- ``"dp-tolerance"``: ``|rate_k − rate_all| ≤ ε`` as two inequalities per group;
- ``"prescribed-rate"``: ``rate_k = r_k`` (returned as :class:`eclearn.Ratio`);
- ``"equalized-odds"``: ``TPR_k − TPR = 0`` and ``FPR_k − FPR = 0`` for every group.

**Surrogates and the dual signal.** Exact rates count ``1[p > 0.5]`` and have no gradient,
so the primal step differentiates a surrogate (``σ(T(p − 0.5))`` by default, see
:func:`eclearn.fairness.indicator`). With ``dual_signal="surrogate"`` (the paper's code)
the multipliers also follow the surrogate violations, and the iteration settles where the
*surrogate* rates are equal, which can leave the exact training disparity at 0.06 (a
smooth rate being equal does not make the thresholded ones equal). With
``dual_signal="exact"`` (the default) every statistic is returned as
``ecl.Proxy(surrogate=..., exact=...)``: the core's proxy mechanism moves the multipliers
until the *exact* training rates meet the constraints while the primal step follows the
surrogate's gradient (the "proxy Lagrangian" of Cotter, Jiang & Sridharan, ALT 2019).

**Returned iterate and warm start.** :func:`fair_solver` assembles what both the
experiment and the estimator train with: the problem, the solver, an
``ecl.ObjectiveWarmStart`` (the unconstrained logistic regression by L-BFGS, a few
milliseconds, so the primal-dual steps only move from it to the constrained solution), and
an ``ecl.select.BestFeasible(on="steps")`` selector with ``ecl.Patience`` — the rate
constraints make the last iterate oscillate around the solution, so the returned model is
the best training iterate whose exact violations are all within tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import eclearn as ecl
from eclearn.fairness.rates import SURROGATES, indicator
from eclearn.problem import Constraint
from eclearn.statistics import Ratio

__all__ = [
    "DUAL_SIGNALS",
    "FORMULATIONS",
    "FairTraining",
    "FairnessEvaluate",
    "build_constraints",
    "fair_solver",
    "group_weights",
]

FORMULATIONS: tuple[str, ...] = (
    "unconstrained",
    "dp-equality",
    "dp-tolerance",
    "prescribed-rate",
    "equalized-odds",
)
DUAL_SIGNALS: tuple[str, ...] = ("exact", "surrogate")


def build_constraints(
    formulation: str,
    num_groups: int,
    *,
    tolerance: float | None = None,
    rate: float | Sequence[float] | None = None,
    constraint_tolerance: float = 1e-3,
) -> list[Constraint]:
    """The constraint declarations of ``formulation`` for ``num_groups`` groups.

    ``tolerance`` is ε of ``"dp-tolerance"``; ``rate`` the target rate(s) of
    ``"prescribed-rate"`` (one number or one per group). ``constraint_tolerance`` is the
    slack the solver's verdicts and stopping rules accept.
    """
    if formulation not in FORMULATIONS:
        raise ValueError(f"formulation={formulation!r} is unknown; choose one of {FORMULATIONS}")
    if formulation == "unconstrained":
        return []
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 2:
        raise ValueError(f"fairness constraints need at least 2 groups, got {num_groups!r}")
    k, tol = num_groups, constraint_tolerance
    if formulation == "dp-equality":
        return [ecl.Equality("demographic_parity", size=k, tolerance=tol)]
    if formulation == "dp-tolerance":
        if tolerance is None or not (math.isfinite(tolerance) and tolerance >= 0):
            raise ValueError(
                f"formulation 'dp-tolerance' needs tolerance=ε ≥ 0 (|rate_k − rate_all| ≤ ε), "
                f"got {tolerance!r}"
            )
        return [
            ecl.Inequality("demographic_parity_upper", size=k, bound=tolerance, tolerance=tol),
            ecl.Inequality("demographic_parity_lower", size=k, bound=tolerance, tolerance=tol),
        ]
    if formulation == "prescribed-rate":
        if rate is None:
            raise ValueError(
                "formulation 'prescribed-rate' needs rate=r (a number in (0, 1) or one per group)"
            )
        rates = torch.as_tensor(rate, dtype=torch.float64).reshape(-1)
        if rates.numel() not in (1, k) or not bool(((rates > 0) & (rates < 1)).all()):
            raise ValueError(
                f"rate must be a number in (0, 1) or {k} of them (one per group), got {rate!r}"
            )
        return [ecl.Equality("positive_rate", size=k, rhs=rates, tolerance=tol)]
    return [
        ecl.Equality("true_positive_rate_gap", size=k, tolerance=tol),
        ecl.Equality("false_positive_rate_gap", size=k, tolerance=tol),
    ]


def group_weights(group: Tensor, num_groups: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """One-hot ``[n, num_groups]`` matrix of integer group ids (rates are ``ind @ W / W.sum(0)``)."""
    return F.one_hot(group.long(), num_groups).to(dtype)


class FairnessEvaluate:
    """The ``evaluate(model, batch, exact=False)`` of a fairness problem.

    ``model(batch["x"])`` returns logits (``[n]`` or ``[n, 1]``); the objective is the
    mean binary cross-entropy with ``batch["y"]`` (0/1 floats); ``batch["group"]`` holds
    int64 group ids in ``[0, num_groups)``. A decision is positive when the logit is > 0
    (probability > 0.5), exactly as :meth:`FairClassifier.predict` decides.

    Training calls (``exact=False``) return ``ecl.Proxy(surrogate, exact)`` statistics
    with ``dual_signal="exact"`` and surrogate statistics with ``"surrogate"``;
    ``exact=True`` returns the exact statistics only (see the module docstring).

    Every statistic is one matrix product of the per-sample decisions with a fixed
    ``[n, ·]`` matrix that :meth:`prepare` adds to a batch (``batch["onehot"]``, and
    ``batch["contrast"]`` for the gaps: column k of the demographic-parity contrast is
    ``1[g_i = k]/n_k − 1/n``, so ``ind @ contrast = rate_k − rate_all``). Batches served
    every step should be prepared once; unprepared batches are prepared on the fly. The
    definitions are those of :mod:`eclearn.fairness.rates` (a test checks they agree),
    without its per-call input validation, which would cost more than the step itself.
    Gaps are plain tensors (exact for a full batch); prescribed rates are
    :class:`~eclearn.Ratio` s, pooled exactly across batches by :func:`eclearn.evaluate`.
    """

    def __init__(
        self,
        formulation: str,
        num_groups: int,
        *,
        surrogate: str = "sigmoid",
        temperature: float = 8.0,
        dual_signal: str = "exact",
    ) -> None:
        if formulation not in FORMULATIONS:
            raise ValueError(
                f"formulation={formulation!r} is unknown; choose one of {FORMULATIONS}"
            )
        if surrogate not in SURROGATES or surrogate == "exact":
            raise ValueError(f"surrogate={surrogate!r}: choose 'sigmoid' or 'hinge'")
        if not (
            isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0
        ):
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        if dual_signal not in DUAL_SIGNALS:
            raise ValueError(f"dual_signal={dual_signal!r}: choose one of {DUAL_SIGNALS}")
        if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
            raise ValueError(f"num_groups must be a positive int, got {num_groups!r}")
        self.formulation = formulation
        self.num_groups = num_groups
        self.surrogate = surrogate
        self.temperature = float(temperature)
        self.dual_signal = dual_signal

    def prepare(
        self, batch: Mapping[str, Tensor], dtype: torch.dtype | None = None
    ) -> dict[str, Tensor]:
        """``batch`` plus the fixed matrices the statistics need (see the class docstring)."""
        out = dict(batch)
        if self.formulation == "unconstrained":
            return out
        if dtype is None:
            x = batch["x"]
            dtype = x.dtype if x.is_floating_point() else torch.float32
        onehot = group_weights(batch["group"], self.num_groups, dtype)
        out["onehot"] = onehot
        if self.formulation in ("dp-equality", "dp-tolerance"):
            out["contrast"] = _contrast(onehot, torch.ones_like(onehot[:, 0]))
        elif self.formulation == "equalized-odds":
            y = batch["y"].to(dtype).reshape(-1, 1)
            out["contrast"] = torch.cat(
                [_contrast(onehot * y, y[:, 0]), _contrast(onehot * (1 - y), 1 - y[:, 0])], dim=1
            )
        return out

    def __call__(
        self, model: nn.Module, batch: Mapping[str, Tensor], exact: bool = False
    ) -> dict[str, Any]:
        logits = model(batch["x"]).reshape(-1)
        y = batch["y"].to(logits.dtype)
        objective = F.binary_cross_entropy_with_logits(logits, y)
        out: dict[str, Any] = {"objective": objective}
        if self.formulation == "unconstrained":
            return out
        needs = "onehot" if self.formulation == "prescribed-rate" else "contrast"
        if needs not in batch:
            batch = self.prepare(batch, logits.dtype)
        hard = (logits.detach() > 0).to(logits.dtype)
        if exact:
            out.update(self.statistics(hard, batch))
            return out
        smooth = indicator(torch.sigmoid(logits), self.surrogate, self.temperature)
        surrogate = self.statistics(smooth, batch)
        if self.dual_signal == "surrogate":
            out.update(surrogate)
            return out
        measured = self.statistics(hard, batch)
        out.update({k: ecl.Proxy(surrogate[k], measured[k]) for k in surrogate})
        return out

    def statistics(self, ind: Tensor, batch: Mapping[str, Tensor]) -> dict[str, Any]:
        """Constraint statistics of per-sample decisions ``ind`` (exact or smoothed) on a
        :meth:`prepare` d batch."""
        f = self.formulation
        if f == "prescribed-rate":
            onehot = batch["onehot"].to(ind.dtype)
            return {"positive_rate": Ratio(ind @ onehot, onehot.sum(0))}
        gaps = ind @ batch["contrast"].to(ind.dtype)
        if f == "dp-equality":
            return {"demographic_parity": gaps}
        if f == "dp-tolerance":
            return {"demographic_parity_upper": gaps, "demographic_parity_lower": -gaps}
        k = self.num_groups
        return {"true_positive_rate_gap": gaps[:k], "false_positive_rate_gap": gaps[k:]}


def _contrast(cells: Tensor, members: Tensor) -> Tensor:
    """``[n, K]`` matrix with ``ind @ M = mean of ind over cell k − mean over all members``;
    a column is 0 where cell k is empty (nothing to compare)."""
    counts = cells.sum(0)
    total = members.sum().clamp_min(1)
    matrix = cells / counts.clamp_min(1) - (members / total)[:, None]
    return torch.where(counts > 0, matrix, torch.zeros_like(matrix))


@dataclass
class FairTraining:
    """What :func:`fair_solver` assembles: the problem, the solver and the callbacks to fit
    with (warm start, selector), and the stopping criteria (patience)."""

    evaluate: FairnessEvaluate
    problem: ecl.Problem
    solver: ecl.PrimalDual
    warm_start: ecl.ObjectiveWarmStart
    selector: ecl.select.BestFeasible | None
    stopping: list[Any] = field(default_factory=list)

    @property
    def callbacks(self) -> list[Any]:
        return [self.warm_start]


def fair_solver(
    evaluate: FairnessEvaluate,
    constraints: Sequence[Constraint],
    model: nn.Module,
    warm_batch: Mapping[str, Tensor],
    *,
    optimizer: torch.optim.Optimizer,
    dual: ecl.dual.DualOptimizer,
    primal_steps: int = 1,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float64,
    warm_start: bool = True,
    select: bool = True,
    patience: int | None = 100,
    min_delta: float = 1e-4,
) -> FairTraining:
    """The fairness training recipe shared by the experiment and the estimator."""
    problem = ecl.Problem(evaluate, constraints)
    solver = ecl.PrimalDual(
        problem, model, optimizer, dual, primal_steps=primal_steps, device=device, dtype=dtype
    )
    warm = ecl.ObjectiveWarmStart(warm_batch, max_iter=100 if warm_start else 0)
    selector = ecl.select.BestFeasible(on="steps", min_delta=min_delta) if select else None
    stopping: list[Any] = []
    if selector is not None and patience:
        stopping.append(ecl.Patience(selector, patience))
    return FairTraining(evaluate, problem, solver, warm, selector, stopping)
