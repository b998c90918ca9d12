"""The convection problem: reference solutions, residuals, errors and the MLP."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from eclearn.pde import (
    MLP,
    PINN_WEIGHTS,
    CollocationBatches,
    ConvectionProblem,
    PairedFaces,
    UniformSampler,
    bc_residual,
    exact_solution,
    ic_residual,
    max_abs_error,
    pde_residual,
    predict_on_grid,
    reference_grid,
    reference_solution,
    relative_l2_error,
    spectral_solution,
)

TWO_PI = 2 * math.pi
DTYPE = torch.float64


class Transported(nn.Module):
    """u(x, t) = u0(x − βt): the exact solution as a network (no parameters)."""

    def __init__(self, beta: float, u0=torch.sin) -> None:
        super().__init__()
        self.beta, self.u0 = beta, u0

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return self.u0(points[:, 0] - self.beta * points[:, 1]).unsqueeze(1)


class Zero(nn.Module):
    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(points[:, :1])


def u0_multi(x):
    return torch.sin(2 * x) + 0.5 * torch.cos(3 * x)


@pytest.fixture
def batch() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return next(iter(ConvectionProblem(30).batches(200, num_ic=50, num_bc=40, dtype=DTYPE)))


def test_reference_grid_shapes_and_endpoints():
    grid = reference_grid()
    assert grid.x.shape == (512,) and grid.t.shape == (251,) and grid.shape == (251, 512)
    assert grid.x[0] == 0 and grid.x[-1] == pytest.approx(TWO_PI - TWO_PI / 512)
    torch.testing.assert_close(grid.x.diff(), torch.full((511,), TWO_PI / 512, dtype=DTYPE))
    assert grid.t[0] == 0 and grid.t[-1] == 1 and grid.x.dtype == DTYPE
    assert grid.points.shape == (251 * 512, 2)
    xx, tt = grid.mesh
    assert xx.shape == tt.shape == (251, 512)
    j, i = 7, 300  # row-major: point j·nx + i is (x[i], t[j])
    assert torch.equal(grid.points[j * 512 + i], torch.stack([grid.x[i], grid.t[j]]))
    assert torch.equal(grid.points[:, 0].view(251, 512), xx)
    with pytest.raises(ValueError, match=r"nx=1"):
        reference_grid(nx=1)


@pytest.mark.parametrize("beta", [1.0, 30.0, 50.0])
def test_spectral_solution_equals_closed_form_on_reference_grid(beta):
    grid = reference_grid()
    values = spectral_solution(np.sin(grid.x.numpy()), beta, grid.x.numpy(), grid.t.numpy())
    xx, tt = grid.mesh
    assert values.shape == (251, 512)
    assert np.abs(values - exact_solution(xx.numpy(), tt.numpy(), beta)).max() < 1e-10


def test_spectral_solution_general_initial_condition_and_period():
    x = torch.arange(64, dtype=DTYPE) * (TWO_PI / 64)
    t = torch.linspace(0, 1, 11, dtype=DTYPE)
    values = spectral_solution(u0_multi(x), 7.0, x, t)  # tensors accepted too
    xx = x[None, :] - 7.0 * t[:, None]
    np.testing.assert_allclose(values, u0_multi(xx).numpy(), atol=1e-12)
    # a period-1 grid: k = 2π·integer, u(x, t) = sin(2π(x − βt))
    y = np.arange(32) / 32
    values = spectral_solution(np.sin(2 * np.pi * y), 0.3, y, [0.0, 0.5])
    np.testing.assert_allclose(values[1], np.sin(2 * np.pi * (y - 0.15)), atol=1e-12)


def test_spectral_solution_validates():
    x = np.linspace(0, 1, 8, endpoint=False)
    with pytest.raises(ValueError, match="uniform"):
        spectral_solution(np.sin(x**2), 1.0, x**2, [0.0])
    with pytest.raises(ValueError, match="u0_values"):
        spectral_solution(np.zeros(7), 1.0, x, [0.0])
    with pytest.raises(ValueError, match="t="):
        spectral_solution(np.zeros(8), 1.0, x, np.zeros((2, 2)))


def test_exact_solution_torch_and_numpy():
    assert isinstance(exact_solution(np.array([1.0]), np.array([0.5]), 2.0), np.ndarray)
    out = exact_solution(torch.tensor([1.0]), 0.5, 2.0)
    assert isinstance(out, torch.Tensor)
    assert out.item() == pytest.approx(math.sin(0.0), abs=1e-7)
    assert exact_solution(math.pi / 2, 0.0, 5.0) == pytest.approx(1.0)


def test_exact_solution_has_zero_residuals(batch):
    problem = ConvectionProblem(30)
    res = problem.residuals(Transported(30.0), batch)
    assert res["pde"].shape == (200,) and res["ic"].shape == (50,) and res["bc"].shape == (40,)
    for value in res.values():
        assert value.abs().max() < 1e-8
    terms = problem.evaluate(Transported(30.0), batch)
    assert set(terms) == set(PINN_WEIGHTS) == {"pde", "ic", "bc"}
    assert all(v.dim() == 0 and v < 1e-16 for v in terms.values())


def test_free_residual_functions_agree_with_problem(batch):
    model = Transported(30.0)
    assert pde_residual(model, batch["pde"], 30.0).abs().max() < 1e-8
    assert ic_residual(model, batch["ic"]).abs().max() < 1e-8
    assert bc_residual(model, batch["bc_left"], batch["bc_right"]).abs().max() < 1e-8
    torch.manual_seed(1)
    net = MLP().to(DTYPE)
    res = ConvectionProblem(30).residuals(net, batch)
    torch.testing.assert_close(res["pde"], pde_residual(net, batch["pde"], 30.0))
    torch.testing.assert_close(res["ic"], ic_residual(net, batch["ic"]))
    torch.testing.assert_close(res["bc"], bc_residual(net, batch["bc_left"], batch["bc_right"]))


def test_wrong_functions_have_nonzero_residuals(batch):
    problem = ConvectionProblem(30)
    wrong_speed = problem.evaluate(Transported(-30.0), batch)  # sin(x + 30t)
    assert wrong_speed["pde"] > 1.0 and wrong_speed["ic"] < 1e-16 and wrong_speed["bc"] < 1e-16
    shifted = problem.evaluate(Transported(30.0, torch.cos), batch)
    assert shifted["ic"] > 0.1 and shifted["pde"] < 1e-16
    not_periodic = problem.evaluate(Transported(0.0, lambda x: x), batch)  # u = x
    assert not_periodic["bc"].item() == pytest.approx(TWO_PI**2)  # u(0, t) − u(2π, t) = −2π
    assert not_periodic["pde"].item() == pytest.approx(30.0**2)  # u_t + 30 u_x = 30


def test_general_initial_condition_problem(batch):
    problem = ConvectionProblem(5, initial_condition=u0_multi)
    terms = problem.evaluate(Transported(5.0, u0_multi), batch)
    assert all(v < 1e-16 for v in terms.values())
    assert problem.relative_l2_error(Transported(5.0, u0_multi)) < 1e-10
    assert problem.evaluate(Transported(5.0), batch)["ic"] > 0.1


def test_residuals_are_trainable_with_two_forward_passes(batch):
    torch.manual_seed(0)
    net = MLP().to(DTYPE)
    calls = []
    net.register_forward_hook(lambda *_: calls.append(1))
    terms = ConvectionProblem(30).evaluate(net, batch)
    assert len(calls) == 2  # interior points with input grad; IC and BC points together
    loss = sum(PINN_WEIGHTS[k] * v for k, v in terms.items())
    loss.backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_residuals_work_under_no_grad(batch):
    with torch.no_grad():
        terms = ConvectionProblem(30).evaluate(Transported(30.0), batch)
        assert pde_residual(Transported(-30.0), batch["pde"], 30.0).abs().max() > 1
    assert terms["pde"] < 1e-16


def test_pointwise_batches_with_fixed_points():
    torch.manual_seed(0)
    box = UniformSampler((0.0, 0.0), (TWO_PI, 1.0), 32, dtype=DTYPE)
    line = UniformSampler((0.0, 0.0), (0.0, 1.0), 16, dtype=DTYPE).fixed(batch_size=8)
    batches = CollocationBatches(
        {"pde": box, "ic": box.face(1, 0.0).fixed(), "bc": PairedFaces(line, 0, 0.0, TWO_PI)}
    )
    batch = next(iter(batches))
    assert {"ic_index", "bc_index"} <= set(batch)
    res = ConvectionProblem(30).residuals(Transported(30.0), batch)
    assert res["ic"].shape == batch["ic_index"].shape == (32,)
    assert res["bc"].shape == batch["bc_index"].shape == (8,)
    assert max(r.abs().max() for r in res.values()) < 1e-8


def test_problem_batches_lie_on_their_sets():
    torch.manual_seed(0)
    batch = ConvectionProblem(1).batches(100, num_bc=30, steps_per_epoch=2).sample()
    assert batch["ic"].shape == (100, 2) and torch.all(batch["ic"][:, 1] == 0)
    assert torch.all(batch["bc_left"][:, 0] == 0)
    assert torch.allclose(batch["bc_right"][:, 0], torch.tensor(TWO_PI))
    assert torch.equal(batch["bc_left"][:, 1], batch["bc_right"][:, 1])
    assert batch["bc_left"].shape == (30, 2)
    pde = batch["pde"]
    assert (pde[:, 0] >= 0).all() and (pde[:, 0] <= TWO_PI).all()
    assert (pde[:, 1] >= 0).all() and (pde[:, 1] <= 1).all()
    assert len(ConvectionProblem(1).batches(steps_per_epoch=2)) == 2


def test_relative_and_max_errors():
    assert relative_l2_error(Transported(30.0), 30.0) < 1e-12
    assert max_abs_error(Transported(30.0), 30.0) < 1e-12
    assert relative_l2_error(Zero(), 30.0) == pytest.approx(1.0)
    assert max_abs_error(Zero(), 30.0) == pytest.approx(1.0, abs=1e-4)
    problem = ConvectionProblem(50)
    assert problem.relative_l2_error(Transported(50.0)) < 1e-12
    assert problem.max_abs_error(Zero()) == pytest.approx(1.0, abs=1e-4)


def test_errors_of_a_float32_network_in_chunks():
    torch.manual_seed(0)
    net = MLP()
    grid = reference_grid(nx=64, nt=11)
    full = predict_on_grid(net, grid, chunk_size=10_000)
    chunked = predict_on_grid(net, grid, chunk_size=100)
    assert full.dtype == DTYPE and full.shape == (11, 64)
    torch.testing.assert_close(full, chunked)
    ref = reference_solution(30.0, grid)
    expected = float((full - ref).norm() / ref.norm())
    assert relative_l2_error(net, 30.0, grid, chunk_size=100) == pytest.approx(expected)
    with pytest.raises(ValueError, match="chunk_size"):
        predict_on_grid(net, grid, chunk_size=0)


def test_reference_solution_general_is_spectral():
    grid = reference_grid(nx=128, nt=21)
    ref = reference_solution(3.0, grid, u0_multi)
    xx, tt = grid.mesh
    torch.testing.assert_close(ref, u0_multi(xx - 3.0 * tt))


def test_validation_messages(batch):
    problem = ConvectionProblem(30)
    with pytest.raises(KeyError, match=r"lacks bc_left, bc_right.*batches\(\)"):
        problem.residuals(Transported(30.0), {"pde": batch["pde"], "ic": batch["ic"]})
    bad = dict(batch, bc_right=batch["bc_right"][:5])
    with pytest.raises(ValueError, match="matched pairs"):
        problem.residuals(Transported(30.0), bad)
    with pytest.raises(ValueError, match=r"matched pairs"):
        bc_residual(Transported(30.0), batch["bc_left"], batch["bc_right"][:5])
    with pytest.raises(ValueError, match=r"points=.*\[n, 2\]"):
        pde_residual(Transported(30.0), batch["pde"][:, :1], 30.0)
    with pytest.raises(ValueError, match="NaN"):
        ic_residual(Transported(30.0), torch.full((2, 2), math.nan))
    with pytest.raises(ValueError, match=r"model output.*\[n, 1\]"):
        ic_residual(lambda p: p, batch["ic"])
    with pytest.raises(ValueError, match="initial_condition"):
        ic_residual(Transported(30.0), batch["ic"], lambda x: x[:1])
    with pytest.raises(ValueError, match="beta"):
        ConvectionProblem(math.nan)
    with pytest.raises(TypeError, match="initial_condition"):
        ConvectionProblem(1.0, initial_condition=3.0)


def test_mlp_architecture():
    torch.manual_seed(0)
    net = MLP()
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(2, 50)] + [(50, 50)] * 3 + [
        (50, 1)
    ]
    assert sum(p.numel() for p in net.parameters()) == 2 * 50 + 50 + 3 * (50 * 50 + 50) + 51
    assert sum(isinstance(m, nn.Tanh) for m in net.modules()) == 4
    assert all(torch.all(m.bias == 0) for m in linears)
    bound = math.sqrt(6 / (50 + 50))  # Xavier-uniform limit of a 50 × 50 layer
    assert linears[1].weight.abs().max() <= bound
    assert linears[1].weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)
    assert net(torch.rand(7, 2)).shape == (7, 1)
    torch.manual_seed(0)
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), MLP().parameters(), strict=True))
    assert MLP(3, hidden=8, depth=1, out_features=2, activation="gelu")(torch.rand(4, 3)).shape == (
        4,
        2,
    )


def test_mlp_validates():
    with pytest.raises(ValueError, match=r"activation='swish'.*tanh"):
        MLP(activation="swish")
    with pytest.raises(ValueError, match="depth=0"):
        MLP(depth=0)
    with pytest.raises(ValueError, match=r"\[n, 2\]"):
        MLP()(torch.rand(3, 3))
