"""Primal recovery: which model to ship from a primal-dual run.

In non-convex problems the last iterate need not be feasible. A :class:`CandidateRecorder`
(a solver callback) keeps a bounded set of parameter snapshots during training and a
running (Polyak) average of the iterates over the last part of the run; :func:`recover`
then returns one of:

- ``"last"``: the final iterate;
- ``"average"``: the Polyak average of the iterates from ``average_from`` on;
- ``"best"``: the candidate that is feasible within tolerance on the validation data with
  the best objective (if none is feasible: the one with the smallest total violation — the
  output says which rule applied);
- ``"mixture"``: a randomized model over candidates whose weights solve a small linear
  program — minimise the expected validation objective subject to the expected constraint
  values being within tolerance (as TFCO and Fairlearn do). It is randomized only when
  asked, and reproducible under its seed.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from eclearn.evaluation import EvaluationReport, evaluate
from eclearn.problem import Problem
from eclearn.solver import Callback, PrimalDual

__all__ = ["Candidate", "CandidateRecorder", "MixtureModel", "Recovered", "recover"]

RULES = ("last", "average", "best", "mixture")


@dataclass
class Candidate:
    step: int
    state: dict[str, Tensor]


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def _snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in _unwrap(model).state_dict().items()}


class CandidateRecorder(Callback):
    """Keep at most ``max_candidates`` snapshots on a regular grid of steps (every ``every``
    steps; when full the spacing doubles and off-grid snapshots are dropped, so the set
    always spans the run so far) and the
    running average of every iterate from step ``average_from`` on (CPU memory)."""

    def __init__(self, every: int = 100, max_candidates: int = 20, average_from: int = 0) -> None:
        if every < 1 or max_candidates < 2:
            raise ValueError("CandidateRecorder: every ≥ 1 and max_candidates ≥ 2 required")
        self.every = every
        self.max_candidates = max_candidates
        self.average_from = average_from
        self.candidates: list[Candidate] = []
        self.average: dict[str, Tensor] | None = None
        self.averaged = 0
        self.last: Candidate | None = None

    def on_step_end(self, solver: PrimalDual) -> None:
        step = solver.step
        if step >= self.average_from:
            params = _unwrap(solver.model).state_dict()
            if self.average is None:
                self.average = {
                    k: v.detach().to("cpu", torch.float64, copy=True)
                    for k, v in params.items()
                    if v.is_floating_point()
                }
                self.averaged = 1
            else:
                self.averaged += 1
                for key, avg in self.average.items():
                    avg.add_((params[key].detach().to("cpu", torch.float64) - avg) / self.averaged)
        if step % self.every == 0:
            self.candidates.append(Candidate(step, _snapshot(solver.model)))
            while len(self.candidates) > self.max_candidates:
                self.every *= 2
                self.candidates = [c for c in self.candidates if c.step % self.every == 0]

    def on_fit_end(self, solver: PrimalDual, result: Any) -> None:
        self.last = Candidate(solver.step, _snapshot(solver.model))

    def state_dict(self) -> dict[str, Any]:
        """Everything to continue recording after a resume (tensors and plain values)."""
        return {
            "every": self.every,
            "averaged": self.averaged,
            "average": self.average,
            "steps": [c.step for c in self.candidates],
            "states": [c.state for c in self.candidates],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.every = int(state["every"])
        self.averaged = int(state["averaged"])
        self.average = state["average"]
        self.candidates = [
            Candidate(int(s), dict(st))
            for s, st in zip(state["steps"], state["states"], strict=True)
        ]

    def average_state(self, template: nn.Module) -> dict[str, Tensor]:
        if self.average is None:
            raise ValueError("no iterate was averaged: average_from is beyond the last step")
        state = _snapshot(template)
        for key, avg in self.average.items():
            state[key] = avg.to(state[key].dtype)
        return state


class MixtureModel(nn.Module):
    """A randomized model: each call (or each row, ``per_sample=True``) is answered by
    candidate ``i`` with probability ``weights[i]``, drawn from a seeded generator so
    predictions are reproducible. ``expected(x)`` gives the weighted average output."""

    def __init__(
        self, models: list[nn.Module], weights: list[float], seed: int = 0, per_sample: bool = True
    ) -> None:
        super().__init__()
        self.members = nn.ModuleList(models)
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float64))
        self.seed = seed
        self.per_sample = per_sample
        self.generator = torch.Generator().manual_seed(seed)

    def reset(self) -> None:
        """Restart the random stream (same seed → same predictions)."""
        self.generator.manual_seed(self.seed)

    def forward(self, x: Tensor) -> Tensor:
        outputs = torch.stack([m(x) for m in self.members])
        rows = x.shape[0] if self.per_sample else 1
        pick = torch.multinomial(self.weights, rows, replacement=True, generator=self.generator)
        if not self.per_sample:
            return outputs[int(pick)]
        index = pick.to(x.device).view(1, rows, *([1] * (outputs.dim() - 2)))
        return outputs.gather(0, index.expand(1, *outputs.shape[1:])).squeeze(0)

    def expected(self, x: Tensor) -> Tensor:
        outputs = torch.stack([m(x) for m in self.members])
        w = self.weights.to(outputs.dtype).view(-1, *([1] * (outputs.dim() - 1)))
        return (w * outputs).sum(0)


@dataclass
class Recovered:
    """The selected model and how it was chosen."""

    model: nn.Module
    rule: str
    description: str
    step: int | None = None
    weights: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    report: EvaluationReport | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "description": self.description,
            "step": self.step,
            "weights": self.weights,
            "steps": self.steps,
            "validation": None if self.report is None else self.report.to_dict(),
        }


def _load(template: nn.Module, state: Mapping[str, Tensor]) -> nn.Module:
    model = copy.deepcopy(_unwrap(template))
    model.load_state_dict(state)
    return model


def _violation_total(report: EvaluationReport) -> float:
    total = 0.0
    for r in report.constraints.values():
        v = r.violation.double()
        excess = (v.abs() if r.kind == "equality" else v.clamp_min(0)) - r.tolerance
        total += float(excess.clamp_min(0).sum())
    return total


def recover(
    problem: Problem,
    model: nn.Module,
    recorder: CandidateRecorder,
    validation_batches: Iterable[Mapping[str, Any]],
    *,
    rule: str = "best",
    tolerance: float | Mapping[str, float] | None = None,
    seed: int = 0,
    inference: bool = True,
) -> Recovered:
    """Select the model to ship (see the module docstring). ``model`` is the trained
    model (the last iterate; also the template the candidates are loaded into)."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    batches = list(validation_batches)
    if rule == "last":
        report = evaluate(problem, model, batches, tolerance=tolerance, inference=inference)
        return Recovered(
            model,
            rule,
            "the last iterate",
            recorder.last.step if recorder.last else None,
            report=report,
        )
    if rule == "average":
        averaged = _load(model, recorder.average_state(model))
        report = evaluate(problem, averaged, batches, tolerance=tolerance, inference=inference)
        return Recovered(
            averaged,
            rule,
            f"the average of the last {recorder.averaged} iterates "
            f"(from step {recorder.average_from})",
            report=report,
        )
    pool = list(recorder.candidates)
    if recorder.last is not None and (not pool or pool[-1].step != recorder.last.step):
        pool.append(recorder.last)
    if not pool:
        raise ValueError("the recorder holds no candidates: pass it to fit(callbacks=[...])")
    models = [_load(model, c.state) for c in pool]
    reports = [
        evaluate(problem, m, batches, tolerance=tolerance, inference=inference) for m in models
    ]
    objectives = [r.objective if r.objective is not None else 0.0 for r in reports]
    if rule == "best":
        feasible = [i for i, r in enumerate(reports) if r.feasible]
        if feasible:
            i = min(feasible, key=lambda j: (objectives[j], -pool[j].step))
            text = (
                f"the candidate with the best validation objective among the {len(feasible)} "
                f"of {len(pool)} feasible within tolerance (step {pool[i].step})"
            )
        else:
            i = min(range(len(pool)), key=lambda j: (_violation_total(reports[j]), objectives[j]))
            text = (
                f"no candidate of {len(pool)} is feasible on validation: the one with the "
                f"smallest total violation beyond tolerance (step {pool[i].step})"
            )
        return Recovered(models[i], rule, text, pool[i].step, report=reports[i])
    weights = _mixture_weights(problem, reports, objectives, tolerance)
    keep = [i for i, w in enumerate(weights) if w > 1e-9]
    kept = [float(weights[i]) for i in keep]
    total = sum(kept)
    kept = [w / total for w in kept]
    mixture = MixtureModel([models[i] for i in keep], kept, seed=seed)
    text = (
        f"a randomized mixture of {len(keep)} of {len(pool)} candidates whose expected "
        "validation constraints are within tolerance, minimising the expected objective"
    )
    return Recovered(mixture, rule, text, None, kept, [pool[i].step for i in keep])


