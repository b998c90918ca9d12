"""ecl.Proxy(surrogate, exact): the primal step differentiates the surrogate, everything
else (dual step, history, stopping, selection, evaluate, certify) uses the exact value."""

from __future__ import annotations

import math

import pytest
import torch

import eclearn as ecl

from .conftest import F64, Vector, assert_close, t64

N = 100
X = (torch.arange(N, dtype=F64) + 0.5) / N  # 0.005, 0.015, ..., 0.995
TAU = 0.05


def rate_problem(rate=0.3, tolerance=0.011, proxy=True, init=0.0):
    """min ½(θ − 1)²  s.t.  P(x < θ) = rate, the probability being the exact step-function
    fraction of the 100 points below θ (no gradient), trained through a sigmoid surrogate."""

    def evaluate(model, batch):
        theta = model()[0]
        exact = (theta.detach() > X).to(F64).mean().reshape(1)
        smooth = torch.sigmoid((theta - X) / TAU).mean().reshape(1)
        value = ecl.Proxy(surrogate=smooth, exact=exact) if proxy else smooth
        return {"objective": 0.5 * (theta - 1.0) ** 2, "rate": value}

    return ecl.Problem(evaluate, [ecl.Equality("rate", rhs=rate, tolerance=tolerance, init=init)])


def batch():
    return [{"x": torch.zeros(1, dtype=F64)}]


def test_multipliers_follow_the_exact_statistic_and_reach_it():
    model = Vector([0.9])
    solver = ecl.PrimalDual(
        rate_problem(), model, torch.optim.SGD(model.parameters(), lr=0.02), ecl.dual.SGD(0.5)
    )
    result = solver.fit(batch(), max_steps=3000, warn=False)
    history = result.history
    # the recorded value is the exact fraction: a multiple of 1/N at every step
    values = history["value/rate"]
    assert bool((abs(values * N - (values * N).round()) < 1e-9).all())
    # the surrogate is recorded beside it, and differs
    assert "surrogate/rate" in history and "surrogate/objective" in history
    assert abs(history["surrogate/rate"] - values).max() > 1e-3
    # converged on the exact statistic: within one sample of 30 %
    theta = float(model.theta.detach())
    assert abs(float((theta > X).double().mean()) - 0.3) <= 0.011
    # the last steps' dual moves are exact violations times the dual lr
    mu = history["multiplier/rate"]
    moves = mu[1:] - mu[:-1]
    assert_close(
        torch.as_tensor(moves[-50:]), 0.5 * torch.as_tensor(history["violation/rate"][-50:])
    )


def test_first_step_by_hand_primal_follows_the_surrogate():
    """One step from θ₀ = 0.2, μ₀ = 2: the primal step uses ∂/∂θ of ½(θ−1)² + μ₀·surrogate;
    the dual step moves μ by η·(exact − rate)."""
    lr, eta, theta0, mu0 = 0.1, 0.5, 0.2, 2.0
    model = Vector([theta0])
    problem = rate_problem(init=mu0)
    solver = ecl.PrimalDual(
        problem, model, torch.optim.SGD(model.parameters(), lr=lr), ecl.dual.SGD(eta)
    )
    solver.fit(batch(), max_steps=1, warn=False)
    t = torch.tensor(theta0, dtype=F64, requires_grad=True)
    surrogate = torch.sigmoid((t - X) / TAU).mean()
    (grad,) = torch.autograd.grad(0.5 * (t - 1) ** 2 + mu0 * surrogate, t)
    assert float(model.theta.detach()) == pytest.approx(theta0 - lr * float(grad), abs=1e-12)
    exact = float((theta0 > X).double().mean())  # 0.2 exactly
    assert solver.multipliers["rate"].item() == pytest.approx(mu0 + eta * (exact - 0.3), abs=1e-12)
    row = solver.history.last()
    assert row["value/rate"] == pytest.approx(exact, abs=1e-15)
    assert row["surrogate/rate"] == pytest.approx(float(surrogate.detach()), abs=1e-12)


@pytest.mark.parametrize(
    "formulation",
    [ecl.Lagrangian(), ecl.Penalty(3.0, power=2), ecl.AugmentedLagrangian(4.0)],
    ids=["lagrangian", "penalty", "augmented"],
)
def test_every_formulation_differentiates_its_term_at_the_surrogate(formulation):
    """Proxy differentiates the formulation's term built on the surrogate value (for the
    Lagrangian the same gradient as straight-through; for the others the conventional one)."""
    theta0, mu0, lr = 0.35, 1.5, 0.1
    model = Vector([theta0])
    problem = rate_problem(init=mu0)
    solver = ecl.PrimalDual(
        problem,
        model,
        torch.optim.SGD(model.parameters(), lr=lr),
        ecl.dual.SGD(0.0),
        formulation=formulation,
    )
    solver.fit(batch(), max_steps=1, warn=False)
    t = torch.tensor(theta0, dtype=F64, requires_grad=True)
    v = torch.sigmoid((t - X) / TAU).mean() - 0.3  # surrogate violation
    if isinstance(formulation, ecl.Penalty):
        term = 3.0 * v.abs() ** 2
    elif isinstance(formulation, ecl.AugmentedLagrangian):
        term = mu0 * v + 0.5 * 4.0 * v * v
    else:
        term = mu0 * v
    (grad,) = torch.autograd.grad(0.5 * (t - 1) ** 2 + term, t)
    assert float(model.theta.detach()) == pytest.approx(theta0 - lr * float(grad), abs=1e-12)


