"""Which model to ship from a primal-dual run: one mechanism, one definition of "best".

In non-convex or stochastic problems the last iterate need not be feasible (rate
constraints make it oscillate around the solution). A *selector* is a solver callback that
watches the run and, when ``fit`` ends, puts its choice in ``FitResult.selected``
(a :class:`Selected`):

- :class:`Last` — the final iterate;
- :class:`BestFeasible` — the best feasible iterate: feasible (every constraint's excess
  within its tolerance, :mod:`eclearn.measures`) beats infeasible; among feasible ones the
  lower objective wins, among infeasible ones the smaller worst excess beyond tolerance
  (:func:`eclearn.measures.feasibility_key`). It judges either the **training steps**
  (``on="steps"``: the exact values of each step's own forward pass, free — meaningful for
  full-batch or large batches) or **named held-out batches** (``on=validation_batches``,
  evaluated every ``every`` steps with :func:`eclearn.evaluate`). It copies the parameters
  only when the key improves;
- :class:`Average` — the Polyak average of the iterates from ``from_step`` on;
- :class:`Mixture` — a randomized model over a grid of candidates whose weights solve a
  small linear program: minimise the expected validation objective subject to the
  expected constraint values being within tolerance (as TFCO and Fairlearn do).

**Selection never looks at test data.** Rules that judge held-out data need ``on=`` named
explicitly; carve a validation split out of the *training* data for it, and report
``Selected.data`` (which data chose the model). Every selector has ``state_dict`` /
``load_state_dict``, so the solver's checkpoints include it and a resumed run selects
exactly as an uninterrupted one. :class:`~eclearn.Patience` stops a fit once a
:class:`BestFeasible` has not improved for a number of steps.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from eclearn.evaluation import EvaluationReport, evaluate
from eclearn.measures import beyond, feasibility_key
from eclearn.problem import Evaluation, Problem
from eclearn.solver.callbacks import Callback, SolverView, unwrap

__all__ = [
    "Average",
    "BestFeasible",
    "Last",
    "Mixture",
    "MixtureModel",
    "Selected",
    "Selector",
    "mixture_weights",
    "step_key",
]


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    """A CPU copy of the (unwrapped) model's state."""
    return {k: v.detach().to("cpu", copy=True) for k, v in unwrap(model).state_dict().items()}


def load_copy(template: nn.Module, state: Mapping[str, Tensor]) -> nn.Module:
    model = copy.deepcopy(unwrap(template))
    model.load_state_dict(state)
    return model


@dataclass
class Selected:
    """The model a selector chose and how.

    ``state``: the parameters to load (None for a mixture, whose ``model`` is a
    :class:`MixtureModel`); ``rule``; ``step`` (the iterate's step; None for averages and
    mixtures); ``data``: which data chose it (``"training steps"`` or the validation data's
    label); ``feasible``; ``objective`` and ``worst_beyond`` as measured on that data;
    ``description``: one sentence.
    """

    rule: str
    description: str
    data: str
    state: dict[str, Tensor] | None = None
    model: nn.Module | None = None
    step: int | None = None
    feasible: bool | None = None
    objective: float | None = None
    worst_beyond: float | None = None
    weights: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    report: EvaluationReport | None = None

    def load_into(self, model: nn.Module) -> nn.Module:
        """Put the selected parameters into ``model`` (returns it; a mixture returns itself)."""
        if self.state is None:
            if self.model is None:
                raise ValueError(f"the {self.rule!r} selection holds no model")
            return self.model
        unwrap(model).load_state_dict(self.state)
        return model

    def to_dict(self) -> dict[str, Any]:
        """Plain description (JSON-able; the parameters are not included)."""
        return {
            "rule": self.rule,
            "description": self.description,
            "data": self.data,
            "step": self.step,
            "feasible": self.feasible,
            "objective": self.objective,
            "worst_beyond": self.worst_beyond,
            "weights": self.weights,
            "steps": self.steps,
        }


def step_key(
    problem: Problem, ev: Evaluation, tolerance: float | Mapping[str, float] | None = None
) -> tuple[Tensor, Tensor]:
    """(objective, worst excess beyond tolerance) of one step's measured values, as two
    0-dim float64 tensors (no host synchronisation)."""
    parts = []
    for c in problem.constraints:
        value = ev.measured(c.name)
        over = beyond(c.violation(value.double()), not c.is_equality, c.tolerance_for(tolerance))
        parts.append(over.max().reshape(1))
    objective = ev.measured_objective
    obj = (
        torch.zeros((), dtype=torch.float64)
        if objective is None
        else objective.detach().double().reshape(())
    )
    worst = torch.cat(parts).max() if parts else torch.zeros((), dtype=torch.float64)
    return obj, worst.to(obj.device)


