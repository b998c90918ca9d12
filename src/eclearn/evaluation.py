"""Held-out evaluation of the objective and every constraint.

Batches are pooled exactly where the statistic says how: :class:`~eclearn.Ratio` values
pool their numerators and denominators; plain tensors are treated as means over the
batch's rows and pooled weighted by batch size; pointwise constraints keep every sample's
value. Each constraint gets a feasible/infeasible verdict at a tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from eclearn.distributed import Communicator
from eclearn.problem import Problem
from eclearn.ratio import Ratio

__all__ = ["ConstraintReport", "EvaluationReport", "evaluate"]


@dataclass
class ConstraintReport:
    """One constraint on held-out data.

    ``value``/``violation``: ``[size]`` for average constraints; for pointwise constraints
    the per-sample ``[N, size]`` values, summarised by ``mean_abs_violation``,
    ``max_abs_violation`` and ``fraction_satisfied``.
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
        return bool(self.satisfied.all())

    def to_dict(self) -> dict[str, Any]:
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
        return all(r.feasible for r in self.constraints.values())

    def __getitem__(self, name: str) -> ConstraintReport:
        return self.constraints[name]

    def to_dict(self) -> dict[str, Any]:
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
                    f"max|v|={r.extra['max_abs_violation']:.3g} "
                    f"satisfied {r.extra['fraction_satisfied']:.1%}"
                )
            else:
                detail = "violation=" + ", ".join(f"{v:.3g}" for v in r.violation.tolist())
            lines.append(f"{name} ({r.kind}): {detail} → {verdict} at tol {r.tolerance:g}")
        return "\n".join(lines)


def _to(batch: Mapping[str, Any], device: torch.device | None) -> dict[str, Any]:
    if device is None:
        return dict(batch)
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}


def evaluate(
    problem: Problem,
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    *,
    exact: bool = True,
    tolerance: float | Mapping[str, float] | None = None,
    inference: bool = True,
    device: torch.device | str | None = None,
    distributed: bool = False,
    process_group: Any = None,
) -> EvaluationReport:
    """Objective and constraints of ``model`` over ``batches`` (held-out data).

    ``exact=True`` asks an ``evaluate`` that accepts it for the exact statistics.
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
    objective_sum, objective_weight = 0.0, 0.0
    has_objective = False
    sums: dict[str, Tensor] = {}
    weights: dict[str, Tensor] = {}
    pointwise: dict[str, list[Tensor]] = {c.name: [] for c in problem.pointwise}
    total = 0
    try:
        context = torch.no_grad() if inference else torch.enable_grad()
        with context:
            for batch in batches:
                ev = problem(model, _to(batch, dev), exact=exact)
                size = ev.batch_size
                total += size
                if ev.objective is not None:
                    has_objective = True
                    if "objective" in ev.ratios:  # pooled by its sums, like constraints
                        objective_sum += float(ev.ratios["objective"].numerator.detach())
                        objective_weight += float(ev.ratios["objective"].denominator.detach())
                    else:
                        objective_sum += float(ev.objective.detach()) * size
                        objective_weight += size
                for c in problem.average:
                    if c.name in ev.ratios:
                        num = ev.ratios[c.name].numerator.detach().double().cpu()
                        den = ev.ratios[c.name].denominator.detach().double().cpu()
                    else:
                        num = ev.values[c.name].detach().double().cpu() * size
                        den = torch.full_like(num, float(size))
                    sums[c.name] = sums.get(c.name, 0) + num
                    weights[c.name] = weights.get(c.name, 0) + den
                for c in problem.pointwise:
                    pointwise[c.name].append(ev.values[c.name].detach().double().cpu())
    finally:
        model.train(was_training)
    comm = Communicator.detect(process_group) if distributed or process_group is not None else None
    if comm is not None:
        names = [c.name for c in problem.average]
        packed = torch.cat(
            [
                torch.tensor(
                    [objective_sum, objective_weight, total, has_objective], dtype=torch.float64
                )
            ]
            + [torch.as_tensor(sums[n]).reshape(-1) for n in names]
            + [torch.as_tensor(weights[n]).reshape(-1) for n in names]
        )
        packed = comm.all_reduce_sum(packed)
        objective_sum, objective_weight = float(packed[0]), float(packed[1])
        total, has_objective = int(packed[2]), bool(packed[3])
        offset = 4
        for store in (sums, weights):
            for c in problem.average:
                store[c.name] = packed[offset : offset + c.size]
                offset += c.size
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
    reports: dict[str, ConstraintReport] = {}
    for c in problem.constraints:
        tol = c.tolerance_for(tolerance)
        if c.pointwise:
            value = torch.cat(pointwise[c.name])
            violation = c.violation(value)
            satisfied = c.satisfied(violation, tol)
            extra = {
                "mean_abs_violation": float(violation.abs().mean()),
                "max_abs_violation": float(violation.abs().max()),
                "fraction_satisfied": float(satisfied.double().mean()),
                "num_samples": int(value.shape[0]),
            }
        else:
            value = Ratio(sums[c.name], weights[c.name]).value
            violation = c.violation(value)
            satisfied = c.satisfied(violation, tol)
            extra = {}
        reports[c.name] = ConstraintReport(
            c.name, c.kind, c.pointwise, value, violation, tol, satisfied, extra
        )
    objective = objective_sum / objective_weight if has_objective else None
    if objective is not None and not math.isfinite(objective):
        objective = float("nan")
    return EvaluationReport(objective, reports, total)
