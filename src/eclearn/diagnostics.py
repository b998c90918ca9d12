"""Failure signatures read off a training history, each with what to do about it.

Only constraints still violated at the end are examined: the signed violation averaged
over the last quarter of the fit is beyond the constraint's tolerance (pointwise
constraints: the batch mean |violation|). Averaging the signed value keeps mini-batch noise
around zero from reading as a violation.

- ``diverging``: the multiplier keeps growing in magnitude (steadily, by more than 30% over
  the last half of the fit) while the violation does not shrink — the constraint is infeasible for this model/data, or the dual step is too large;
- ``oscillation``: the (smoothed) violation swings across zero repeatedly with an
  amplitude far above tolerance — the dual learning rate is too large for the primal
  dynamics (checked even when the swings average out);
- ``drift``: the multiplier has settled but the violation does not go to zero — the
  primal optimizer does not reach the constrained minimiser (capacity, primal lr, K);
- ``penalty``: under fixed penalty weights (no dual updates) the constraint ends violated.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from eclearn.history import History
from eclearn.problem import Problem

__all__ = ["Diagnostic", "DiagnosticWarning", "diagnose"]

MIN_STEPS = 20


class DiagnosticWarning(UserWarning):
    """Warning category for failure signatures found after ``fit``."""


@dataclass(frozen=True)
class Diagnostic:
    kind: str
    constraint: str
    step: int
    message: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _series(history: History, problem: Problem, start: int):
    """(component label, constraint, violation series, multiplier series) per component."""
    data = history.to_numpy()[start:]
    cols = {c: i for i, c in enumerate(history.columns)}
    for c in problem.constraints:
        if c.pointwise:
            yield (
                c.name,
                c,
                data[:, cols[f"violation/{c.name}/mean_abs"]],
                data[:, cols[f"multiplier/{c.name}/norm"]],
            )
            continue
        for name in c.component_names():
            yield name, c, data[:, cols[f"violation/{name}"]], data[:, cols[f"multiplier/{name}"]]


def _swings(v: np.ndarray, tol: float) -> tuple[int, float]:
    """Sign changes and amplitude of the violation after a moving average that removes
    step-to-step (mini-batch) noise: dual oscillations are slow swings, noise is not."""
    k = max(1, min(len(v) // 20, 50))
    smooth = np.convolve(v, np.ones(k) / k, mode="valid")
    signs = np.sign(smooth[np.abs(smooth) > tol])
    return int(np.count_nonzero(signs[1:] != signs[:-1])), float(smooth.std())


def diagnose(
    history: History, problem: Problem, start: int = 0, updates_multipliers: bool = True
) -> list[Diagnostic]:
    """Examine the history rows from ``start`` on (the steps of one ``fit``)."""
    steps = len(history) - start
    if steps < MIN_STEPS:
        return []
    last_step = int(history.tail(1)[0, history.columns.index("step")])
    quarter = max(steps // 4, 1)
    where = f"over the last {2 * quarter} steps"
    found: list[Diagnostic] = []
    for label, c, v, m in _series(history, problem, start):
        tol = c.tolerance
        if c.pointwise:  # already the batch's mean |violation|
            q4, q3 = v[-quarter:].mean(), v[-2 * quarter : -quarter].mean()
        else:
            # Judge the signed window mean: mini-batch noise around zero is not a violation.
            w4, w3 = v[-quarter:].mean(), v[-2 * quarter : -quarter].mean()
            q4, q3 = (abs(w4), abs(w3)) if c.is_equality else (max(w4, 0.0), max(w3, 0.0))
        crossings, amplitude = (0, 0.0) if c.pointwise else _swings(v[-2 * quarter :], tol)
        if updates_multipliers and crossings >= 4 and amplitude > 10 * tol:
            found.append(
                Diagnostic(
                    "oscillation",
                    label,
                    last_step,
                    (
                        f"{label}: the violation swings across zero {crossings} times {where} with "
                        f"amplitude {amplitude:.3g} (tolerance {tol:g}): lower the dual learning rate, "
                        "or damp it with ecl.dual.NuPI(kp>0) or more primal_steps per dual step."
                    ),
                )
            )
            continue
        if not q4 > tol:
            continue
        if not updates_multipliers:
            found.append(
                Diagnostic(
                    "penalty",
                    label,
                    last_step,
                    (
                        f"{label}: still violated by {q4:.3g} (tolerance {tol:g}) under fixed penalty "
                        "weights, which trade the constraint off against the objective; raise its "
                        "weight or solve it as a constraint with ecl.Lagrangian()"
                    ),
                )
            )
            continue
        size = np.abs(m)
        m_mid, m_end = size[-2 * quarter], size[-1]
        growing = np.diff(size[-2 * quarter :])
        not_shrinking = q4 >= 0.8 * q3
        if (
            m_end - m_mid > 0.3 * m_end + 1e-12
            and growing.size
            and np.mean(growing > 0) > 0.8
            and not_shrinking
        ):
            found.append(
                Diagnostic(
                    "diverging",
                    label,
                    last_step,
                    (
                        f"{label}: multiplier magnitude grew from {m_mid:.3g} to {m_end:.3g} {where} "
                        f"while the violation stayed at {q4:.3g} (tolerance {tol:g}): the constraint "
                        "may be infeasible for this model and data, or the dual learning rate is too "
                        "large. Check that it can be met (relax its rhs/bound, add capacity) or lower "
                        "the dual learning rate."
                    ),
                )
            )
        elif abs(m_end - m_mid) <= 0.05 * max(m_end, 1e-12) and not_shrinking:
            found.append(
                Diagnostic(
                    "drift",
                    label,
                    last_step,
                    (
                        f"{label}: the multiplier settled near {m_end:.3g} but the violation stays at "
                        f"{q4:.3g} (tolerance {tol:g}) {where}: the primal optimizer does not reach the "
                        "constrained minimiser. Raise the model capacity or the primal learning rate, "
                        "take more primal_steps per dual step, or train longer."
                    ),
                )
            )
    return found