def _mixture_weights(
    problem: Problem,
    reports: list[EvaluationReport],
    objectives: list[float],
    tolerance: float | Mapping[str, float] | None,
) -> np.ndarray:
    """min_w Σ w_i f_i  s.t.  Σ w_i = 1, w ≥ 0, expected constraints within tolerance."""
    try:
        from scipy.optimize import linprog
    except ImportError as err:  # pragma: no cover - scipy is an optional dependency
        raise ImportError("rule='mixture' needs scipy: pip install 'eclearn[stats]'") from err
    n = len(reports)
    rows, bounds = [], []
    for c in problem.average:
        tol = reports[0][c.name].tolerance
        values = np.stack([r[c.name].violation.double().numpy() for r in reports])  # [n, size]
        for j in range(values.shape[1]):
            rows.append(values[:, j])
            bounds.append(tol)
            if c.is_equality:
                rows.append(-values[:, j])
                bounds.append(tol)
    a_ub = np.array(rows) if rows else None
    b_ub = np.array(bounds) if rows else None
    result = linprog(
        np.array(objectives),
        A_ub=a_ub,
        b_ub=b_ub,
        A_eq=np.ones((1, n)),
        b_eq=np.ones(1),
        bounds=[(0, None)] * n,
        method="highs",
    )
    if not result.success:
        raise ValueError(
            "no mixture of the candidates satisfies the constraints on validation within "
            f"tolerance ({result.message}); record more candidates or relax the tolerance"
        )
    return result.x
