"""Primal oracles: L-BFGS (closure optimizers) and optimizers in phases (Adam, then L-BFGS).

With a strong primal oracle each dual step sees the Lagrangian minimiser at the current
multipliers, so dual ascent is exact gradient ascent on the dual function: on a quadratic
with linear equalities it converges in a handful of dual steps. Resume across a phase
switch is bitwise.
"""

from __future__ import annotations

import io

import pytest
import torch

import eclearn as ecl

from .conftest import F64, assert_close, full_batch, vector_equality


def lbfgs(params, **kwargs):
    options = {
        "lr": 1.0,
        "max_iter": 50,
        "line_search_fn": "strong_wolfe",
        "tolerance_grad": 1e-12,
        "tolerance_change": 1e-15,
    }
    return torch.optim.LBFGS(params, **{**options, **kwargs})


def test_lbfgs_oracle_solves_the_kkt_point_in_few_dual_steps():
    q = vector_equality()
    model = q.model()
    solver = ecl.PrimalDual(q.problem, model, lbfgs(model.parameters()), ecl.dual.SGD(0.4))
    result = solver.fit(full_batch(), max_steps=40)
    assert_close(model.theta.detach(), q.theta, atol=1e-6)
    assert_close(result.multipliers["eq"], q.multipliers["eq"], atol=1e-6)
    # the dual step sees the point L-BFGS accepted: the recorded violation is that of the
    # new iterate, so with exact inner solves it is the dual gradient at the multipliers used
    assert result.history["violation/eq[0]"].shape == (40,)


def test_lbfgs_tolerances_are_the_inner_stopping_rule():
    """One L-BFGS step is one inner solve; its tolerance_grad stops it early."""
    q = vector_equality()
    loose, tight = q.model(), q.model()
    calls = {}
    for name, model, tol in (("loose", loose, 1e-1), ("tight", tight, 1e-12)):
        evaluate = q.problem.evaluate_fn

        def counted(m, batch, _evaluate=evaluate, _name=name):
            calls[_name] = calls.get(_name, 0) + 1
            return _evaluate(m, batch)

        problem = ecl.Problem(counted, q.problem.constraints)
        opt = lbfgs(model.parameters(), tolerance_grad=tol, tolerance_change=0.0)
        ecl.PrimalDual(problem, model, opt, ecl.dual.SGD(0.4)).fit(full_batch(), max_steps=5)
    assert calls["loose"] < calls["tight"]


def test_phases_switch_from_adam_to_lbfgs_at_the_given_step():
    q = vector_equality()
    model = q.model()
    adam = torch.optim.Adam(model.parameters(), lr=1e-2)
    phases = ecl.Phases([(adam, 30), (lbfgs(model.parameters()), None)])
    solver = ecl.PrimalDual(q.problem, model, phases, ecl.dual.SGD(0.4))
    solver.fit(full_batch(), max_steps=30)
    assert phases.index == 1
    assert solver.closure  # the next step is L-BFGS's
    result = solver.fit(full_batch(), max_steps=40)
    assert_close(model.theta.detach(), q.theta, atol=1e-6)
    assert_close(result.multipliers["eq"], q.multipliers["eq"], atol=1e-6)
    assert phases.steps_taken == 70


def build(q):
    model = q.model()
    adam = torch.optim.Adam(model.parameters(), lr=1e-2)
    phases = ecl.Phases([(adam, 10), (lbfgs(model.parameters(), max_iter=5), None)])
    return model, ecl.PrimalDual(q.problem, model, phases, ecl.dual.SGD(0.3))


@pytest.mark.parametrize("split", [5, 10, 14], ids=["in-adam", "at-switch", "in-lbfgs"])
def test_resume_across_the_phase_switch_is_bitwise(split):
    q = vector_equality()
    torch.manual_seed(0)
    straight_model, straight = build(q)
    straight.fit(full_batch(), max_steps=20)

    _, first = build(q)
    first.fit(full_batch(), max_steps=split)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed_model, resumed = build(q)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    resumed.fit(full_batch(), max_steps=20 - split)
    assert torch.equal(resumed_model.theta, straight_model.theta)
    assert torch.equal(resumed.multipliers["eq"], straight.multipliers["eq"])
    assert resumed.primal_optimizer.steps_taken == 20


def test_a_checkpoint_with_other_phases_is_a_mismatch():
    q = vector_equality()
    _, solver = build(q)
    solver.fit(full_batch(), max_steps=3)
    state = solver.state_dict()
    model = q.model()
    other = ecl.Phases(
        [(torch.optim.Adam(model.parameters(), lr=1e-2), 20), (lbfgs(model.parameters()), None)]
    )
    with pytest.raises(ecl.CheckpointMismatch, match=r"primal_optimizer\.phases"):
        ecl.PrimalDual(q.problem, model, other, ecl.dual.SGD(0.3)).load_state_dict(state)


def test_phases_validation_messages():
    model = torch.nn.Linear(2, 1).to(F64)
    other = torch.nn.Linear(2, 1)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="only the last phase"):
        ecl.Phases([(sgd, None), (sgd, 3)])
    with pytest.raises(ValueError, match="same parameters"):
        ecl.Phases([(sgd, 3), (torch.optim.SGD(other.parameters(), lr=0.1), None)])
    with pytest.raises(ValueError, match="steps must be an int"):
        ecl.Phases([(sgd, 0)])
    with pytest.raises(TypeError, match=r"torch\.optim\.Optimizer"):
        ecl.Phases([("adam", 3)])
    with pytest.raises(ValueError, match="at least one"):
        ecl.Phases([])
