"""Dual optimizer math against hand computations, and projection of inequality multipliers.

``update(grad, state, lr) -> (delta, state)`` is checked directly, then one or two solver
steps with scripted violations check that the solver adds ``delta`` and projects only the
inequality multipliers (equality multipliers are free and may go negative).
"""

from __future__ import annotations

import math

import pytest
import torch

import eclearn as ecl

from .conftest import F64, Vector, assert_close, scripted, sgd_solver, t64

G1 = t64([0.5, -2.0, 0.0, 3.0])
G2 = t64([1.5, -1.0, 0.25, -3.0])
G3 = t64([-0.5, 4.0, 1.0, 0.1])


def run(opt, grads, lr=0.1):
    state = opt.init_state(torch.zeros(4, dtype=F64))
    deltas = []
    for g in grads:
        delta, state = opt.update(g, state, torch.full((4,), lr, dtype=F64))
        deltas.append(delta)
    return deltas, state


def test_sgd_step_is_lr_times_violation():
    deltas, state = run(ecl.dual.SGD(0.1), [G1, G2])
    assert_close(deltas[0], 0.1 * G1, atol=0)
    assert_close(deltas[1], 0.1 * G2, atol=0)
    assert state == {}


def test_adam_step_with_bias_correction_by_hand():
    b1, b2, eps, lr = 0.8, 0.9, 1e-6, 0.05
    deltas, state = run(ecl.dual.Adam(lr, betas=(b1, b2), eps=eps), [G1, G2, G3], lr=lr)
    m = v = torch.zeros(4, dtype=F64)
    for t, (g, delta) in enumerate(zip([G1, G2, G3], deltas, strict=True), start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        expected = lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
        # the moments of float64 multipliers are stored in float32: relative precision 1e-7
        assert_close(delta, expected, atol=1e-8)
    # first step: m̂ = g, v̂ = g², so the step is lr·g/(|g| + ε) ≈ lr·sign(g)
    assert_close(deltas[0], lr * G1 / (G1.abs() + eps), atol=1e-8)
    assert state["exp_avg"].dtype == torch.float32 and state["steps"].dtype == torch.int32
    assert state["steps"].tolist() == [3, 3, 3, 3]


def test_adam_ascent_matches_torch_adam_maximize():
    opt = ecl.dual.Adam(0.01)
    deltas, _ = run(opt, [G1, G2, G3], lr=0.01)
    p = torch.zeros(4, dtype=F64, requires_grad=True)
    ref = torch.optim.Adam([p], lr=0.01, maximize=True)
    total = torch.zeros(4, dtype=F64)
    for g, delta in zip([G1, G2, G3], deltas, strict=True):
        p.grad = g.clone()
        ref.step()
        total = total + delta
        assert_close(p.detach(), total, atol=1e-8)  # float32 moments (see above)


@pytest.mark.parametrize("nu", [0.0, 0.5])
def test_nupi_first_step_is_sgd_with_ki_and_second_adds_kp_times_xi_change(nu):
    kp, ki, lr = 2.0, 0.5, 0.1
    deltas, state = run(ecl.dual.NuPI(lr, kp=kp, ki=ki, nu=nu), [G1, G2, G3], lr=lr)
    assert_close(deltas[0], lr * ki * G1, atol=1e-15)
    xi0 = G1
    xi1 = nu * xi0 + (1 - nu) * G2
    assert_close(deltas[1], lr * (ki * G2 + kp * (xi1 - xi0)), atol=1e-15)
    xi2 = nu * xi1 + (1 - nu) * G3
    assert_close(deltas[2], lr * (ki * G3 + kp * (xi2 - xi1)), atol=1e-15)
    assert_close(state["xi"], xi2, atol=1e-15)
    if nu == 0.0:  # ξ_t = e_t: the proportional term is kp·(e_t − e_{t−1})
        assert_close(deltas[1], lr * (ki * G2 + kp * (G2 - G1)), atol=1e-15)


def test_nupi_without_proportional_gain_is_sgd():
    pi, _ = run(ecl.dual.NuPI(0.1, kp=0.0, ki=1.0), [G1, G2, G3])
    sgd, _ = run(ecl.dual.SGD(0.1), [G1, G2, G3])
    for a, b in zip(pi, sgd, strict=True):
        assert_close(a, b, atol=0)


SCRIPT = [[1.0, 0.5], [-5.0, 0.5], [0.5, -2.0], [-0.25, 3.0]]


def projected_problem():
    script = [{"eq": v, "ineq": v, "pw": v, "pw_eq": v} for v in SCRIPT]
    return ecl.Problem(
        scripted(script),
        [
            ecl.Equality("eq", 2),
            ecl.Inequality("ineq", 2),
            ecl.Inequality("pw", pointwise=True, num_samples=3),
            ecl.Equality("pw_eq", pointwise=True, num_samples=3),
        ],
    )


BATCHES = [{"index": torch.tensor([2, 0])}]


def test_projection_after_every_sgd_step():
    solver = sgd_solver(projected_problem(), Vector([0.0]), lr=0.0, dual=ecl.dual.SGD(1.0))
    expected_eq = [[1.0, 0.5], [-4.0, 1.0], [-3.5, -1.0], [-3.75, 2.0]]
    expected_ineq = [[1.0, 0.5], [0.0, 1.0], [0.5, 0.0], [0.25, 3.0]]
    for step in range(4):
        solver.fit(BATCHES, max_steps=1)
        mult = solver.multipliers
        assert_close(mult["eq"], t64(expected_eq[step]), atol=1e-15)
        assert_close(mult["ineq"], t64(expected_ineq[step]), atol=1e-15)
        # pointwise tables: rows 2 and 0 get the two entries of the batch
        assert_close(mult["pw"][[2, 0]], t64(expected_ineq[step]), atol=1e-15)
        assert_close(mult["pw_eq"][[2, 0]], t64(expected_eq[step]), atol=1e-15)
        assert mult["pw"][1].item() == 0.0 and mult["pw_eq"][1].item() == 0.0
    assert (solver.history["multiplier/ineq[0]"] >= 0).all()
    assert solver.history["multiplier/eq[0]"].min() == -4.0  # free to go negative


@pytest.mark.parametrize(
    "make",
    [
        lambda: ecl.dual.Adam(0.3),
        lambda: ecl.dual.NuPI(0.3, kp=1.0, ki=1.0, nu=0.3),
    ],
    ids=["Adam", "NuPI"],
)
def test_projection_with_stateful_optimizers(make):
    """The optimizer's step does not depend on the multiplier, so the equality multiplier
    is the running sum of the steps and the inequality one the projected running sum."""
    solver = sgd_solver(projected_problem(), Vector([0.0]), lr=0.0, dual=make())
    reference = make()
    state = reference.init_state(torch.zeros(2, dtype=F64))
    eq = torch.zeros(2, dtype=F64)
    ineq = torch.zeros(2, dtype=F64)
    clamped = went_negative = False
    for values in SCRIPT:
        delta, state = reference.update(t64(values), state, torch.full((2,), 0.3, dtype=F64))
        eq = eq + delta
        clamped |= bool((ineq + delta < 0).any())
        went_negative |= bool((eq < 0).any())
        ineq = (ineq + delta).clamp_min(0)
        solver.fit(BATCHES, max_steps=1)
        mult = solver.multipliers
        assert_close(mult["eq"], eq, atol=1e-14)
        assert_close(mult["ineq"], ineq, atol=1e-14)
        assert_close(mult["pw"][[2, 0]], ineq, atol=1e-14)
        assert_close(mult["pw_eq"][[2, 0]], eq, atol=1e-14)
    assert clamped and went_negative  # the script exercises the projection


def test_adam_counts_steps_per_row_of_a_pointwise_table():
    """A row first visited at step 3 gets the bias correction of ITS first step."""
    script = [{"pw": [1.0, 2.0]}, {"pw": [4.0, -1.0]}, {"pw": [-3.0, 0.5]}]
    problem = ecl.Problem(scripted(script), [ecl.Equality("pw", pointwise=True, num_samples=4)])
    batches = [
        {"index": torch.tensor([0, 1])},
        {"index": torch.tensor([1, 0])},
        {"index": torch.tensor([3, 0])},
    ]
    lr, eps = 0.1, 1e-8
    solver = sgd_solver(problem, Vector([0.0]), lr=0.0, dual=ecl.dual.Adam(lr, eps=eps))
    solver.fit(batches, max_steps=3)
    mult = solver.multipliers["pw"]
    # row 3: one visit with g = −3 → lr·g/(|g| + ε)
    assert mult[3].item() == pytest.approx(-lr * 3 / (3 + eps), rel=1e-6)  # float32 moments
    assert mult[2].item() == 0.0  # never visited
    assert solver.dual_state["pw"]["steps"].tolist() == [[3], [2], [0], [1]]  # one per row
    # row 1: g = 2 then 4 (two steps of its own)
    b1, b2 = 0.9, 0.999
    m, v, mu = 0.0, 0.0, 0.0
    for t, g in enumerate([2.0, 4.0], start=1):
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        mu += lr * (m / (1 - b1**t)) / (math.sqrt(v / (1 - b2**t)) + eps)
    assert mult[1].item() == pytest.approx(mu, rel=1e-6)


def test_hyperparameters_are_reported():
    assert ecl.dual.SGD(0.1).hyperparameters() == {"type": "SGD", "lr": {"default": 0.1}}
    adam = ecl.dual.Adam({"default": 0.1, "x": 0.2}, betas=(0.5, 0.6), eps=1e-7)
    assert adam.hyperparameters() == {
        "type": "Adam",
        "lr": {"default": 0.1, "x": 0.2},
        "betas": [0.5, 0.6],
        "eps": 1e-7,
    }
    assert ecl.dual.NuPI(0.1, kp=2, ki=3, nu=0.5).hyperparameters()["kp"] == 2.0


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: ecl.dual.Adam(0.1, betas=(1.0, 0.9)), "betas must lie in"),
        (lambda: ecl.dual.Adam(0.1, eps=0.0), "eps must be positive"),
        (lambda: ecl.dual.NuPI(0.1, kp=-1.0), "gains must be ≥ 0"),
        (lambda: ecl.dual.NuPI(0.1, nu=1.0), "nu must lie in"),
        (lambda: ecl.dual.SGD({"eq": 0.1}), "needs a 'default' entry"),
    ],
)
def test_invalid_dual_hyperparameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()