def test_evaluate_reports_the_exact_part_and_the_surrogate_on_request():
    problem = rate_problem()
    model = Vector([0.404])
    exact = ecl.evaluate(problem, model, batch())
    smooth = ecl.evaluate(problem, model, batch(), exact=False)
    assert exact["rate"].value.item() == pytest.approx(0.40, abs=1e-15)
    expected = float(torch.sigmoid((0.404 - X) / TAU).mean())
    assert smooth["rate"].value.item() == pytest.approx(expected, abs=1e-12)


def test_stopping_and_selection_judge_the_exact_value():
    model = Vector([0.9])
    selector = ecl.select.BestFeasible(on="steps")
    solver = ecl.PrimalDual(
        rate_problem(), model, torch.optim.SGD(model.parameters(), lr=0.02), ecl.dual.SGD(0.5)
    )
    result = solver.fit(
        batch(), max_steps=3000, select=selector, stopping=ecl.StoppingRule(window=50), warn=False
    )
    chosen = float(result.selected.state["theta"])
    assert abs(float((chosen > X).double().mean()) - 0.3) <= 0.011  # feasible on the exact rate
    assert result.selected.feasible


def test_proxy_objective_records_the_exact_part():
    def evaluate(model, batch):
        theta = model()
        smooth = (theta - 0.25).pow(2).sum()
        return {"objective": ecl.Proxy(smooth, torch.round(smooth.detach() * 10) / 10)}

    model = Vector([1.0])
    solver = ecl.PrimalDual(ecl.Problem(evaluate), model, torch.optim.SGD(model.parameters(), 0.1))
    solver.fit(batch(), max_steps=1, warn=False)
    row = solver.history.last()
    assert row["objective"] == pytest.approx(0.6) and row["surrogate/objective"] == pytest.approx(
        0.5625
    )


def test_proxy_parts_may_be_ratios_and_are_validated():
    def evaluate(model, batch):
        theta = model()
        num = torch.sigmoid(theta).sum().reshape(1)
        return {
            "r": ecl.Proxy(ecl.Ratio(num, t64([2.0])), ecl.Ratio(num.detach().round(), t64([2.0])))
        }

    problem = ecl.Problem(evaluate, [ecl.Equality("r", rhs=0.5)])
    ev = problem(Vector([0.3, 0.1]), batch()[0])
    assert "r" in ev.ratios and "r" in ev.exact_ratios
    assert ev.measured("r").item() == pytest.approx(0.5)
    with pytest.raises(TypeError, match=r"exact must be a tensor or an ecl\.Ratio"):
        ecl.Proxy(torch.zeros(1), 0.5)


def test_returning_a_proxy_only_after_the_history_began_is_an_error():
    calls = {"n": 0}

    def evaluate(model, batch):
        calls["n"] += 1
        theta = model()
        value = theta.sum().reshape(1)
        return {
            "objective": theta.pow(2).sum(),
            "h": ecl.Proxy(value, value.detach()) if calls["n"] > 2 else value,
        }

    model = Vector([1.0])
    solver = ecl.PrimalDual(
        ecl.Problem(evaluate, [ecl.Equality("h")]), model, torch.optim.SGD(model.parameters(), 0.1)
    )
    with pytest.raises(ecl.ProblemError, match="same kind of value"):
        solver.fit(batch(), max_steps=5, warn=False)


def test_proxy_history_resumes_bitwise():
    def make():
        model = Vector([0.9])
        return ecl.PrimalDual(
            rate_problem(), model, torch.optim.SGD(model.parameters(), lr=0.02), ecl.dual.SGD(0.5)
        )

    straight = make()
    straight.fit(batch(), max_steps=40, warn=False)
    first = make()
    first.fit(batch(), max_steps=15, warn=False)
    resumed = make()
    resumed.load_state_dict(first.state_dict())
    resumed.fit(batch(), max_steps=25, warn=False)
    assert resumed.history.columns == straight.history.columns
    assert (resumed.history.to_numpy() == straight.history.to_numpy()).all()
    assert math.isfinite(resumed.history.last()["surrogate/rate"])
