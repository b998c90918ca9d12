"""Held-out evaluation of the objective and every constraint.

Batches are pooled exactly where the statistic says how (:meth:`Evaluation.sums`):
:class:`~eclearn.Ratio` values pool their numerators and denominators; plain tensors are
treated as means over the batch's rows and pooled weighted by batch size; pointwise
constraints keep every sample's value. With ``exact=True`` an :class:`~eclearn.Proxy` is
judged on its exact part, with ``exact=False`` on its surrogate. Each constraint gets a
feasible/infeasible verdict at a tolerance, on its excess (:mod:`eclearn.measures`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from eclearn.distributed import Communicator
from eclearn.measures import beyond, excess
from eclearn.problem import OBJECTIVE, Problem
from eclearn.statistics import Ratio

__all__ = ["ConstraintReport", "EvaluationReport", "evaluate"]


@dataclass
class ConstraintReport:
    """One constraint on held-out data.

    ``value``/``violation``: ``[size]`` for average constraints (the signed violation); for
    pointwise constraints the per-sample ``[N, size]`` values, summarised in ``extra`` by
    ``mean_excess``, ``max_excess`` (``|v|`` for equalities, ``[v]₊`` for inequalities) and
    ``fraction_satisfied``.
    """

    name: str
    kind: str
    pointwise: bool
    value: Tensor
    violation: Tensor
    tolerance: float
    satisfied: Tensor
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def feasible(self) -> bool:
        """Every component (every sample) within tolerance."""
        return bool(self.satisfied.all())

    @property
    def excess(self) -> Tensor:
        """Per component (or per sample): ``|v|`` for equalities, ``[v]₊`` for inequalities."""
        return excess(self.violation, self.kind == "inequality")

    @property
    def worst_excess(self) -> float:
        """The largest excess over the components (or samples)."""
        return float(self.excess.max()) if self.excess.numel() else 0.0

    @property
    def worst_beyond(self) -> float:
        """How far the worst component lies beyond tolerance (0 when satisfied)."""
        over = beyond(self.violation, self.kind == "inequality", self.tolerance)
        return float(over.max()) if over.numel() else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able description (pointwise: the summaries, not every sample)."""
        out: dict[str, Any] = {
            "kind": self.kind,
            "tolerance": self.tolerance,
            "feasible": self.feasible,
        }
        if self.pointwise:
            out.update(self.extra)
        else:
            out["value"] = self.value.tolist()
            out["violation"] = self.violation.tolist()
        return out


