"""Boundary conditions written as users write them: signed equalities ``u(0) = 0``,
``u(1) = 0`` (average or pointwise) on a 1D Poisson problem ``−u'' = π² sin(πx)`` with the
PDE residual as the objective (solution ``u = sin(πx)``).

The residual does not see ``u + a + bx``, so the plain Lagrangian ``f + μ u(0)`` is
unbounded below along it for any ``μ ≠ 0``: dual ascent then oscillates whatever its rate
(measured: relative error 4.7 and 7.9 after 3000 steps). The augmented term bounds it;
with the default dual optimizer, ``AugmentedLagrangian(rho=1)`` solves the problem, and the
plain Lagrangian's failure is reported with that remedy instead of passing silently.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import eclearn as ecl

F64 = torch.float64
X = torch.linspace(0, 1, 101, dtype=F64)[1:-1, None]
F = math.pi**2 * torch.sin(math.pi * X)
ENDS = torch.tensor([[0.0], [1.0]], dtype=F64)


def evaluate_with(pointwise: bool):
    def evaluate(model, batch):
        x = X.clone().requires_grad_(True)
        u = model(x)
        (du,) = torch.autograd.grad(u.sum(), x, create_graph=True)
        (d2u,) = torch.autograd.grad(du.sum(), x, create_graph=True)
        residual = (-d2u - F).pow(2).mean()
        ends = model(ENDS).reshape(2)
        if pointwise:
            return {"objective": residual, "bc": ends[batch["index"]]}
        return {"objective": residual, "left": ends[0], "right": ends[1]}

    return evaluate


def solve(pointwise: bool, formulation, steps: int):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))
    net = net.to(F64)
    if pointwise:
        constraints = [ecl.Equality("bc", pointwise=True, num_samples=2)]
        batches = ecl.Batches({"end": torch.arange(2)})
    else:
        constraints = [ecl.Equality("left"), ecl.Equality("right")]
        batches = [{"x": torch.zeros(1)}]
    problem = ecl.Problem(evaluate_with(pointwise), constraints)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    solver = ecl.PrimalDual(problem, net, optimizer, formulation=formulation)
    result = solver.fit(batches, max_steps=steps, warn=False)
    grid = torch.linspace(0, 1, 1001, dtype=F64)[:, None]
    with torch.no_grad():
        exact = torch.sin(math.pi * grid)
        error = float((net(grid) - exact).norm() / exact.norm())
    return error, result


@pytest.mark.parametrize("pointwise", [False, True], ids=["average", "pointwise"])
def test_augmented_lagrangian_with_the_default_dual_solves_signed_conditions(pointwise):
    error, result = solve(pointwise, ecl.AugmentedLagrangian(rho=1.0), steps=3000)
    assert error < 1e-3
    assert result.diagnostics == []


@pytest.mark.parametrize("pointwise", [False, True], ids=["average", "pointwise"])
def test_the_plain_lagrangian_failure_is_reported_with_the_remedy(pointwise):
    error, result = solve(pointwise, None, steps=1500)
    assert error > 0.1  # unbounded along u + a + bx: no dual rate fixes it
    assert {d.kind for d in result.diagnostics} == {"oscillation"}
    assert all("AugmentedLagrangian(rho=1)" in d.message for d in result.diagnostics)
