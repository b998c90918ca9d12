"""Callbacks: hooks into :meth:`PrimalDual.fit` and :meth:`PrimalDual.train_step`.

A callback overrides the hooks it needs:

- ``on_fit_start(solver)`` / ``on_fit_end(solver, result)``: around one ``fit`` call;
- ``on_evaluation(solver, evaluation)``: after the step's forward pass (and, distributed,
  after the statistics were made global), *before* the primal update — the parameters are
  still those ``evaluation`` measured, and ``evaluation`` holds the step's exact values,
  objective and ``extras`` (what ``evaluate`` returned under ``"extras"``);
- ``on_step_end(solver)``: after the step (``solver.last_step`` is its record);
- ``on_epoch_end(solver)``.

A callback with ``state_dict()`` / ``load_state_dict(state)`` is checkpointed with the
solver: :meth:`PrimalDual.state_dict` stores it under :func:`callback_key` and a callback
with the same key gets its state back when it next starts (resume is exact for it too).
Callbacks see the solver through :class:`SolverView`, the small surface they may rely on.
A plain callable ``fn(solver)`` is called at the end of every step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor, nn

from eclearn.eager import eager_optimizer
from eclearn.problem import Evaluation, Problem

if TYPE_CHECKING:
    from eclearn.history import History
    from eclearn.solver.loop import FitResult

__all__ = [
    "Callback",
    "ObjectiveWarmStart",
    "ProgressBar",
    "SolverView",
    "callback_key",
    "unwrap",
]


class SolverView(Protocol):
    """What a callback may use of the solver."""

    step: int
    model: nn.Module
    problem: Problem
    history: History
    device: torch.device

    @property
    def epoch(self) -> int: ...

    def latest(self) -> dict[str, float]: ...

    def request_stop(self, reason: str = "callback") -> None: ...


class Callback:
    """Base class with empty hooks; see the module docstring."""

    def on_fit_start(self, solver: SolverView) -> None:
        """Before the first step of a ``fit`` (after a resumed callback got its state back)."""

    def on_evaluation(self, solver: SolverView, evaluation: Evaluation) -> None:
        """After the step's forward pass, before the primal update: ``evaluation`` holds the
        step's detached values, exact parts, objective and ``extras``."""

    def on_step_end(self, solver: SolverView) -> None:
        """After the step (primal and dual updates, history row); ``solver.step`` counts it."""

    def on_epoch_end(self, solver: SolverView) -> None:
        """After a pass over the batches (``solver.epoch`` counts it)."""

    def on_fit_end(self, solver: SolverView, result: FitResult) -> None:
        """After the last step of a ``fit``, with its result (selectors set ``selected``)."""


class FunctionCallback(Callback):
    """A plain ``fn(solver)`` called at the end of every step."""

    def __init__(self, fn: Callable[[SolverView], Any]) -> None:
        self.fn = fn

    def on_step_end(self, solver: SolverView) -> None:
        self.fn(solver)


def as_callbacks(items: Sequence[Callback | Callable[[SolverView], Any]]) -> list[Callback]:
    out = []
    for item in items:
        if isinstance(item, Callback):
            out.append(item)
        elif callable(item):
            out.append(FunctionCallback(item))
        else:
            raise TypeError(
                f"callbacks must be ecl.Callback instances or callables fn(solver), got "
                f"{type(item).__name__}"
            )
    return out


def callback_key(callback: Any, taken: Mapping[str, Any] | set[str]) -> str:
    """The checkpoint key of a stateful callback: its ``state_key`` attribute or class name,
    with ``#2``, ``#3``, ... for repeats."""
    base = getattr(callback, "state_key", None) or type(callback).__name__
    key, n = base, 1
    while key in taken:
        n += 1
        key = f"{base}#{n}"
    return key


def stateful(callback: Any) -> bool:
    return callable(getattr(callback, "state_dict", None)) and callable(
        getattr(callback, "load_state_dict", None)
    )


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP / DataParallel / ``torch.compile`` wrappers (the one whose
    ``state_dict`` keys match the plain model)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


class ProgressBar(Callback):
    """tqdm bar (steps, objective, worst violation) when tqdm is installed, else a line every
    10% of the run. The worst violation is the history schema's (:mod:`eclearn.measures`)."""

    def __init__(self, total: int | None) -> None:
        self.total = total
        self.bar: Any = None
        self.every = 1

    def on_fit_start(self, solver: SolverView) -> None:
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover - tqdm is optional
            tqdm = None
        if tqdm is not None:
            self.bar = tqdm(total=self.total, unit="step", dynamic_ncols=True)
        self.every = max(1, (self.total or 1000) // 100)

    def on_step_end(self, solver: SolverView) -> None:
        if self.bar is not None:
            self.bar.update(1)
        if solver.step % self.every:
            return
        text = status(solver)
        if self.bar is not None:
            self.bar.set_postfix(text, refresh=False)
        elif self.total and solver.step % max(1, self.total // 10) == 0:
            print(f"step {solver.step}: {text}", flush=True)

    def on_fit_end(self, solver: SolverView, result: FitResult) -> None:
        if self.bar is not None:
            # A short fit can end inside tqdm's refresh interval; draw the final state once.
            if solver.latest():
                self.bar.set_postfix(status(solver))
            self.bar.close()
            self.bar = None


def status(solver: SolverView) -> dict[str, str]:
    """``{"obj": ..., "max viol": ...}`` of the latest step, as every progress display shows."""
    row = solver.latest()
    return {
        "obj": f"{row.get('objective', math.nan):.4g}",
        "max viol": f"{solver.history.schema.worst_of(row):.3g}",
    }


class ObjectiveWarmStart(Callback):
    """Before the first step (``solver.step == 0``), minimise the objective alone on
    ``batch`` with L-BFGS, so that primal-dual training starts from the unconstrained
    solution (e.g. a convex model's). Its time counts as training time (:attr:`seconds`);
    a resumed fit (``step > 0``) is left alone. Uses only ``evaluate(model, batch)
    ["objective"]`` (the surrogate part of a proxy)."""

    def __init__(self, batch: Mapping[str, Tensor], max_iter: int = 100) -> None:
        self.batch = batch
        self.max_iter = int(max_iter)
        self.seconds = 0.0
        self.done = False

    def on_fit_start(self, solver: SolverView) -> None:
        """Fit the objective alone with L-BFGS when training starts from step 0."""
        if self.done or solver.step > 0 or self.max_iter <= 0:
            return
        began = time.perf_counter()
        model, problem = solver.model, solver.problem
        batch = {
            k: (v.to(solver.device) if isinstance(v, Tensor) else v) for k, v in self.batch.items()
        }
        params = [p for p in model.parameters() if p.requires_grad]
        opt = eager_optimizer(torch.optim.LBFGS)(
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
            loss = problem(model, batch).objective
            if loss is None:
                raise ValueError("ObjectiveWarmStart needs a problem with an objective")
            loss.backward()
            return loss

        opt.step(closure)
        for p in params:
            p.grad = None
        self.done = True
        self.seconds = time.perf_counter() - began
