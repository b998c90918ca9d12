"""One violation measure — |v| for equalities, [v]₊ for inequalities, per sample for
pointwise constraints — read the same way by history, progress, stopping, diagnostics,
evaluate and selection. Guards the bug where a pointwise inequality satisfied with slack was
read as violated by its slack."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import eclearn as ecl
from eclearn.measures import beyond, excess, feasibility_key, worst
from eclearn.solver.callbacks import status

from .conftest import F64, Vector, t64

N = 6


def slack_problem():
    """min ½‖θ − a‖² s.t. θ_i − 2 ≤ 0 for every sample i: a = 0 leaves slack 2 everywhere."""

    def evaluate(model, batch):
        theta = model()
        rows = theta[batch["index"]]
        return {"objective": 0.5 * theta.pow(2).sum(), "cap": rows - 2.0}

    return ecl.Problem(
        evaluate, [ecl.Inequality("cap", pointwise=True, num_samples=N, tolerance=1e-3)]
    )


def test_excess_rules_on_tensors_and_arrays():
    v = t64([-0.3, 0.0, 0.2])
    assert excess(v, False).tolist() == pytest.approx([0.3, 0.0, 0.2])
    assert excess(v, True).tolist() == pytest.approx([0.0, 0.0, 0.2])
    mask = torch.tensor([True, False, True])
    assert excess(v, mask).tolist() == pytest.approx([0.0, 0.0, 0.2])
    assert excess(np.array([-0.3, 0.2]), np.array([False, True])).tolist() == [0.3, 0.2]
    assert beyond(v, False, 0.25).tolist() == pytest.approx([0.05, 0.0, 0.0])
    assert worst([0.1, float("nan"), 0.3]) == 0.3 and worst([]) == 0.0
    assert feasibility_key(0.0, 2.0) < feasibility_key(1e-9, -100.0)
    assert feasibility_key(0.1, 5.0) < feasibility_key(0.2, -5.0)


def test_a_pointwise_inequality_with_slack_is_feasible_everywhere():
    model = Vector([0.5] * N)
    solver = ecl.PrimalDual(slack_problem(), model, torch.optim.SGD(model.parameters(), lr=0.1))
    data = ecl.Batches({"x": torch.zeros(N, 1)}, batch_size=3, shuffle=False)
    result = solver.fit(data, max_steps=400, stopping=ecl.StoppingRule(window=20), warn=False)
    # converged and feasible: no signature, the stopping rule fired
    assert result.diagnostics == []
    assert result.stop_reason == "converged"
    # the history's excess is 0 (the slack is not a violation), and so is the progress bar's
    assert result.history["excess/cap/max"][-1] == 0.0
    assert status(solver)["max viol"] == "0"
    assert solver.history.schema.worst_of(solver.latest()) == 0.0
    # held-out verdict: max excess 0, all satisfied
    report = ecl.evaluate(slack_problem(), model, [{"index": torch.arange(N)}])
    assert report["cap"].extra["max_excess"] == 0.0
    assert report["cap"].extra["fraction_satisfied"] == 1.0 and report.feasible
    assert report.worst_beyond == 0.0
    assert "max excess=0" in str(report)


def test_progress_shows_the_worst_excess_not_the_slack():
    """Progress displays read the history schema (eclearn.solver.callbacks.status)."""

    def evaluate(model, batch):
        theta = model()
        return {"objective": theta.pow(2).sum(), "slack": theta[0] - 5.0, "eq": theta[1] - 1.0}

    problem = ecl.Problem(evaluate, [ecl.Inequality("slack"), ecl.Equality("eq", rhs=0.0)])
    model = Vector([0.0, 0.0])
    solver = ecl.PrimalDual(problem, model, torch.optim.SGD(model.parameters(), lr=0.0))
    solver.fit([{"x": torch.zeros(1)}], max_steps=1, warn=False)
    # the inequality has slack 5 (excess 0), the equality is off by 1 (excess 1)
    assert status(solver)["max viol"] == "1"


def test_a_ge_inequality_measures_bound_minus_value():
    def evaluate(model, batch):
        theta = model()
        return {"objective": 0.5 * (theta - 3.0).pow(2).sum(), "floor": theta.sum().reshape(1)}

    problem = ecl.Problem(evaluate, [ecl.Inequality("floor", bound=4.0, sense=">=")])
    model = Vector([0.0])
    solver = ecl.PrimalDual(
        problem, model, torch.optim.SGD(model.parameters(), lr=0.2), ecl.dual.SGD(0.5), dtype=F64
    )
    solver.fit([{"x": torch.zeros(1)}], max_steps=600, warn=False)
    # min ½(θ − 3)² s.t. θ ≥ 4: θ* = 4, λ* = 1 (L = f + λ(4 − θ))
    assert float(model.theta.detach()) == pytest.approx(4.0, abs=1e-4)
    assert solver.multipliers["floor"].item() == pytest.approx(1.0, abs=1e-4)
    row = solver.history.last()
    assert row["violation/floor"] == pytest.approx(4.0 - row["value/floor"], abs=1e-12)
    assert ecl.Inequality("floor", bound=4.0, sense=">=").describe()["sense"] == ">="
    with pytest.raises(ecl.ProblemError, match="sense must be"):
        ecl.Inequality("x", sense=">")