@dataclass
class EvaluationReport:
    objective: float | None
    constraints: dict[str, ConstraintReport]
    num_samples: int

    @property
    def feasible(self) -> bool:
        """Every constraint within tolerance."""
        return all(r.feasible for r in self.constraints.values())

    @property
    def worst_beyond(self) -> float:
        """The largest excess beyond tolerance over all constraints (0 when feasible)."""
        return max((r.worst_beyond for r in self.constraints.values()), default=0.0)

    def __getitem__(self, name: str) -> ConstraintReport:
        return self.constraints[name]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able description."""
        return {
            "objective": self.objective,
            "num_samples": self.num_samples,
            "feasible": self.feasible,
            "constraints": {n: r.to_dict() for n, r in self.constraints.items()},
        }

    def __str__(self) -> str:
        lines = [
            f"objective: {self.objective if self.objective is not None else '—'}"
            f"  ({self.num_samples} samples)"
        ]
        for name, r in self.constraints.items():
            verdict = "feasible" if r.feasible else "INFEASIBLE"
            if r.pointwise:
                detail = (
                    f"max excess={r.extra['max_excess']:.3g} "
                    f"satisfied {r.extra['fraction_satisfied']:.1%}"
                )
            else:
                detail = "violation=" + ", ".join(f"{v:.3g}" for v in r.violation.tolist())
            lines.append(f"{name} ({r.kind}): {detail} → {verdict} at tol {r.tolerance:g}")
        return "\n".join(lines)


def _to(batch: Any, device: torch.device | None) -> Any:
    if device is None:
        return batch
    if isinstance(batch, Mapping):
        return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(v.to(device) if isinstance(v, Tensor) else v for v in batch)
    return batch


def evaluate(
    problem: Problem,
    model: nn.Module,
    batches: Iterable[Any],
    *,
    exact: bool = True,
    tolerance: float | Mapping[str, float] | None = None,
    inference: bool = True,
    device: torch.device | str | None = None,
    distributed: bool = False,
    process_group: Any = None,
) -> EvaluationReport:
    """Objective and constraints of ``model`` over ``batches`` (held-out data).

    ``exact=True`` asks an ``evaluate`` that accepts it for the exact statistics and judges
    proxies on their exact part; ``exact=False`` reports what training differentiates.
    ``tolerance``: one number or ``{name: tol}``; default each constraint's own.
    ``inference=False`` keeps autograd on (for statistics built from input derivatives,
    such as PDE residuals). The model is put in eval mode and restored afterwards.
    With ``distributed=True`` (or a ``process_group``) under ``torch.distributed`` each rank
    passes its own shard and the pooled sums are reduced across ranks: every rank gets the
    full-data report. (Off by default: ranks that each evaluate the whole data must not sum.)
    """
    if isinstance(batches, Mapping):
        raise TypeError(
            "evaluate(batches=...) takes an iterable of dict batches; wrap a single batch in a list"
        )
    dev = torch.device(device) if device is not None else None
    was_training = model.training
    model.eval()
    names = [c.name for c in problem.average]
    # index 0 is the objective, then every average constraint's components
    widths = [1] + [c.size for c in problem.average]
    numerator = torch.zeros(sum(widths), dtype=torch.float64)
    denominator = torch.zeros(sum(widths), dtype=torch.float64)
    has_objective = False
    pointwise: dict[str, list[Tensor]] = {c.name: [] for c in problem.pointwise}
    total = 0
    try:
        context = torch.no_grad() if inference else torch.enable_grad()
        with context:
            for batch in batches:
                ev = problem(model, _to(batch, dev), exact=exact)
                total += ev.batch_size
                nums, dens = [], []
                if ev.objective is not None:
                    has_objective = True
                    num, den = ev.sums(OBJECTIVE, exact=exact)
                else:
                    num = den = torch.zeros(())
                nums.append(num.detach().double().cpu().reshape(-1))
                dens.append(den.detach().double().cpu().reshape(-1))
                for name in names:
                    num, den = ev.sums(name, exact=exact)
                    nums.append(num.detach().double().cpu().reshape(-1))
                    dens.append(den.detach().double().cpu().reshape(-1))
                numerator += torch.cat(nums)
                denominator += torch.cat(dens)
                for c in problem.pointwise:
                    rows = ev.measured(c.name) if exact else ev.values[c.name]
                    pointwise[c.name].append(rows.detach().double().cpu())
    finally:
        model.train(was_training)
    comm = Communicator.detect(process_group) if distributed or process_group is not None else None
    if comm is not None:
        packed = torch.cat(
            [torch.tensor([total, has_objective], dtype=torch.float64), numerator, denominator]
        )
        packed = comm.all_reduce_sum(packed)
        total, has_objective = int(packed[0]), bool(packed[1])
        numerator, denominator = packed[2:].chunk(2)
        for c in problem.pointwise:
            local = (
                torch.cat(pointwise[c.name]).reshape(-1) if pointwise[c.name] else torch.zeros(0)
            )
            lengths = comm.all_reduce_sum(
                torch.nn.functional.one_hot(torch.tensor(comm.rank), comm.world_size).double()
                * local.numel()
            )
            pieces = comm.all_gather_padded(local.double(), [int(n) for n in lengths.tolist()])
            pointwise[c.name] = [torch.cat(pieces).reshape(-1, c.size)]
    if total == 0:
        raise ValueError("evaluate: the batch iterable produced no batches")
    pooled = Ratio(numerator, denominator).value
    reports: dict[str, ConstraintReport] = {}
    offset = 1
    starts = {}
    for c in problem.average:
        starts[c.name] = offset
        offset += c.size
    for c in problem.constraints:
        tol = c.tolerance_for(tolerance)
        if c.pointwise:
            value = torch.cat(pointwise[c.name])
            violation = c.violation(value)
            satisfied = c.satisfied(violation, tol)
            measured = excess(violation, not c.is_equality)
            extra = {
                "mean_excess": float(measured.mean()),
                "max_excess": float(measured.max()),
                "fraction_satisfied": float(satisfied.double().mean()),
                "num_samples": int(value.shape[0]),
            }
        else:
            value = pooled[starts[c.name] : starts[c.name] + c.size]
            violation = c.violation(value)
            satisfied = c.satisfied(violation, tol)
            extra = {}
        reports[c.name] = ConstraintReport(
            c.name, c.kind, c.pointwise, value, violation, tol, satisfied, extra
        )
    objective = float(pooled[0]) if has_objective else None
    if objective is not None and not math.isfinite(objective):
        objective = float("nan")
    return EvaluationReport(objective, reports, total)
