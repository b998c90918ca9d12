"""Failure signatures: each is produced by a problem (or a constructed history) that shows
it, and must come with its advice; a well-solved problem shows none."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import eclearn as ecl
from eclearn.diagnostics import diagnose

from .conftest import F64, Vector, full_batch, sgd_solver, vector_equality


def kinds(result, constraint=None):
    return {d.kind for d in result.diagnostics if constraint is None or d.constraint == constraint}


def test_infeasible_equalities_diverge():
    """θ = 1 and θ = 2 both required: the difference of the multipliers grows without bound."""

    def evaluate(model, batch):
        theta = model().sum()
        return {"objective": 0.5 * theta**2, "one": theta, "two": theta}

    problem = ecl.Problem(evaluate, [ecl.Equality("one", rhs=1.0), ecl.Equality("two", rhs=2.0)])
    model = Vector([0.0])
    solver = sgd_solver(problem, model, lr=0.5, dual=ecl.dual.SGD(0.1))
    with pytest.warns(ecl.DiagnosticWarning, match="may be infeasible"):
        result = solver.fit(full_batch(), max_steps=200)
    diverging = [d for d in result.diagnostics if d.kind == "diverging"]
    assert diverging
    message = diverging[0].message
    assert diverging[0].constraint in ("one", "two")
    assert "relax its rhs/bound" in message and "lower the dual learning rate" not in message
    assert diverging[0].step == 200
    assert diverging[0].to_dict()["kind"] == "diverging"
    assert model.theta.item() == pytest.approx(1.5, abs=1e-3)  # the primal splits the difference
    assert f"! {message}" in result.summary()


def slow_dual_fit(dual):
    """θ = 1 under min ½θ² (KKT: θ = 1, μ = −1), primal SGD 0.5, 300 steps with ``dual``."""

    def evaluate(model, batch):
        theta = model().sum()
        return {"objective": 0.5 * theta**2, "h": theta}

    problem = ecl.Problem(evaluate, [ecl.Equality("h", rhs=1.0)])
    solver = sgd_solver(problem, Vector([0.0]), lr=0.5, dual=dual)
    return solver, solver.fit(full_batch(), max_steps=300, warn=False)


def test_a_multiplier_ramping_up_under_a_small_dual_lr_is_not_called_diverging():
    """θ = 1 with min ½θ² and a dual lr of 1e-3: the multiplier grows linearly and the
    violation falls, slowly — the advice is to raise the dual rate, never to lower it."""

    _, result = slow_dual_fit(ecl.dual.SGD(1e-3))
    assert [d.kind for d in result.diagnostics] == ["ramping"]
    message = result.diagnostics[0].message
    assert "Raise the dual learning rate" in message and "lower" not in message
    assert "more steps at this pace" in message


def test_huge_dual_lr_on_a_rate_constraint_oscillates():
    """A smoothed rate (fraction of x above θ) held at ½ with a dual lr of 50: the multiplier
    overshoots, the rate saturates on either side and the violation keeps flipping sign."""
    x = torch.linspace(-2, 2, 40, dtype=F64)

    def evaluate(model, batch):
        theta = model()[0]
        rate = torch.sigmoid(4 * (x - theta)).mean()
        return {"objective": 0.5 * (theta - 1.0) ** 2, "rate": rate}

    problem = ecl.Problem(evaluate, [ecl.Equality("rate", rhs=0.5)])
    solver = sgd_solver(problem, Vector([0.0]), lr=1.0, dual=ecl.dual.SGD(50.0))
    result = solver.fit(full_batch(), max_steps=200, warn=False)
    assert kinds(result) == {"oscillation"}
    message = result.diagnostics[0].message
    assert "lower the dual learning rate" in message and "ecl.dual.NuPI(kp>0)" in message
    violation = solver.history["violation/rate"][-100:]
    assert np.mean(np.sign(violation[1:]) != np.sign(violation[:-1])) > 0.3


def test_frozen_primal_with_settled_multiplier_drifts():
    """Primal lr 0: θ cannot move, the violation persists while the multiplier (large from
    its init, moved by a small dual lr) has settled."""

    def evaluate(model, batch):
        theta = model()
        return {"objective": 0.5 * theta.pow(2).sum(), "h": theta.sum()}

    problem = ecl.Problem(evaluate, [ecl.Equality("h", rhs=1.0, init=5.0)])
    solver = sgd_solver(problem, Vector([0.0]), lr=0.0, dual=ecl.dual.SGD(1e-3))
    with pytest.warns(ecl.DiagnosticWarning, match="primal optimizer does not reach"):
        result = solver.fit(full_batch(), max_steps=100)
    assert kinds(result) == {"drift"}
    assert "Raise the model capacity or the primal learning rate" in result.diagnostics[0].message


def test_penalty_left_violated_is_reported():
    q = vector_equality()
    solver = sgd_solver(q.problem, q.model(), lr=0.1, formulation=ecl.Penalty(0.1, power=2))
    result = solver.fit(full_batch(), max_steps=60, warn=False)
    assert kinds(result) == {"penalty"}
    assert {d.constraint for d in result.diagnostics} == {"eq[0]", "eq[1]"}
    assert all("raise its weight" in d.message for d in result.diagnostics)


def test_well_solved_problem_has_no_diagnostics_and_no_warning():
    q = vector_equality()
    solver = sgd_solver(q.problem, q.model(), lr=0.7, dual=ecl.dual.SGD(0.2))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ecl.DiagnosticWarning)
        result = solver.fit(full_batch(), max_steps=100)
    assert result.diagnostics == []


def test_warn_false_stays_silent_but_still_diagnoses():
    def evaluate(model, batch):
        theta = model()
        return {"objective": 0.5 * theta.pow(2).sum(), "h": theta.sum()}

    problem = ecl.Problem(evaluate, [ecl.Equality("h", rhs=1.0, init=5.0)])
    solver = sgd_solver(problem, Vector([0.0]), lr=0.0, dual=ecl.dual.SGD(1e-3))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ecl.DiagnosticWarning)
        result = solver.fit(full_batch(), max_steps=40, warn=False)
    assert kinds(result) == {"drift"}


# --- constructed histories ------------------------------------------------------------------
COLUMNS = ["step", "violation/h", "multiplier/h"]


def history_of(violation, multiplier) -> ecl.History:
    history = ecl.History(COLUMNS)
    for t, (v, m) in enumerate(zip(violation, multiplier, strict=True), start=1):
        history.record(torch.tensor([t, v, m], dtype=F64))
    return history


EQ = ecl.Problem(lambda m, b: {}, [ecl.Equality("h")])
T = np.arange(1, 201, dtype=float)


@pytest.mark.parametrize(
    ("violation", "multiplier", "expected"),
    [
        (0.5 + 0 * T, 1.03**T, "diverging"),
        (0.3 * (-1.0) ** T, 2 + np.sin(T), "oscillation"),
        (0.2 + 0 * T, 3 + 1e-4 * T, "drift"),
        (0.5 * 0.9**T, 1 - 0.9**T, None),  # violation vanishes
        (1e-4 * (-1.0) ** T, 5 * (-1.0) ** T, None),  # flips, but within tolerance
    ],
    ids=["diverging", "oscillation", "drift", "converged", "within-tolerance"],
)
def test_signatures_on_constructed_histories(violation, multiplier, expected):
    found = diagnose(history_of(violation, multiplier), EQ)
    assert [d.kind for d in found] == ([expected] if expected else [])
    if expected:
        assert found[0].constraint == "h" and found[0].step == 200


def test_inequality_satisfied_with_slack_is_not_examined():
    """A negative violation is no violation for an inequality (it would be for an equality)."""
    history = history_of(-0.5 + 0 * T, 3 + 1e-4 * T)
    assert diagnose(history, ecl.Problem(lambda m, b: {}, [ecl.Inequality("h")])) == []
    assert [d.kind for d in diagnose(history, EQ)] == ["drift"]


def test_diagnose_only_examines_the_steps_of_this_fit():
    """An earlier fit of 200 steps with a growing multiplier, then a fit of 30 steps where it
    has settled while the violation stays: only ``start=`` on decides which story is told."""
    violation = 0.5 + 0 * np.r_[T, np.arange(30)]
    multiplier = np.r_[1.03**T, np.full(30, 1.03**200)]
    history = history_of(violation, multiplier)
    assert [d.kind for d in diagnose(history, EQ, start=200)] == ["drift"]
    # over both fits the multiplier grew, then stopped: neither signature, but the constraint
    # ends violated (0.5), so it is still reported (this asserted [] before every violated
    # constraint got a diagnostic)
    assert [d.kind for d in diagnose(history, EQ, start=0)] == ["unmet"]
    assert diagnose(history, EQ, start=215) == []  # fewer than 20 steps: too few to judge


# Guards a fixed core bug; before the fix: 'diverging' needs the multiplier to more than double over
# the last half of the fit, but a multiplier growing linearly from 0 under a constant violation
# (the usual divergence under SGD/Adam ascent: an infeasible inequality, or a frozen primal)
# grows by a factor just under 2, so no signature at all is reported
@pytest.mark.parametrize("source", ["history", "solver"])
def test_linearly_growing_multiplier_of_an_infeasible_constraint_is_reported(source):
    if source == "history":
        found = diagnose(history_of(1.0 + 0 * T, 0.1 * T), EQ)
    else:

        def evaluate(model, batch):  # g = θ² + 1 ≤ 0 cannot hold
            theta = model()
            return {"objective": 0.5 * (theta - 1).pow(2).sum(), "g": theta.pow(2).sum() + 1}

        problem = ecl.Problem(evaluate, [ecl.Inequality("g")])
        solver = sgd_solver(problem, Vector([0.0]), lr=0.01, dual=ecl.dual.SGD(0.1))
        found = solver.fit(full_batch(), max_steps=200, warn=False).diagnostics
        assert 19 < solver.multipliers["g"].item() < 21  # λ ≈ 0.1·t: linear growth
    assert [d.kind for d in found] == ["diverging"]


# --- every constraint that ends violated gets one diagnostic ----------------------------------
# Guards a fixed core bug; before the fix: ramping/diverging needed the violation not to be
# shrinking (q4 ≥ 0.8·q3) and the multiplier to grow by > 30 % over the last half, so a
# violation that falls (slowly) under a steadily ramping multiplier, a multiplier that built up
# early and keeps climbing, and a multiplier that moves back and forth got no diagnostic at all
@pytest.mark.parametrize(
    ("violation", "multiplier", "expected"),
    [
        (0.5 * 0.99**T, 0.01 * T, "ramping"),  # falls by > 20 % per quarter
        (0.08 + 0 * T, 20 + 0.02 * T, "diverging"),  # built up early: +8 % over the last half
        (0.3 + 0 * T, 5 + 2 * np.sin(T / 20), "unmet"),  # neither growing nor settled
    ],
    ids=["ramping-shrinking", "diverging-built-up-early", "unmet"],
)
def test_constraints_ending_violated_get_a_diagnostic(violation, multiplier, expected):
    found = diagnose(history_of(violation, multiplier), EQ)
    assert [(d.kind, d.constraint) for d in found] == [(expected, "h")]
    assert "h: " in found[0].message


def test_random_histories_ending_violated_always_get_one_diagnostic():
    """The invariant: every constraint whose last-quarter violation and final stretch are
    beyond tolerance gets exactly one diagnostic naming it; one within tolerance at most an
    `oscillation` (swings that average out are still reported)."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        level = rng.uniform(-1, 1) * 10 ** rng.uniform(-4, 0)
        violation = level * (1 + rng.uniform(-1, 1) * np.exp(-T / rng.uniform(5, 300)))
        violation = violation + rng.normal(0, 10 ** rng.uniform(-5, -1), T.size)
        multiplier = np.cumsum(rng.normal(rng.uniform(-0.1, 0.1), rng.uniform(0, 0.2), T.size))
        found = diagnose(history_of(violation, multiplier), EQ)
        ended_violated = abs(violation[-50:].mean()) > 1e-3 and np.abs(violation[-12:]).max() > 1e-3
        kinds = [d.kind for d in found]
        if ended_violated:
            assert len(found) == 1, (level, kinds)
        else:
            assert kinds in ([], ["oscillation"]), (level, kinds)
        assert all(d.constraint == "h" for d in found)


