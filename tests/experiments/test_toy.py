"""The toy experiment's closed-form reference and config checks."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from eclearn.experiments.toy import (
    ToyConfig,
    ToyExperiment,
    apply,
    kkt_solution,
    make_data,
    objective_of,
    statistics,
)


@pytest.fixture
def data():
    torch.manual_seed(0)
    return make_data(1024, ToyConfig())


def test_kkt_solution_satisfies_the_kkt_conditions(data):
    config = ToyConfig()
    sol = kkt_solution(data, config.target, config.bound)
    s = statistics(data)
    theta, mu, lam = sol["theta"], sol["mu"], sol["lam"]
    assert sol["active"] and float(lam) > 0
    gradient = 2 * (apply(s["hessian"], theta) - s["linear"])
    gradient = gradient + (s["group_mean"] * mu[:, None]).sum(0) + lam * s["moment"]
    assert gradient.abs().max() < 1e-10
    assert (apply(s["group_mean"], theta) - config.target).abs().max() < 1e-10
    assert abs(float(apply(s["moment"], theta)) - config.bound) < 1e-10
    assert sol["objective"] == pytest.approx(objective_of(theta, s))
    # The constrained optimum costs more than the unconstrained least squares.
    assert sol["objective"] > objective_of(sol["unconstrained"], s)


def test_loose_bound_leaves_the_inequality_inactive(data):
    sol = kkt_solution(data, 0.75, 100.0)
    assert not sol["active"] and float(sol["lam"]) == 0.0
    assert float(apply(statistics(data)["moment"], sol["theta"])) < 100.0


def test_reference_is_reproducible_bit_for_bit(data):
    a = kkt_solution(data, 0.75, 0.5)
    b = kkt_solution({k: v.clone() for k, v in data.items()}, 0.75, 0.5)
    assert torch.equal(a["theta"], b["theta"]) and torch.equal(a["mu"], b["mu"])


def test_more_groups_than_features_is_rejected():
    with pytest.raises(ValidationError, match=r"groups \(5\) must be ≤ dim \(4\)"):
        ToyConfig(groups=5, dim=4)


def test_penalty_implied_multipliers():
    config = ToyConfig(formulation="penalty", penalty_weight=3.0, penalty_power=2)
    eq = torch.tensor([0.1, -0.2, 0.0], dtype=torch.float64)
    implied = ToyExperiment._implied_multipliers(config, eq, torch.tensor(-0.3))
    assert implied.tolist() == pytest.approx([0.6, -1.2, 0.0, 0.0])
    implied = ToyExperiment._implied_multipliers(config, eq, torch.tensor(0.5))
    assert implied[-1].item() == pytest.approx(3.0)
