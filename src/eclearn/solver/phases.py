"""Primal optimizers in phases: e.g. Adam for N steps, then L-BFGS, in one run.

The paper's Algorithm 1 needs an approximate minimiser of each Lagrangian problem. A cheap
first-order optimizer brings the model near a good region; a strong oracle (L-BFGS with a
line search, a few inner iterations per dual step) then solves each Lagrangian problem
accurately — the recipe of the best constrained-PINN results. :class:`Phases` is one
``torch.optim.Optimizer`` that delegates to the phase of the current step, so
``PrimalDual`` trains through the switch without the user writing two loops, and a
checkpoint holds the phase index and every phase's state (resume across the switch is
exact)::

    adam = torch.optim.Adam(model.parameters(), lr=1e-3)
    lbfgs = torch.optim.LBFGS(model.parameters(), max_iter=20, line_search_fn="strong_wolfe")
    solver = ecl.PrimalDual(problem, model, ecl.Phases([(adam, 5000), (lbfgs, None)]))

A phase's length counts ``step()`` calls (solver steps); the last phase may be unbounded
(``None``). For L-BFGS one step is one inner solve: ``max_iter`` iterations, stopped early
by ``tolerance_grad`` (gradient norm) or ``tolerance_change`` (decrease of the Lagrangian).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from eclearn.eager import algorithm_name

__all__ = ["Phases"]


def _is_closure_optimizer(optimizer: torch.optim.Optimizer) -> bool:
    return isinstance(optimizer, torch.optim.LBFGS) or bool(
        getattr(optimizer, "requires_closure", False)
    )


class Phases(torch.optim.Optimizer):
    """Run ``phases[0]`` for its number of steps, then ``phases[1]``, and so on.

    ``phases``: ``(optimizer, steps)`` pairs over the same parameters, with the same number
    of parameter groups (the history records one learning rate per group); ``steps`` is an
    int ≥ 1, or None for the last phase (runs until the fit ends).
    """

    def __init__(self, phases: Sequence[tuple[torch.optim.Optimizer, int | None]]) -> None:
        # torch.optim.Optimizer.__init__ is not called: the parameter groups and state are
        # the current phase's, not copies.
        if not phases:
            raise ValueError("Phases needs at least one (optimizer, steps) pair")
        checked: list[tuple[torch.optim.Optimizer, int | None]] = []
        for i, entry in enumerate(phases):
            if not (isinstance(entry, (tuple, list)) and len(entry) == 2):
                raise TypeError(f"Phases entry {i} must be an (optimizer, steps) pair")
            optimizer, steps = entry
            if not isinstance(optimizer, torch.optim.Optimizer):
                raise TypeError(
                    f"Phases entry {i}: expected a torch.optim.Optimizer, got "
                    f"{type(optimizer).__name__}"
                )
            last = i == len(phases) - 1
            if steps is None and not last:
                raise ValueError(f"Phases entry {i}: only the last phase may have steps=None")
            if steps is not None and (
                isinstance(steps, bool) or not isinstance(steps, int) or steps < 1
            ):
                raise ValueError(
                    f"Phases entry {i}: steps must be an int ≥ 1 or None, got {steps!r}"
                )
            checked.append((optimizer, steps))
        groups = {len(opt.param_groups) for opt, _ in checked}
        if len(groups) != 1:
            raise ValueError(
                "every phase must have the same number of parameter groups (the history has "
                f"one learning-rate column per group); got {sorted(groups)}"
            )
        params = [{id(p) for g in opt.param_groups for p in g["params"]} for opt, _ in checked]
        if any(p != params[0] for p in params[1:]):
            raise ValueError("every phase must optimise the same parameters")
        self.phases = checked
        self.steps_taken = 0
        self._optimizer_step_pre_hooks: dict[int, Callable[..., Any]] = {}
        self._optimizer_step_post_hooks: dict[int, Callable[..., Any]] = {}

    # ----------------------------------------------------------- which phase
    @property
    def index(self) -> int:
        """The phase the next ``step()`` uses."""
        boundary = 0
        for i, (_, steps) in enumerate(self.phases):
            if steps is None:
                return i
            boundary += steps
            if self.steps_taken < boundary:
                return i
        return len(self.phases) - 1

    @property
    def current(self) -> torch.optim.Optimizer:
        """The optimizer of the current phase."""
        return self.phases[self.index][0]

    @property
    def requires_closure(self) -> bool:
        """True while the current phase needs a closure (L-BFGS)."""
        return _is_closure_optimizer(self.current)

    # ----------------------------------------------------------- optimizer protocol
    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        """The current phase's parameter groups (learning rates live there)."""
        return self.current.param_groups

    @property
    def state(self) -> Any:  # type: ignore[override]
        """The current phase's per-parameter state."""
        return self.current.state

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        """The current phase's default hyper-parameters."""
        return self.current.defaults

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step of the current phase's optimizer."""
        optimizer = self.current
        result = optimizer.step(closure) if closure is not None else optimizer.step()
        self.steps_taken += 1
        return result

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients (through the current phase's optimizer)."""
        self.current.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        raise TypeError("add parameter groups to the phases' own optimizers, not to Phases")

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps_taken": self.steps_taken,
            "phases": [opt.state_dict() for opt, _ in self.phases],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("phases") if isinstance(state_dict, dict) else None
        if not isinstance(saved, list) or len(saved) != len(self.phases):
            raise ValueError(
                "Phases.load_state_dict: the state holds "
                f"{len(saved) if isinstance(saved, list) else 'no'} phases, this optimizer "
                f"has {len(self.phases)}; build the same phases before loading"
            )
        for (optimizer, _), state in zip(self.phases, saved, strict=True):
            optimizer.load_state_dict(state)
        self.steps_taken = int(state_dict["steps_taken"])

    def settings(self) -> list[dict[str, Any]]:
        """Each phase's optimizer type, hyper-parameters and length (compared on resume)."""
        out = []
        for optimizer, steps in self.phases:
            groups = [
                {
                    k: v
                    for k, v in group.items()
                    if k not in ("params", "initial_lr")
                    and isinstance(v, (bool, int, float, str, tuple, list))
                }
                for group in optimizer.param_groups
            ]
            out.append({"type": algorithm_name(optimizer), "steps": steps, "groups": groups})
        return out

    def __repr__(self) -> str:
        parts = ", ".join(f"({type(o).__name__}, {s})" for o, s in self.phases)
        return f"Phases([{parts}]) at step {self.steps_taken}"
