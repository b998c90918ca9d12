"""When to stop a fit early: explicit criteria, each a small object with ``check(solver)``.

- :class:`StoppingRule`: every constraint within tolerance *and* the Lagrangian settled
  (csl's criterion);
- :class:`Patience`: a model selector (``ecl.select.BestFeasible``) has found a feasible
  iterate and has not improved on it for ``patience`` steps.

``fit(stopping=...)`` takes one of them or a sequence (the first that fires stops the fit,
and its reason becomes ``FitResult.stop_reason``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from eclearn.measures import excess

__all__ = ["Criterion", "Patience", "StoppingRule"]


class Criterion(Protocol):
    """A stopping criterion: ``check(solver, steps)`` returns a stop reason or None;
    ``steps`` is the number of steps taken in the current fit."""

    def check(self, solver: Any, steps: int) -> str | None: ...


@dataclass
class StoppingRule:
    """Stop when every constraint is within tolerance and the Lagrangian has settled.

    Checked every ``check_every`` steps once ``min_steps`` steps were taken in this fit:
    the excess of each component over the last ``window`` steps must be within
    ``tolerance`` (each constraint's own ``tolerance=`` when None) — for an average
    component the excess of its *mean signed* violation over the window (mini-batch noise
    around zero is not a violation), for a pointwise constraint the mean of the batches'
    largest excess — and the moving average of the Lagrangian over the last ``window``
    steps must differ from that over the previous window by at most
    ``lagrangian_rtol · max(1, |average|)``.
    """

    tolerance: float | None = None
    window: int = 100
    lagrangian_rtol: float = 1e-5
    min_steps: int = 0
    check_every: int = 10

    def __post_init__(self) -> None:
        if self.window < 1 or self.check_every < 1 or self.min_steps < 0:
            raise ValueError("StoppingRule: window and check_every must be ≥ 1, min_steps ≥ 0")
        if self.tolerance is not None and not self.tolerance >= 0:
            raise ValueError(f"StoppingRule tolerance must be ≥ 0, got {self.tolerance}")

    def check(self, solver: Any, steps: int) -> str | None:
        """``"converged"`` when the rule holds after ``steps`` steps of this fit, else None."""
        if steps < max(self.min_steps, 1) or solver.step % self.check_every:
            return None
        history = solver.history
        data = history.tail(2 * self.window)
        if len(data) < 2 * self.window:
            return None
        schema = history.schema
        recent = data[self.window :]
        for comp in schema.components:
            tol = comp.tolerance if self.tolerance is None else self.tolerance
            if comp.pointwise:
                measured = float(recent[:, schema.index[comp.excess_max]].mean())
            else:
                mean = float(recent[:, schema.index[comp.violation]].mean())
                measured = float(excess(np.asarray(mean), comp.inequality))
            if not measured <= tol:
                return None
        lag = schema.index["lagrangian"]
        now, before = float(recent[:, lag].mean()), float(data[: self.window, lag].mean())
        if abs(now - before) <= self.lagrangian_rtol * max(1.0, abs(now)):
            return "converged"
        return None


@dataclass
class Patience:
    """Stop once ``selector`` holds a feasible iterate that it has not improved on (by more
    than its ``min_delta``) for ``patience`` steps, after at least ``min_steps`` steps of
    the fit. ``selector`` is any object with ``found_feasible`` and ``improved_at`` (the step
    of its last real improvement), such as ``ecl.select.BestFeasible``."""

    selector: Any
    patience: int = 100
    min_steps: int = 0

    def __post_init__(self) -> None:
        if self.patience < 1 or self.min_steps < 0:
            raise ValueError("Patience: patience must be ≥ 1 and min_steps ≥ 0")

    def check(self, solver: Any, steps: int) -> str | None:
        """``"selected"`` once the selector has not improved for ``patience`` steps."""
        selector = self.selector
        if (
            steps >= self.min_steps
            and selector.found_feasible
            and solver.step - selector.improved_at >= self.patience
        ):
            return "selected"
        return None