class Selector(Callback):
    """Base of the selectors: a callback that, when ``fit`` ends, sets
    ``FitResult.selected`` (and with ``restore=True`` loads the choice into the model)."""

    rule = ""

    def __init__(self, restore: bool = False) -> None:
        self.restore = bool(restore)
        self.selected: Selected | None = None

    def choose(self, solver: SolverView) -> Selected:
        """The selection at the end of a fit (called by ``on_fit_end``)."""
        raise NotImplementedError

    def on_fit_end(self, solver: SolverView, result: Any) -> None:
        self.selected = self.choose(solver)
        result.selected = self.selected
        result.info["selection"] = self.selected.to_dict()
        if self.restore and self.selected.state is not None:
            self.selected.load_into(solver.model)

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to select exactly as an uninterrupted one."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (the solver does it when the selector starts)."""


class Last(Selector):
    """The final iterate."""

    rule = "last"

    def choose(self, solver: SolverView) -> Selected:
        return Selected(
            "last", "the last iterate", "none", snapshot(solver.model), step=solver.step
        )


class BestFeasible(Selector):
    """The best feasible iterate, judged on the training steps or on named held-out batches.

    ``on="steps"``: each step's own exact values and objective (the parameters *before*
    that step's update; one host synchronisation per step). ``on=<batches>``: evaluated
    every ``every`` steps and at the end of the fit with :func:`eclearn.evaluate`
    (``inference=False`` for statistics that need autograd); ``label`` names that data in
    the result (default ``"validation"``). ``tolerance`` overrides the constraints' own
    (one number or ``{name: tol}``). An improvement by less than ``min_delta`` (objective,
    or worst excess while none is feasible) does not reset :attr:`improved_at`, which
    :class:`~eclearn.Patience` reads.
    """

    rule = "best"

    def __init__(
        self,
        on: str | Iterable[Any],
        *,
        every: int = 100,
        tolerance: float | Mapping[str, float] | None = None,
        min_delta: float = 1e-4,
        label: str | None = None,
        inference: bool = True,
        restore: bool = False,
    ) -> None:
        super().__init__(restore)
        if isinstance(on, str):
            if on != "steps":
                raise ValueError(
                    f"BestFeasible(on={on!r}): on must be 'steps' or an iterable of held-out "
                    "batches (a validation split of the training data, never the test split)"
                )
            self.batches: list[Any] | None = None
        else:
            self.batches = list(on)
            if not self.batches:
                raise ValueError("BestFeasible(on=...): the validation batches are empty")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"BestFeasible every must be an int ≥ 1, got {every!r}")
        if not (math.isfinite(min_delta) and min_delta >= 0):
            raise ValueError(f"BestFeasible min_delta must be ≥ 0, got {min_delta!r}")
        self.every = every
        self.tolerance = tolerance
        self.min_delta = float(min_delta)
        self.label = label or ("training steps" if self.batches is None else "validation")
        self.inference = inference
        self.reset()

    def reset(self) -> None:
        """Forget every iterate judged so far."""
        self.best: dict[str, Tensor] | None = None
        self.best_step: int | None = None
        self.best_key: tuple[int, float] | None = None
        self.best_objective = math.nan
        self.best_beyond = math.nan
        self.improved_at = 0
        self.evaluations = 0

    @property
    def found_feasible(self) -> bool:
        """Whether a feasible iterate has been seen."""
        return self.best_key is not None and self.best_key[0] == 0

    def _offer(self, solver: SolverView, objective: float | None, worst: float, step: int) -> None:
        key = feasibility_key(worst, objective)
        self.evaluations += 1
        if self.best_key is not None and not key < self.best_key:
            return
        if (
            self.best_key is None
            or key[0] < self.best_key[0]
            or key[1] < self.best_key[1] - self.min_delta
        ):
            self.improved_at = step
        self.best_key = key
        self.best = snapshot(solver.model)
        self.best_step = step
        self.best_objective = math.nan if objective is None else float(objective)
        self.best_beyond = float(worst)

    def on_evaluation(self, solver: SolverView, evaluation: Evaluation) -> None:
        if self.batches is not None:
            return
        obj, worst = step_key(solver.problem, evaluation, self.tolerance)
        numbers = torch.stack([obj, worst]).tolist()
        has_objective = evaluation.measured_objective is not None
        self._offer(solver, numbers[0] if has_objective else None, numbers[1], solver.step)

    def _validate(self, solver: SolverView) -> None:
        assert self.batches is not None
        report = evaluate(
            solver.problem,
            solver.model,
            self.batches,
            tolerance=self.tolerance,
            inference=self.inference,
        )
        self._offer(solver, report.objective, report.worst_beyond, solver.step)

    def on_step_end(self, solver: SolverView) -> None:
        if self.batches is not None and solver.step % self.every == 0:
            self._validate(solver)

    def choose(self, solver: SolverView) -> Selected:
        if self.batches is not None and self.best_step != solver.step:
            self._validate(solver)  # the last iterate is a candidate too
        if self.best is None:
            return Selected(
                "best",
                "no iterate was judged (no step taken): the current model",
                self.label,
                snapshot(solver.model),
                step=solver.step,
            )
        feasible = self.found_feasible
        if feasible:
            text = (
                f"the feasible iterate with the best objective on the {self.label} "
                f"(step {self.best_step}, objective {self.best_objective:.6g})"
            )
        else:
            text = (
                f"no iterate was feasible on the {self.label}: the one whose worst constraint "
                f"lies least beyond tolerance (step {self.best_step}, by {self.best_beyond:.3g})"
            )
        return Selected(
            "best",
            text,
            self.label,
            self.best,
            step=self.best_step,
            feasible=feasible,
            objective=None if math.isnan(self.best_objective) else self.best_objective,
            worst_beyond=self.best_beyond,
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "best_step": self.best_step,
            "best_key": None if self.best_key is None else list(self.best_key),
            "best_objective": self.best_objective,
            "best_beyond": self.best_beyond,
            "improved_at": self.improved_at,
            "evaluations": self.evaluations,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = None if state["best"] is None else dict(state["best"])
        self.best_step = state["best_step"]
        key = state["best_key"]
        self.best_key = None if key is None else (int(key[0]), float(key[1]))
        self.best_objective = float(state["best_objective"])
        self.best_beyond = float(state["best_beyond"])
        self.improved_at = int(state["improved_at"])
        self.evaluations = int(state["evaluations"])


class Average(Selector):
    """The running (Polyak) average of the iterates from step ``from_step`` on (float64 on
    the CPU); with ``on=<batches>`` its report on that data is attached."""

    rule = "average"

    def __init__(
        self,
        from_step: int = 0,
        *,
        on: Iterable[Any] | None = None,
        label: str = "validation",
        inference: bool = True,
        restore: bool = False,
    ) -> None:
        super().__init__(restore)
        if isinstance(from_step, bool) or not isinstance(from_step, int) or from_step < 0:
            raise ValueError(f"Average from_step must be an int ≥ 0, got {from_step!r}")
        self.from_step = from_step
        self.batches = None if on is None else list(on)
        self.label = label if on is not None else "none"
        self.inference = inference
        self.average: dict[str, Tensor] | None = None
        self.count = 0

    def on_step_end(self, solver: SolverView) -> None:
        if solver.step < self.from_step:
            return
        params = unwrap(solver.model).state_dict()
        if self.average is None:
            self.average = {
                k: v.detach().to("cpu", torch.float64, copy=True)
                for k, v in params.items()
                if v.is_floating_point()
            }
            self.count = 1
            return
        self.count += 1
        for key, avg in self.average.items():
            avg.add_((params[key].detach().to("cpu", torch.float64) - avg) / self.count)

    def choose(self, solver: SolverView) -> Selected:
        if self.average is None:
            raise ValueError(
                f"Average(from_step={self.from_step}): no iterate was averaged (the run ended at "
                f"step {solver.step}); lower from_step"
            )
        state = snapshot(solver.model)
        for key, avg in self.average.items():
            state[key] = avg.to(state[key].dtype)
        report = None
        if self.batches is not None:
            report = evaluate(
                solver.problem,
                load_copy(solver.model, state),
                self.batches,
                inference=self.inference,
            )
        return Selected(
            "average",
            f"the average of the last {self.count} iterates (from step {self.from_step})",
            self.label,
            state,
            feasible=None if report is None else report.feasible,
            objective=None if report is None else report.objective,
            worst_beyond=None if report is None else report.worst_beyond,
            report=report,
        )

    def state_dict(self) -> dict[str, Any]:
        return {"average": self.average, "count": self.count}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.average = None if state["average"] is None else dict(state["average"])
        self.count = int(state["count"])


class MixtureModel(nn.Module):
    """A randomized model: each call (or each row, ``per_sample=True``) is answered by
    candidate ``i`` with probability ``weights[i]``, drawn from a seeded generator so
    predictions are reproducible. ``expected(x)`` gives the weighted average output."""

    weights: Tensor

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
        """The weighted average of the members' outputs (the mixture's expected prediction)."""
        outputs = torch.stack([m(x) for m in self.members])
        w = self.weights.to(outputs.dtype).view(-1, *([1] * (outputs.dim() - 1)))
        return (w * outputs).sum(0)


def mixture_weights(
    problem: Problem, reports: list[EvaluationReport], objectives: list[float]
) -> np.ndarray:
    """min_w Σ w_i f_i  s.t.  Σ w_i = 1, w ≥ 0, expected average constraints within their
    reports' tolerances (equalities from both sides; ``≥`` inequalities via the signed
    violation)."""
    try:
        from scipy.optimize import linprog
    except ImportError as err:  # pragma: no cover - scipy is an optional dependency
        raise ImportError("a mixture selection needs scipy: pip install 'eclearn[stats]'") from err
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
    result = linprog(
        np.array(objectives),
        A_ub=np.array(rows) if rows else None,
        b_ub=np.array(bounds) if rows else None,
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


class Mixture(Selector):
    """A randomized mixture of candidates (see the module docstring). Candidates are taken
    every ``every`` steps and judged on ``on`` when taken; at most ``keep`` are kept (when
    full, the spacing doubles and off-grid candidates are dropped, so they span the run).
    The last iterate is a candidate too. ``seed`` makes predictions reproducible."""

    rule = "mixture"

    def __init__(
        self,
        on: Iterable[Any],
        *,
        every: int = 100,
        keep: int = 20,
        seed: int = 0,
        label: str = "validation",
        inference: bool = True,
    ) -> None:
        super().__init__(False)
        if isinstance(on, str):
            raise ValueError("Mixture(on=...) needs held-out batches (a validation split)")
        self.batches = list(on)
        if every < 1 or keep < 2:
            raise ValueError("Mixture: every ≥ 1 and keep ≥ 2 required")
        self.every, self.keep, self.seed = every, keep, seed
        self.label, self.inference = label, inference
        self.candidates: list[tuple[int, dict[str, Tensor], EvaluationReport]] = []

    def _take(self, solver: SolverView) -> None:
        report = evaluate(solver.problem, solver.model, self.batches, inference=self.inference)
        self.candidates.append((solver.step, snapshot(solver.model), report))
        while len(self.candidates) > self.keep:
            self.every *= 2
            self.candidates = [c for c in self.candidates if c[0] % self.every == 0]

    def on_step_end(self, solver: SolverView) -> None:
        if solver.step % self.every == 0:
            self._take(solver)

    def choose(self, solver: SolverView) -> Selected:
        if not self.candidates or self.candidates[-1][0] != solver.step:
            self._take(solver)
        reports = [c[2] for c in self.candidates]
        objectives = [r.objective if r.objective is not None else 0.0 for r in reports]
        weights = mixture_weights(solver.problem, reports, objectives)
        keep = [i for i, w in enumerate(weights) if w > 1e-9]
        total = float(sum(weights[i] for i in keep))
        kept = [float(weights[i]) / total for i in keep]
        models = [load_copy(solver.model, self.candidates[i][1]) for i in keep]
        return Selected(
            "mixture",
            f"a randomized mixture of {len(keep)} of {len(self.candidates)} candidates whose "
            f"expected constraints on the {self.label} are within tolerance, minimising the "
            "expected objective",
            self.label,
            model=MixtureModel(models, kept, seed=self.seed),
            feasible=True,
            objective=float(sum(w * objectives[i] for w, i in zip(kept, keep, strict=True))),
            weights=kept,
            steps=[self.candidates[i][0] for i in keep],
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "every": self.every,
            "steps": [c[0] for c in self.candidates],
            "states": [c[1] for c in self.candidates],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores the candidates; their validation reports are recomputed from the states."""
        self.every = int(state["every"])
        self.candidates = []
        self._pending = list(zip(state["steps"], state["states"], strict=True))

    def on_fit_start(self, solver: SolverView) -> None:
        pending = getattr(self, "_pending", None)
        if pending:
            for step, params in pending:
                model = load_copy(solver.model, params)
                report = evaluate(solver.problem, model, self.batches, inference=self.inference)
                self.candidates.append((int(step), dict(params), report))
            self._pending = []
