"""Certificates: sensitivity against closed form, interval coverage, verdicts, duality gap."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import eclearn as ecl


class Theta(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(d, dtype=torch.float64))


def quadratic(a, A, b):
    def evaluate(model, batch):
        t = model.theta
        return {"objective": 0.5 * ((t - a) ** 2).sum(), "lin": A @ t}

    return ecl.Problem(evaluate, [ecl.Equality("lin", size=A.shape[0], rhs=b, tolerance=1e-6)])


def solve(problem, d, steps=3000):
    model = Theta(d)
    solver = ecl.PrimalDual(
        problem,
        model,
        torch.optim.SGD(model.parameters(), lr=0.2),
        ecl.dual.SGD(0.2),
        dtype=torch.float64,
    )
    result = solver.fit([{}], max_steps=steps, warn=False)
    return model, result


def test_sensitivity_prediction_matches_resolve_to_first_order():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(4, generator=gen, dtype=torch.float64)
    A = torch.randn(2, 4, generator=gen, dtype=torch.float64)
    b = torch.randn(2, generator=gen, dtype=torch.float64)
    problem = quadratic(a, A, b)
    _, result = solve(problem, 4)
    mu_star = torch.linalg.solve(A @ A.T, A @ a - b)
    torch.testing.assert_close(result.multipliers["lin"], mu_star, atol=1e-8, rtol=0)

    def objective_of(p):
        m, _ = solve(p, 4)
        return float(0.5 * ((m.theta.detach() - a) ** 2).sum())

    delta = 1e-3
    check = ecl.check_sensitivity(problem, "lin", delta, result.multipliers, objective_of)
    assert check.predicted_change == pytest.approx(-float(mu_star.abs().sum()) * delta)
    # first order: the error is O(δ²)
    assert abs(check.resolved_change - check.predicted_change) < 10 * delta**2
    assert check.resolved_change < 0  # relaxing improves the optimum


def mean_problem(target: float, tol: float):
    def evaluate(model, batch):
        return {
            "objective": torch.zeros(()),
            "mean": ecl.Ratio(batch["z"].sum().reshape(1), torch.tensor([float(len(batch["z"]))])),
        }

    return ecl.Problem(evaluate, [ecl.Equality("mean", rhs=target, tolerance=tol)])


@pytest.mark.parametrize("method", ["bootstrap", "hoeffding"])
def test_interval_covers_true_value_at_about_nominal_rate(method):
    rng = np.random.default_rng(0)
    p, n, reps = 0.3, 100, 80
    problem = mean_problem(p, 0.05)
    model = nn.Linear(1, 1)
    covered = 0
    for _ in range(reps):
        z = torch.from_numpy((rng.random(n) < p).astype(np.float64))
        blocks = [{"z": z[i : i + 1]} for i in range(n)]
        cert = ecl.certify(
            problem,
            model,
            {"mean": torch.zeros(1)},
            blocks,
            blocks,
            method=method,
            bounds={"mean": (0.0, 1.0)},
            n_resamples=400,
            seed=int(rng.integers(1 << 30)),
        )
        low, high = cert.constraints["mean"].interval[0]
        covered += low <= p <= high
    rate = covered / reps
    if method == "bootstrap":
        assert 0.85 <= rate <= 1.0
    else:  # Hoeffding is conservative
        assert rate >= 0.95


def test_verdicts_and_summary():
    z = torch.full((200,), 0.5, dtype=torch.float64)
    z[:100] = 0.49
    blocks = [{"z": z[i : i + 1]} for i in range(200)]
    model = nn.Linear(1, 1)
    held = ecl.certify(
        mean_problem(0.495, 0.02),
        model,
        {"mean": torch.tensor([0.3])},
        blocks,
        blocks,
        n_resamples=300,
    )
    assert held.constraints["mean"].verdict == "satisfied"
    assert "hold on held-out data at 95% confidence" in held.summary()
    assert "about 0.006" in held.summary(delta=0.02)  # |μ| δ = 0.3 × 0.02
    off = ecl.certify(
        mean_problem(0.9, 0.02),
        model,
        {"mean": torch.tensor([0.3])},
        blocks,
        blocks,
        n_resamples=300,
    )
    assert off.constraints["mean"].verdict == "violated"
    noisy = torch.from_numpy((np.random.default_rng(1).random(40) < 0.5).astype(np.float64))
    few = [{"z": noisy[i : i + 1]} for i in range(40)]
    unsure = ecl.certify(
        mean_problem(float(noisy.mean()), 0.02),
        model,
        {"mean": torch.zeros(1)},
        few,
        few,
        n_resamples=300,
    )
    assert unsure.constraints["mean"].verdict == "cannot tell"
    assert "cannot tell" in unsure.summary()


def test_hoeffding_needs_bounds():
    with pytest.raises(ValueError, match="Hoeffding intervals need bounds"):
        ecl.certify(
            mean_problem(0.5, 0.1),
            nn.Linear(1, 1),
            {"mean": torch.zeros(1)},
            [{"z": torch.ones(2)}],
            [{"z": torch.ones(2)}],
            method="hoeffding",
        )


def test_duality_gap_is_small_at_the_solution_and_flags_infeasibility():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(3, generator=gen, dtype=torch.float64)
    A = torch.randn(1, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(1, generator=gen, dtype=torch.float64)
    problem = quadratic(a, A, b)
    model, result = solve(problem, 3)
    gap = ecl.duality_gap(
        problem,
        model,
        result.multipliers,
        [{}],
        steps=300,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
    )
    assert gap["feasible"] and abs(gap["gap"]) < 1e-8
    far = Theta(3)
    gap_far = ecl.duality_gap(
        problem,
        far,
        result.multipliers,
        [{}],
        steps=300,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
    )
    assert not gap_far["feasible"]
