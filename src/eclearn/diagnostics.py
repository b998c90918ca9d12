"""Failure signatures read off a training history, each with what to do about it.

Only constraints still violated at the end are examined: the excess (:mod:`eclearn.measures`)
of the signed violation averaged over the last quarter of the fit is beyond the
constraint's tolerance (pointwise constraints: the batch-mean excess), and so is at least
one step of the final stretch (the last ``min(quarter/4, 25)`` steps; a fit whose final
stretch is within tolerance ended met, whatever swings came before, e.g. in an Adam phase
before L-BFGS). Averaging the signed value keeps mini-batch noise around zero from reading
as a violation. Everything is read through the history's schema: the *measured* values
(the exact part of a proxy). Every examined constraint gets exactly one diagnostic:

- ``oscillation``: the (smoothed) measured violation swings across zero at least three
  times with an amplitude far above tolerance — the dual learning rate is too large for the primal
  dynamics (checked even when the swings average out);
- ``ramping``: the multiplier keeps growing (steadily, by more than 5 % over the last half
  of the fit) and the violation falls, but slowly — the dual step is small for the
  constraint's scale (raise it or train longer);
- ``diverging``: the multiplier keeps growing in the same way while the violation does not
  respond — the constraint is infeasible for this model/data, or the primal cannot follow;
- ``drift``: the multiplier has settled (within 5 %) but the violation does not go to zero
  — the primal optimizer does not reach the constrained minimiser (capacity, primal lr, K);
- ``penalty``: under fixed weights — a penalty formulation (no dual updates) or a dual
  learning rate of 0 for the constraint — the constraint ends violated;
- ``unmet``: violated at the end without one of the signatures above (e.g. a multiplier
  that moved back and forth, or settled while the violation still falls): the message says
  what was measured and what to try.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from eclearn.history import Columns, History
from eclearn.measures import excess
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
        """Plain JSON-able description."""
        return asdict(self)


def _series(history: History, problem: Problem, start: int):
    """(component label, component, violation series, multiplier series) per component, read
    through the history's schema (rebuilt from the names and ``problem``'s declarations for a
    history of plain column names): the signed violation of an average component, the
    batch-mean excess of a pointwise constraint."""
    data = history.to_numpy()[start:]
    schema = history.schema
    if not schema.components:
        schema = Columns.from_names(history.columns, problem.describe())
    for comp in schema.components:
        column = comp.excess_mean if comp.pointwise else comp.violation
        yield (
            comp.label,
            comp,
            data[:, schema.index[str(column)]],
            data[:, schema.index[comp.multiplier]],
        )


def _swings(v: np.ndarray, tol: float) -> tuple[int, float]:
    """Sign changes of the violation after a moving average that removes step-to-step
    (mini-batch) noise (dual oscillations are slow swings, noise is not), and the amplitude
    (half the peak-to-peak range) of its second half — a swing that dies out is converging."""
    k = max(1, min(len(v) // 20, 50))
    smooth = np.convolve(v, np.ones(k) / k, mode="valid")
    if len(smooth) < 2:
        return 0, 0.0
    signs = np.sign(smooth[np.abs(smooth) > tol])
    recent = smooth[len(smooth) // 2 :]
    return int(np.count_nonzero(signs[1:] != signs[:-1])), float(np.ptp(recent) / 2)


def _growing(
    label: str,
    c: Any,
    v: np.ndarray,
    m_mid: float,
    m_end: float,
    q4: float,
    tol: float,
    where: str,
    last_step: int,
) -> Diagnostic:
    """A multiplier that keeps growing while the constraint stays violated: either still
    ramping up (the violation falls, slowly: the dual step is too small for the constraint's
    scale) or diverging (the violation does not respond: infeasible, or the primal cannot
    follow). A dual step that is too *large* shows as oscillation, never as this."""
    excess_series = np.abs(v) if not c.inequality else np.maximum(v, 0.0)
    if c.pointwise:
        excess_series = np.asarray(v)
    slope = float(np.polyfit(np.arange(len(excess_series)), excess_series, 1)[0])
    falling = slope < 0 and -slope * len(excess_series) > 0.05 * q4
    if falling:
        remaining = (q4 - tol) / -slope
        return Diagnostic(
            "ramping",
            label,
            last_step,
            (
                f"{label}: the multiplier is still ramping up (grew from {m_mid:.3g} to "
                f"{m_end:.3g} {where}) and the violation falls slowly, now {q4:.3g} (tolerance "
                f"{tol:g}; ≈{remaining:.0f} more steps at this pace): the dual learning rate is "
                "small for this constraint's scale. Raise the dual learning rate (e.g. 10×) or "
                "train longer."
            ),
        )
    return Diagnostic(
        "diverging",
        label,
        last_step,
        (
            f"{label}: multiplier magnitude grew from {m_mid:.3g} to {m_end:.3g} {where} while "
            f"the violation stayed at {q4:.3g} (tolerance {tol:g}) and does not respond to it: "
            "the constraint may be infeasible for this model and data, or the primal step cannot "
            "follow the multiplier. Check that it can be met (relax its rhs/bound, add capacity) "
            "or raise the primal learning rate / primal_steps. (A dual learning rate that is too "
            "large shows as oscillation, not as this.)"
        ),
    )


def _final_stretch(quarter: int) -> int:
    """Steps of the final stretch: a fit whose every one of them is within tolerance ended
    met, whatever came before (e.g. the swings of an Adam phase before L-BFGS)."""
    return max(1, min(quarter // 4, 25))


def diagnose(
    history: History,
    problem: Problem,
    start: int = 0,
    updates_multipliers: bool = True,
    fixed: Collection[str] = (),
) -> list[Diagnostic]:
    """Examine the history rows from ``start`` on (the steps of one ``fit``).

    ``updates_multipliers=False``: fixed penalty weights (``ecl.Penalty``). ``fixed``: the
    names of constraints whose multipliers do not move although the formulation updates
    them (a dual learning rate of 0): they are judged like fixed penalties."""
    steps = len(history) - start
    if steps < MIN_STEPS:
        return []
    last_step = int(history.tail(1)[0, history.columns.index("step")])
    quarter = max(steps // 4, 1)
    stretch = _final_stretch(quarter)
    where = f"over the last {2 * quarter} steps"
    found: list[Diagnostic] = []
    for label, c, v, m in _series(history, problem, start):
        tol = c.tolerance
        moves = updates_multipliers and c.constraint not in fixed
        if c.pointwise:  # already the batch's mean excess
            q4, q3 = v[-quarter:].mean(), v[-2 * quarter : -quarter].mean()
            recent = np.asarray(v[-stretch:])
        else:
            # Judge the signed window mean: mini-batch noise around zero is not a violation.
            w4, w3 = v[-quarter:].mean(), v[-2 * quarter : -quarter].mean()
            q4, q3 = float(excess(w4, c.inequality)), float(excess(w3, c.inequality))
            recent = np.asarray(excess(np.asarray(v[-stretch:]), c.inequality))
        if float(np.max(recent)) <= tol:
            continue  # every step of the final stretch within tolerance: it ended met
        if c.pointwise and not c.inequality:
            # per-sample values are not in the history, only their excess: read the swings
            # off the multipliers' mean, whose increments follow the signed violation
            crossings, _ = _swings(np.diff(m[-2 * quarter :]), 0.0)
            amplitude = float(q4)
        elif c.pointwise:
            crossings, amplitude = 0, 0.0
        else:
            crossings, amplitude = _swings(v[-2 * quarter :], tol)
        if moves and crossings >= 3 and amplitude > 10 * tol:
            found.append(
                _oscillation(label, c, crossings, quarter, amplitude, tol, where, last_step)
            )
            continue
        if not q4 > tol:
            continue
        if not moves:
            found.append(_fixed(label, c, q4, tol, float(m[-1]), updates_multipliers, last_step))
            continue
        size = np.abs(m)
        m_mid, m_end = float(size[-2 * quarter]), float(size[-1])
        growing = np.diff(size[-2 * quarter :])
        change = m_end - m_mid
        settled = abs(change) <= 0.05 * max(m_end, 1e-12)
        if not settled and change > 0 and growing.size and np.mean(growing > 0) > 0.8:
            found.append(
                _growing(label, c, v[-2 * quarter :], m_mid, m_end, q4, tol, where, last_step)
            )
        elif settled and q4 >= 0.8 * q3:
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
        else:
            found.append(_unmet(label, q3, q4, tol, m_mid, m_end, quarter, where, last_step))
    return found


def _oscillation(
    label: str,
    c: Any,
    crossings: int,
    quarter: int,
    amplitude: float,
    tol: float,
    where: str,
    last_step: int,
) -> Diagnostic:
    period = 2 * (2 * quarter) / crossings
    return Diagnostic(
        "oscillation",
        label,
        last_step,
        (
            f"{label}: the measured value swings across its target {crossings} times "
            f"{where} (period ≈ {period:.0f} steps, amplitude {amplitude:.3g} against "
            f"tolerance {tol:g}): the multipliers overshoot; lower the dual learning "
            "rate (or give it a decaying schedule), damp it with ecl.dual.NuPI(kp>0), "
            "or take more primal_steps per dual step; select the returned model with "
            "ecl.select.BestFeasible."
            + (
                ""
                if c.inequality
                else " If the objective does not depend on this quantity (e.g. "
                "boundary values under a PDE-residual objective), the Lagrangian is "
                "unbounded below along it and no dual rate fixes that: use "
                "formulation=ecl.AugmentedLagrangian(rho=1)."
            )
        ),
    )


def _fixed(
    label: str, c: Any, q4: float, tol: float, m_end: float, penalty: bool, last_step: int
) -> Diagnostic:
    """Fixed weights: a penalty formulation, or a dual learning rate of 0."""
    if not penalty:
        text = (
            f"{label}: still violated by {q4:.3g} (tolerance {tol:g}) under fixed penalty "
            "weights, which trade the constraint off against the objective; raise its "
            "weight or solve it as a constraint with ecl.Lagrangian()"
        )
    else:
        text = (
            f"{label}: still violated by {q4:.3g} (tolerance {tol:g}) with its multiplier "
            f"held at {m_end:.3g} by a dual learning rate of 0, which makes it a fixed "
            "penalty weight; give it a positive dual learning rate (e.g. the default "
            f"dual optimizer, or ecl.{'Equality' if not c.inequality else 'Inequality'}"
            f'("{c.constraint}", lr=...)) to enforce it, or set a larger multiplier with '
            "solver.set_multipliers"
        )
    return Diagnostic("penalty", label, last_step, text)


def _unmet(
    label: str,
    q3: float,
    q4: float,
    tol: float,
    m_mid: float,
    m_end: float,
    quarter: int,
    where: str,
    last_step: int,
) -> Diagnostic:
    """Violated at the end without one of the signatures above: say what was measured."""
    falling = q4 < 0.8 * q3
    trend = (
        "still falling, so it may need more steps: fit again (fit runs further steps), or "
        "raise the dual learning rate if the multiplier moves slowly"
        if falling
        else "not falling: check that the constraint can be met (ecl.evaluate on the data, "
        "relax its rhs/bound, add capacity), raise the primal learning rate or "
        "primal_steps, or lower the dual learning rate if the multiplier moves back and forth"
    )
    return Diagnostic(
        "unmet",
        label,
        last_step,
        (
            f"{label}: still violated at the end: {q4:.3g} over the last {quarter} steps "
            f"(against {q3:.3g} over the {quarter} before; tolerance {tol:g}), multiplier "
            f"magnitude {m_mid:.3g} → {m_end:.3g} {where}. The violation is {trend}; select "
            "the returned model with ecl.select.BestFeasible."
        ),
    )
