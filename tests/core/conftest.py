"""Shared fixtures for the core tests: tiny convex problems with closed-form KKT points.

Every problem here is a quadratic in a parameter vector ``θ`` held by :class:`Vector`, so
the solution and the multipliers are known exactly. The sign convention is DESIGN.md's:
``L = f + Σ λ (ĝ − c) + Σ μ (ĥ − b)``. Everything is float64 (model and multipliers).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

import eclearn as ecl

F64 = torch.float64


def t64(values) -> torch.Tensor:
    return torch.as_tensor(values, dtype=F64)


class Vector(nn.Module):
    """A parameter vector ``θ``; ``forward`` returns it and counts the calls (forward passes)."""

    def __init__(self, init) -> None:
        super().__init__()
        self.theta = nn.Parameter(t64(init).clone())
        self.calls = 0

    def forward(self) -> torch.Tensor:
        # a fresh tensor, like any model output (test_solver.py covers values that alias
        # the parameters themselves)
        self.calls += 1
        return self.theta.clone()


def assert_close(actual, expected, atol: float = 1e-12) -> None:
    """max |actual − expected| ≤ atol (torch.testing.assert_close costs seconds to import)."""
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    error = (actual.double() - expected.double()).abs().max().item() if actual.numel() else 0.0
    assert error <= atol, f"max abs error {error:.3e} > {atol:g}:\n{actual}\nvs\n{expected}"


def full_batch() -> list[dict[str, torch.Tensor]]:
    """A one-batch list (full-batch training on problems whose data lives in ``evaluate``)."""
    return [{"x": torch.zeros(1, dtype=F64)}]


def sgd_solver(problem, model, *, lr, dual=None, **kwargs) -> ecl.PrimalDual:
    """PrimalDual with plain SGD on the primal and float64 multipliers."""
    return ecl.PrimalDual(
        problem,
        model,
        torch.optim.SGD(model.parameters(), lr=lr),
        dual if dual is not None else ecl.dual.SGD(lr=0.2),
        dtype=F64,
        **kwargs,
    )


def reseed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Quadratic:
    """``min ½‖θ − a‖²`` under linear constraints, with its KKT point."""

    problem: ecl.Problem
    start: torch.Tensor
    theta: torch.Tensor  # θ*
    multipliers: dict[str, torch.Tensor]  # KKT multipliers by constraint name

    def model(self) -> Vector:
        return Vector(self.start)


# --- min ½‖θ − a‖²  s.t.  Aθ = b  (m = 2 equalities, n = 4) --------------------------------
A_EQ = t64([[1.0, 1.0, 0.0, 0.0], [0.0, 1.0, -1.0, 1.0]])
A_VEC = t64([1.0, -2.0, 0.5, 3.0])
B_EQ = t64([0.5, -1.0])


def vector_equality(**constraint_kwargs) -> Quadratic:
    """θ* = a − Aᵀμ*, μ* = (AAᵀ)⁻¹(Aa − b)."""

    def evaluate(model, batch):
        theta = model()
        return {"objective": 0.5 * ((theta - A_VEC) ** 2).sum(), "eq": A_EQ @ theta}

    mu = torch.linalg.solve(A_EQ @ A_EQ.T, A_EQ @ A_VEC - B_EQ)
    theta = A_VEC - A_EQ.T @ mu
    problem = ecl.Problem(evaluate, [ecl.Equality("eq", 2, rhs=B_EQ, **constraint_kwargs)])
    return Quadratic(problem, torch.zeros(4, dtype=F64), theta, {"eq": mu})


def active_inactive(inactive_init: float = 1.0) -> Quadratic:
    """min ½‖θ − (2, −1)‖²  s.t.  θ₁ ≤ 0.5 (active: λ* = 1.5),  θ₂ ≤ 0 (inactive: λ* = 0)."""

    a = t64([2.0, -1.0])

    def evaluate(model, batch):
        theta = model()
        return {
            "objective": 0.5 * ((theta - a) ** 2).sum(),
            "active": theta[0],
            "inactive": theta[1],
        }

    problem = ecl.Problem(
        evaluate,
        [
            ecl.Inequality("active", bound=0.5),
            ecl.Inequality("inactive", bound=0.0, init=inactive_init),
        ],
    )
    return Quadratic(
        problem,
        torch.zeros(2, dtype=F64),
        t64([0.5, -1.0]),
        {"active": t64([1.5]), "inactive": t64([0.0])},
    )


def mixed() -> Quadratic:
    """min ½‖θ − (2, 0)‖²  s.t.  θ₁ + θ₂ = 1,  θ₁ ≤ 0.2.

    KKT: θ₁ = a₁ − μ − λ, θ₂ = a₂ − μ, θ₁ = 0.2 → θ* = (0.2, 0.8), μ* = −0.8, λ* = 2.6.
    """

    a = t64([2.0, 0.0])

    def evaluate(model, batch):
        theta = model()
        return {"objective": 0.5 * ((theta - a) ** 2).sum(), "sum": theta.sum(), "cap": theta[0]}

    problem = ecl.Problem(
        evaluate, [ecl.Equality("sum", rhs=1.0), ecl.Inequality("cap", bound=0.2)]
    )
    return Quadratic(
        problem,
        torch.zeros(2, dtype=F64),
        t64([0.2, 0.8]),
        {"sum": t64([-0.8]), "cap": t64([2.6])},
    )


@pytest.fixture
def seeded() -> Callable[[int], None]:
    """Seed Python, NumPy and torch (restores nothing: every test seeds what it uses)."""
    reseed(0)
    return reseed


def scripted(script: list[dict[str, list[float]]]):
    """An ``evaluate`` that returns, at its t-th call, the constraint values ``script[t]``
    (constants, so the violations the dual steps see are exactly the script's)."""
    calls = iter(script)

    def evaluate(model, batch):
        theta = model()
        zero = 0.0 * theta.sum()
        values = {name: zero + t64(v) for name, v in next(calls).items()}
        return {"objective": 0.5 * theta.pow(2).sum(), **values}

    return evaluate