def test_faq_case_adam_dual_too_slow_is_ramping():
    """θ = 1 under min ½θ² with ecl.dual.Adam(1e-3): the multiplier moves ≈ 1e-3 per step,
    reaching −0.28 of the −1 it needs after 300 steps; the violation falls."""

    solver, result = slow_dual_fit(ecl.dual.Adam(1e-3))
    assert solver.multipliers["h"].item() == pytest.approx(-0.28, abs=0.01)
    assert [d.kind for d in result.diagnostics] == ["ramping"]
    assert "Raise the dual learning rate" in result.diagnostics[0].message


# Guards a fixed core bug; before the fix: the oscillation window still held the swings of a
# first-order phase after an L-BFGS phase had converged, so a converged fit was flagged
def test_no_oscillation_after_a_phase_switch_that_converged():
    """θ = 1 under min ½θ²: SGD(0.02) with dual SGD(0.5) swings (period ≈ 60 steps), then
    L-BFGS minimises the Lagrangian exactly (θ = −μ) and the dual step halves the error:
    the fit ends at the KKT point θ = 1, μ = −1."""

    def evaluate(model, batch):
        theta = model().sum()
        return {"objective": 0.5 * theta**2, "h": theta}

    problem = ecl.Problem(evaluate, [ecl.Equality("h", rhs=1.0)])
    model = Vector([0.0])
    sgd = torch.optim.SGD(model.parameters(), lr=0.02)
    lbfgs = torch.optim.LBFGS(model.parameters(), max_iter=20, line_search_fn="strong_wolfe")
    phases = ecl.Phases([(sgd, 300), (lbfgs, None)])
    solver = ecl.PrimalDual(problem, model, phases, ecl.dual.SGD(0.5), dtype=F64)
    result = solver.fit(full_batch(), max_steps=360, warn=False)
    violation = solver.history["violation/h"]
    assert np.abs(violation[180:300]).max() > 0.1  # the first phase swung in the window
    assert model.theta.item() == pytest.approx(1.0, abs=1e-9)
    assert solver.multipliers["h"].item() == pytest.approx(-1.0, abs=1e-9)
    assert result.diagnostics == []


