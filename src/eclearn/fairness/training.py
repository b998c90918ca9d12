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
``dual_signal="exact"`` (the default) each constraint's value is the exact statistic and
its gradient the surrogate's (a straight-through estimate, the "proxy Lagrangian" of
Cotter, Jiang & Sridharan, ALT 2019): the dual ascent then moves the multipliers until
the *exact* training rates meet the constraints, while the primal step still gets the
surrogate's gradient.

**Returned iterate.** The rate constraints make the last iterate oscillate around the
solution; :class:`IterateSelector` keeps the iterate with the lowest training objective
among those whose exact training violations are all within ``tolerance`` (or, when none
is, the least violating one) and puts it back into the model at the end of ``fit``. It also
stops the fit once a feasible iterate has not been improved on for ``patience`` steps.

**Warm start.** :class:`WarmStart` fits the unconstrained logistic regression with L-BFGS
(a few milliseconds) before the first step, so the primal-dual steps only have to move
from the unconstrained solution to the constrained one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import eclearn as ecl
from eclearn.fairness.rates import SURROGATES, indicator
from eclearn.problem import Constraint
from eclearn.ratio import Ratio
from eclearn.solver import Callback, FitResult, PrimalDual

__all__ = [
    "DUAL_SIGNALS",
    "FORMULATIONS",
    "FairnessEvaluate",
    "IterateSelector",
    "WarmStart",
    "build_constraints",
    "exact_violation",
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

    Training calls (``exact=False``) use the surrogate's gradient and, with
    ``dual_signal="exact"``, the exact statistic as the value (see the module docstring);
    ``exact=True`` returns the exact statistics only. After every training forward pass
    (autograd on), :attr:`last` holds its exact constraint values and objective, which
    :class:`IterateSelector` reads — the solver's single forward pass per step is shared.

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
        self.last: dict[str, Any] = {}

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
            if torch.is_grad_enabled():
                self.last = {"objective": objective.detach(), "values": {}}
            return out
        needs = "onehot" if self.formulation == "prescribed-rate" else "contrast"
        if needs not in batch:
            batch = self.prepare(batch, logits.dtype)
        hard = (logits.detach() > 0).to(logits.dtype)
        if exact:
            out.update(self.statistics(hard, batch))
            return out
        smooth = indicator(torch.sigmoid(logits), self.surrogate, self.temperature)
        recording = torch.is_grad_enabled()
        if self.dual_signal == "exact":
            ind = smooth + (hard - smooth).detach()  # value: exact; gradient: surrogate
            out.update(self.statistics(ind, batch))
            if recording:
                exact_values = {k: _value(v).detach() for k, v in out.items() if k != "objective"}
        else:
            out.update(self.statistics(smooth, batch))
            if recording:
                exact_values = {k: _value(v) for k, v in self.statistics(hard, batch).items()}
        if recording:
            self.last = {"objective": objective.detach(), "values": exact_values}
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


def _value(statistic: Tensor | Ratio) -> Tensor:
    return statistic.value if isinstance(statistic, Ratio) else statistic


def exact_violation(values: Mapping[str, Tensor], constraints: Sequence[Constraint]) -> float:
    """Largest violation: ``|value − rhs|`` (equalities), ``[value − bound]₊`` (inequalities)."""
    worst = 0.0
    for c in constraints:
        v = c.violation(values[c.name].detach().double().cpu().reshape(-1))
        v = v.abs() if c.is_equality else v.clamp_min(0)
        worst = max(worst, float(v.max()))
    return worst


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


class WarmStart(Callback):
    """Before the first step (``solver.step == 0``), fit the objective alone with L-BFGS.

    Fitting the unconstrained model is part of training (its time is in :attr:`seconds`);
    a resumed fit (``step > 0``) is left alone.
    """

    def __init__(self, batch: Mapping[str, Tensor], max_iter: int = 100) -> None:
        self.batch = batch
        self.max_iter = int(max_iter)
        self.seconds = 0.0
        self.done = False

    def on_fit_start(self, solver: PrimalDual) -> None:
        if self.done or solver.step > 0 or self.max_iter <= 0:
            return
        began = time.perf_counter()
        model, evaluate = solver.model, solver.problem.evaluate_fn
        batch = {
            k: (v.to(solver.device) if isinstance(v, Tensor) else v) for k, v in self.batch.items()
        }
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.LBFGS(
            params,
            lr=1.0,
            max_iter=self.max_iter,
            history_size=10,
            tolerance_grad=1e-6,
            tolerance_change=1e-10,
            line_search_fn="strong_wolfe",
        )

        def closure() -> Tensor:
            opt.zero_grad(set_to_none=True)
            loss = evaluate(model, batch)["objective"]
            loss.backward()
            return loss

        opt.step(closure)
        for p in params:
            p.grad = None
        self.done = True
        self.seconds = time.perf_counter() - began


class IterateSelector(Callback):
    """Keep the best iterate by the exact training statistics; stop when it stops improving.

    Every step reads ``evaluate.last`` — the exact constraint values and objective of the
    step's forward pass, i.e. of the parameters *before* that step's primal update — and
    compares that iterate with the best so far: feasible (largest exact violation ≤
    ``tolerance``) beats infeasible; among feasible ones the lower training objective wins,
    among infeasible ones the smaller violation. With ``restore=True`` the best iterate is
    copied into the model when ``fit`` ends (``rule="last"`` keeps the last iterate and only
    records). ``patience``: stop the fit (``stop_reason="selected"``) once a feasible
    iterate exists, at least ``min_steps`` steps were taken, and the best has not changed
    for ``patience`` steps by more than ``min_delta`` (objective; or violation while none is
    feasible); ``None`` never stops. The choice covers the iterates of one ``fit`` call: a
    fit resumed from a checkpoint chooses among the iterates after the resume.
    """

    def __init__(
        self,
        evaluate: FairnessEvaluate,
        constraints: Sequence[Constraint],
        *,
        tolerance: float = 0.01,
        patience: int | None = 100,
        min_delta: float = 1e-4,
        min_steps: int = 0,
        rule: str = "best-feasible",
    ) -> None:
        if rule not in ("best-feasible", "last"):
            raise ValueError(f"rule={rule!r}: choose 'best-feasible' or 'last'")
        if tolerance < 0:
            raise ValueError(f"selection tolerance must be ≥ 0, got {tolerance}")
        if patience is not None and patience < 1:
            raise ValueError(f"patience must be ≥ 1 or None, got {patience}")
        self.evaluate = evaluate
        self.constraints = list(constraints)
        self.tolerance = float(tolerance)
        self.patience = patience
        self.min_delta = float(min_delta)
        self.min_steps = int(min_steps)
        self.rule = rule
        self.reset()

    def reset(self) -> None:
        self.best: dict[str, Tensor] | None = None
        self.best_step: int | None = None
        self.best_key: tuple[int, float] | None = None
        self.best_violation = math.nan
        self.best_objective = math.nan
        self._improved_at = 0
        self._previous: dict[str, Tensor] | None = None
        self._tensors: list[tuple[str, Tensor]] = []
        self._start = 0

    @property
    def found_feasible(self) -> bool:
        return self.best_key is not None and self.best_key[0] == 0

    def _snapshot(self) -> dict[str, Tensor]:
        return {name: t.detach().clone() for name, t in self._tensors}

    def on_fit_start(self, solver: PrimalDual) -> None:
        self._tensors = list(_unwrap(solver.model).state_dict(keep_vars=True).items())
        self._targets: dict[str, Tensor] = {}
        self._previous = self._snapshot()
        self._start = solver.step
        self.evaluate.last = {}

    def _measure(self, last: Mapping[str, Any]) -> tuple[float, float]:
        """(largest exact violation, objective) with one host synchronisation."""
        parts = [last["objective"].reshape(1).to(torch.float64), last["objective"].new_zeros(1)]
        for c in self.constraints:
            value = last["values"][c.name].reshape(-1)
            target = self._targets.get(c.name)
            if target is None or target.dtype != value.dtype or target.device != value.device:
                target = self._targets[c.name] = c.target.to(value)
            v = value - target
            parts.append((v.abs() if c.is_equality else v).max().reshape(1).to(torch.float64))
        numbers = torch.cat([p.to(parts[0].device) for p in parts]).tolist()
        return max(numbers[1:]), numbers[0]

    def on_step_end(self, solver: PrimalDual) -> None:
        last = self.evaluate.last
        if not last:
            return
        violation, objective = self._measure(last)
        feasible = violation <= self.tolerance
        key = (0, objective) if feasible else (1, violation)
        if self.best_key is None or key < self.best_key:
            if (
                self.best_key is None
                or key[0] < self.best_key[0]
                or key[1] < self.best_key[1] - self.min_delta
            ):
                self._improved_at = solver.step
            self.best_key = key
            self.best = self._previous
            self.best_step = solver.step - 1
            self.best_violation, self.best_objective = violation, objective
        self._previous = self._snapshot()
        self.evaluate.last = {}
        if (
            self.patience is not None
            and self.found_feasible
            and solver.step - self._start >= self.min_steps
            and solver.step - self._improved_at >= self.patience
        ):
            solver.request_stop("selected")

    def on_fit_end(self, solver: PrimalDual, result: FitResult) -> None:
        if self.rule == "best-feasible" and self.best is not None:
            _unwrap(solver.model).load_state_dict(self.best)
        result.info["selection"] = self.summary()

    def summary(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "selected_step": self.best_step if self.rule == "best-feasible" else None,
            "selected_feasible": self.found_feasible,
            "selected_train_violation": self.best_violation,
            "selected_train_objective": self.best_objective,
            "tolerance": self.tolerance,
        }
