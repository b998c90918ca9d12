"""Dual learning-rate schedules (applied, changeable between fits, resumed exactly) and
growing penalty weights / augmented-Lagrangian ρ."""

from __future__ import annotations

import pytest
import torch

import eclearn as ecl

from .conftest import F64, Vector, assert_close, scripted, t64

SCRIPT = [{"h": [1.0]}, {"h": [2.0]}, {"h": [-1.0]}, {"h": [0.5]}, {"h": [4.0]}]


def scripted_solver(dual, **kwargs):
    problem = ecl.Problem(scripted(SCRIPT), [ecl.Equality("h")])
    model = Vector([0.0])
    return ecl.PrimalDual(
        problem, model, torch.optim.SGD(model.parameters(), lr=0.0), dual, dtype=F64, **kwargs
    )


def test_a_callable_schedule_scales_each_dual_step():
    solver = scripted_solver(ecl.dual.SGD(0.5, schedule=lambda k: 1.0 / (k + 1)))
    solver.fit([{"x": torch.zeros(1)}], max_steps=4, warn=False)
    expected = sum(0.5 / (k + 1) * SCRIPT[k]["h"][0] for k in range(4))
    assert solver.multipliers["h"].item() == pytest.approx(expected, abs=1e-15)
    assert solver.history["dual_lr"].tolist() == [1.0, 0.5, 1 / 3, 0.25]


def test_a_decay_factor_is_geometric():
    solver = scripted_solver(ecl.dual.SGD(1.0, schedule=0.5))
    solver.fit([{"x": torch.zeros(1)}], max_steps=3, warn=False)
    assert solver.multipliers["h"].item() == pytest.approx(1.0 + 0.5 * 2.0 - 0.25, abs=1e-15)


@pytest.mark.parametrize("dual", ["sgd", "adam"])
def test_schedule_resumes_bitwise(dual):
    def make():
        opt = {"sgd": ecl.dual.SGD, "adam": ecl.dual.Adam}[dual]
        return scripted_solver(opt(0.3, schedule=lambda k: 0.9**k))

    batch = [{"x": torch.zeros(1)}]
    straight = make()
    straight.fit(batch, max_steps=5, warn=False)
    first = make()
    first.fit(batch, max_steps=2, warn=False)
    resumed = make()
    resumed.load_state_dict(first.state_dict())
    # the scripted evaluate restarts its script: feed the remaining steps explicitly
    resumed.problem.evaluate_fn = scripted(SCRIPT[2:])
    resumed.fit(batch, max_steps=3, warn=False)
    assert torch.equal(resumed.multipliers["h"], straight.multipliers["h"])
    assert (resumed.history.to_numpy() == straight.history.to_numpy()).all()


def test_changing_the_dual_rate_between_fits_takes_effect():
    dual = ecl.dual.SGD(0.1)
    solver = scripted_solver(dual)
    batch = [{"x": torch.zeros(1)}]
    solver.fit(batch, max_steps=1, warn=False)
    dual.set_lr(1.0)
    solver.fit(batch, max_steps=1, warn=False)
    assert solver.multipliers["h"].item() == pytest.approx(0.1 * 1.0 + 1.0 * 2.0, abs=1e-15)
    dual.lrs = {"default": 0.0, "h": 2.0}  # per-constraint mapping, also picked up
    solver.fit(batch, max_steps=1, warn=False)
    assert solver.multipliers["h"].item() == pytest.approx(2.1 - 2.0, abs=1e-15)


def test_bad_schedules_are_refused():
    with pytest.raises(ValueError, match="decay factor in"):
        ecl.dual.SGD(0.1, schedule=1.5)
    solver = scripted_solver(ecl.dual.SGD(0.1, schedule=lambda k: float("nan")))
    with pytest.raises(ValueError, match="dual schedule returned nan at dual step 0"):
        solver.fit([{"x": torch.zeros(1)}], max_steps=1, warn=False)
    with pytest.raises(ValueError, match="growth factor ≥ 1"):
        ecl.AugmentedLagrangian(1.0, schedule=0.5)


def test_augmented_rho_grows_on_its_schedule_and_is_capped():
    form = ecl.AugmentedLagrangian(1.0, schedule=2.0, max_factor=4.0)
    rhos = []
    for k in range(5):
        form.at_step(k)
        rhos.append(form.current_rho)
    assert rhos == [1.0, 2.0, 4.0, 4.0, 4.0]
    # the term uses the current ρ: μv + ρ/2 v²
    v, mu = t64([0.5]), t64([1.0])
    assert_close(form.term(v, mu, torch.tensor([False]), None), t64([0.5 + 2.0 * 0.25]))


def test_penalty_weights_grow_on_their_schedule_during_fit():
    def evaluate(model, batch):
        theta = model()
        return {"objective": 0.5 * (theta - 1.0).pow(2).sum(), "h": theta.sum().reshape(1)}

    form = ecl.Penalty(1.0, power=2, schedule=lambda k: 1.0 + k)
    model = Vector([1.0])
    solver = ecl.PrimalDual(
        ecl.Problem(evaluate, [ecl.Equality("h")]),
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        formulation=form,
    )
    solver.fit([{"x": torch.zeros(1)}], max_steps=2, warn=False)
    # a penalty takes no dual steps: its schedule follows the training steps.
    # step 1 at weight 1: gradient (θ − 1) + 2θ = 2 at θ = 1 → θ = 0.8;
    # step 2 at weight 2: gradient (0.8 − 1) + 4·0.8 = 3.0 → θ = 0.8 − 0.3 = 0.5
    assert form.factor == 2.0
    assert float(model.theta.detach()) == pytest.approx(0.5, abs=1e-12)