# Guards a fixed core bug; before the fix: a multiplier frozen by a dual learning rate of 0
# (fixed weights chosen by the user, like ecl.Penalty) was reported as `drift`, blaming the
# primal optimizer
def test_zero_dual_learning_rate_is_a_fixed_weight_not_drift():
    def evaluate(model, batch):
        theta = model().sum()
        return {"objective": 0.5 * theta**2, "h": theta}

    problem = ecl.Problem(evaluate, [ecl.Equality("h", rhs=1.0, init=0.5)])
    solver = sgd_solver(problem, Vector([0.0]), lr=0.5, dual=ecl.dual.SGD(0.0))
    result = solver.fit(full_batch(), max_steps=100, warn=False)
    assert model_theta(solver) == pytest.approx(-0.5, abs=1e-6)  # argmin ½θ² + 0.5 θ
    assert [d.kind for d in result.diagnostics] == ["penalty"]
    message = result.diagnostics[0].message
    assert "dual learning rate of 0" in message and "primal optimizer" not in message
    # a constraint's own lr=0 likewise; the other constraint is still judged as usual
    problem = ecl.Problem(evaluate, [ecl.Equality("h", rhs=1.0, lr=0.0)])
    solver = sgd_solver(problem, Vector([0.0]), lr=0.5, dual=ecl.dual.SGD(0.1))
    assert [d.kind for d in solver.fit(full_batch(), max_steps=100, warn=False).diagnostics] == [
        "penalty"
    ]


def model_theta(solver):
    return solver.model.theta.item()
