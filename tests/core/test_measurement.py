"""The measurement pass (L-BFGS, ``mode="alternating"``) of statistics built from input
derivatives, and the errors a plain Lagrangian that is unbounded below raises."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import eclearn as ecl
from eclearn.pde import laplacian, partial
from eclearn.problem import ProblemError

DTYPE = torch.float64


class Quadratic(nn.Module):
    """u(x) = a x² + b x: u'' = 2a in closed form."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(3.0, dtype=DTYPE))
        self.b = nn.Parameter(torch.tensor(0.5, dtype=DTYPE))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * x**2 + self.b * x


def residual_problem() -> ecl.Problem:
    """objective (−u'' − 2)² = (2a + 2)²; constraint u(1) = a + b = 0 (closed forms)."""

    def evaluate(model, batch):
        x = batch["x"].detach().requires_grad_(True)
        residual = -partial(model(x), x, dim=0, order=2) - 2.0
        return {
            "objective": residual.square().mean(),
            "end": model(torch.ones(1, 1, dtype=DTYPE))[0, 0],
        }

    return ecl.Problem(evaluate, [ecl.Equality("end")])


BATCH = {"x": torch.linspace(0, 1, 11, dtype=DTYPE)[:, None]}


def lbfgs(model):
    return torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=3)


@pytest.mark.parametrize(
    "make, mode",
    [
        (lambda m: torch.optim.SGD(m.parameters(), lr=0.01), "alternating"),
        (lbfgs, "simultaneous"),
    ],
)
def test_measured_pde_residual_matches_closed_form(make, mode):
    torch.manual_seed(0)
    model = Quadratic()
    solver = ecl.PrimalDual(
        residual_problem(), model, make(model), ecl.dual.SGD(0.1), mode=mode,
        formulation=ecl.AugmentedLagrangian(rho=1.0),
    )  # fmt: skip
    mu = 0.0
    for _ in range(4):
        solver.fit([BATCH], max_steps=1, warn=False)
        a, b = model.a.item(), model.b.item()
        row = solver.history.last()
        # the history and the dual step see the model after the primal update
        assert row["objective"] == pytest.approx((2 * a + 2) ** 2, rel=1e-12, abs=1e-12)
        assert row["violation/end"] == pytest.approx(a + b, rel=1e-12, abs=1e-12)
        mu = mu + 0.1 * 1.0 * (a + b)  # dual step along the measured violation: μ + η (h − 0)
        assert solver.multipliers["end"].item() == pytest.approx(mu, rel=1e-9, abs=1e-12)
    objectives = solver.history["objective"]
    assert len(set(objectives.tolist())) == len(objectives)  # not frozen at one value
    assert all(p.requires_grad for p in model.parameters())  # flags restored


def test_measurement_of_ordinary_problem_builds_no_graph():
    seen: list[bool] = []
    model = nn.Linear(2, 1).to(DTYPE)

    def evaluate(model, batch):
        out = model(batch["x"]).squeeze(-1)
        seen.append(out.requires_grad)
        return {"objective": out.square().mean(), "m": out.mean()}

    solver = ecl.PrimalDual(
        ecl.Problem(evaluate, [ecl.Equality("m")]),
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        mode="alternating",
    )
    solver.fit([{"x": torch.randn(8, 2, dtype=DTYPE)}], max_steps=3, warn=False)
    assert seen == [True, False] * 3  # training pass, then a graph-free measurement


def test_partial_refuses_to_run_without_autograd():
    x = torch.linspace(0, 1, 5, dtype=DTYPE)[:, None].requires_grad_(True)
    u = torch.sin(x)
    with torch.no_grad(), pytest.raises(RuntimeError, match=r"autograd is disabled.*enable_grad"):
        partial(u, x, 0, 2)
    with torch.no_grad(), pytest.raises(RuntimeError, match="autograd is disabled"):
        laplacian(u, x)
    with torch.no_grad():
        v = torch.sin(x)  # computed without a graph
    with pytest.raises(ValueError, match="no_grad"):
        partial(v, x, 0)


def test_partial_second_order_without_create_graph():
    x = torch.linspace(0, 1, 5, dtype=DTYPE)[:, None].requires_grad_(True)
    u_xx = partial(torch.sin(x), x, 0, 2, create_graph=False)
    torch.testing.assert_close(u_xx, -torch.sin(x.detach()[:, 0]))


def test_unbounded_lagrangian_error_points_to_augmented_lagrangian():
    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.theta = nn.Parameter(torch.tensor([0.5, 0.0], dtype=DTYPE))

    def evaluate(model, batch):  # the objective does not depend on theta[1]
        return {"objective": model.theta[0] ** 2, "h": model.theta[1] - 1.0}

    model = Pair()
    optimizer = torch.optim.LBFGS(model.parameters(), max_iter=50, line_search_fn="strong_wolfe")
    problem = ecl.Problem(evaluate, [ecl.Equality("h", init=1.0)])
    solver = ecl.PrimalDual(problem, model, optimizer, ecl.dual.SGD(0.1))
    with pytest.raises(ProblemError, match=r"AugmentedLagrangian\(rho=1\)") as info:
        solver.fit([{}], max_steps=20, warn=False)
    assert "\n" not in str(info.value)


def test_poisson_plain_lagrangian_with_lbfgs_error_points_to_augmented_lagrangian():
    """The PDE tutorial's Poisson problem (−u'' = π² sin πx, u(0) = 1, u(1) = −1) under the
    plain Lagrangian: the residual does not see u + a + bx, L-BFGS's line search runs off
    along it and the boundary values become NaN/Inf; the error names the remedy."""
    import math

    from eclearn.pde import MLP, mean_squared

    interior = {"x": torch.linspace(0, 1, 101, dtype=DTYPE)[1:-1, None]}
    ends = torch.tensor([[0.0], [1.0]], dtype=DTYPE)

    def evaluate(model, batch):
        x = batch["x"].detach().requires_grad_(True)
        source = math.pi**2 * torch.sin(math.pi * x[:, 0])
        residual = -partial(model(x), x, dim=0, order=2) - source
        u = model(ends).reshape(2)
        return {"objective": mean_squared(residual), "left": u[0], "right": u[1]}

    problem = ecl.Problem(
        evaluate, [ecl.Equality("left", rhs=1.0), ecl.Equality("right", rhs=-1.0)]
    )
    torch.manual_seed(0)
    model = MLP(in_features=1, hidden=32, depth=2).to(DTYPE)
    optimizer = torch.optim.LBFGS(
        model.parameters(), max_iter=20, history_size=50, line_search_fn="strong_wolfe"
    )
    solver = ecl.PrimalDual(problem, model, optimizer)
    with pytest.raises(ProblemError, match=r"NaN or Inf.*AugmentedLagrangian\(rho=1\)") as info:
        solver.fit([interior], max_steps=100, warn=False)
    assert "\n" not in str(info.value)
