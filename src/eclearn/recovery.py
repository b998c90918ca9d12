"""Deprecated: primal recovery after the fit. Use :mod:`eclearn.selection` (``ecl.select``).

``CandidateRecorder`` + ``recover(...)`` chose the model to ship after training on
validation data; :mod:`eclearn.selection` does the same with one set of selectors that run
during the fit (``fit(select=ecl.select.BestFeasible(on=val_batches))``) and resume exactly.
These names keep working for one release and warn.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from eclearn.evaluation import EvaluationReport, evaluate
from eclearn.measures import feasibility_key
from eclearn.problem import Problem
from eclearn.selection import MixtureModel, load_copy, mixture_weights, snapshot
from eclearn.solver.callbacks import Callback, SolverView, unwrap

__all__ = ["Candidate", "CandidateRecorder", "MixtureModel", "Recovered", "recover"]

RULES = ("last", "average", "best", "mixture")


def _deprecated(old: str, new: str) -> None:
    warnings.warn(
        f"ecl.{old} is deprecated and will be removed in eclearn 0.3; use {new}",
        DeprecationWarning,
        stacklevel=3,
    )


@dataclass
class Candidate:
    step: int
    state: dict[str, Tensor]


class CandidateRecorder(Callback):
    """Deprecated (use ``ecl.select``): snapshots on a doubling grid plus a running average."""

    def __init__(self, every: int = 100, max_candidates: int = 20, average_from: int = 0) -> None:
        _deprecated("CandidateRecorder", "ecl.select.BestFeasible / Average / Mixture")
        if every < 1 or max_candidates < 2:
            raise ValueError("CandidateRecorder: every ≥ 1 and max_candidates ≥ 2 required")
        self.every = every
        self.max_candidates = max_candidates
        self.average_from = average_from
        self.candidates: list[Candidate] = []
        self.average: dict[str, Tensor] | None = None
        self.averaged = 0
        self.last: Candidate | None = None

    def on_step_end(self, solver: SolverView) -> None:
        """Snapshot on the grid and update the running average."""
        step = solver.step
        if step >= self.average_from:
            params = unwrap(solver.model).state_dict()
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
            self.candidates.append(Candidate(step, snapshot(solver.model)))
            while len(self.candidates) > self.max_candidates:
                self.every *= 2
                self.candidates = [c for c in self.candidates if c.step % self.every == 0]

    def on_fit_end(self, solver: SolverView, result: Any) -> None:
        """Keep the last iterate."""
        self.last = Candidate(solver.step, snapshot(solver.model))

    def state_dict(self) -> dict[str, Any]:
        """Snapshots and average, for checkpoints."""
        return {
            "every": self.every,
            "averaged": self.averaged,
            "average": self.average,
            "steps": [c.step for c in self.candidates],
            "states": [c.state for c in self.candidates],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.every = int(state["every"])
        self.averaged = int(state["averaged"])
        self.average = state["average"]
        self.candidates = [
            Candidate(int(s), dict(st))
            for s, st in zip(state["steps"], state["states"], strict=True)
        ]

    def average_state(self, template: nn.Module) -> dict[str, Tensor]:
        """The averaged parameters as a state dict of ``template``'s layout."""
        if self.average is None:
            raise ValueError("no iterate was averaged: average_from is beyond the last step")
        state = snapshot(template)
        for key, avg in self.average.items():
            state[key] = avg.to(state[key].dtype)
        return state


@dataclass
class Recovered:
    """Deprecated (see :class:`eclearn.select.Selected`): the recovered model."""

    model: nn.Module
    rule: str
    description: str
    step: int | None = None
    weights: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    report: EvaluationReport | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able description."""
        return {
            "rule": self.rule,
            "description": self.description,
            "step": self.step,
            "weights": self.weights,
            "steps": self.steps,
            "validation": None if self.report is None else self.report.to_dict(),
        }


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
    """Deprecated (use ``fit(select=ecl.select...)``): choose among a recorder's candidates on
    validation data with the same rule as :class:`eclearn.select.BestFeasible`."""
    _deprecated("recover", "fit(select=ecl.select.BestFeasible(on=validation_batches))")
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    batches = list(validation_batches)

    def judge(m: nn.Module) -> EvaluationReport:
        return evaluate(problem, m, batches, tolerance=tolerance, inference=inference)

    if rule == "last":
        step = recorder.last.step if recorder.last else None
        return Recovered(model, rule, "the last iterate", step, report=judge(model))
    if rule == "average":
        averaged = load_copy(model, recorder.average_state(model))
        text = f"the average of the last {recorder.averaged} iterates (from step {recorder.average_from})"
        return Recovered(averaged, rule, text, report=judge(averaged))
    pool = list(recorder.candidates)
    if recorder.last is not None and (not pool or pool[-1].step != recorder.last.step):
        pool.append(recorder.last)
    if not pool:
        raise ValueError("the recorder holds no candidates: pass it to fit(callbacks=[...])")
    models = [load_copy(model, c.state) for c in pool]
    reports = [judge(m) for m in models]
    objectives = [r.objective if r.objective is not None else 0.0 for r in reports]
    if rule == "best":
        i = min(
            range(len(pool)),
            key=lambda j: (
                feasibility_key(reports[j].worst_beyond, reports[j].objective),
                -pool[j].step,
            ),
        )
        if reports[i].feasible:
            feasible = sum(r.feasible for r in reports)
            text = (
                f"the candidate with the best validation objective among the {feasible} of "
                f"{len(pool)} feasible within tolerance (step {pool[i].step})"
            )
        else:
            text = (
                f"no candidate of {len(pool)} is feasible on validation: the one whose worst "
                f"constraint lies least beyond tolerance (step {pool[i].step})"
            )
        return Recovered(models[i], rule, text, pool[i].step, report=reports[i])
    weights = mixture_weights(problem, reports, objectives)
    keep = [i for i, w in enumerate(weights) if w > 1e-9]
    total = sum(float(weights[i]) for i in keep)
    kept = [float(weights[i]) / total for i in keep]
    mixture = MixtureModel([models[i] for i in keep], kept, seed=seed)
    text = (
        f"a randomized mixture of {len(keep)} of {len(pool)} candidates whose expected "
        "validation constraints are within tolerance, minimising the expected objective"
    )
    return Recovered(mixture, rule, text, None, kept, [pool[i].step for i in keep])
