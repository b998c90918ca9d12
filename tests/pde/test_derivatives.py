"""Derivative helpers against functions with known derivatives (float64)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from eclearn.pde import MLP, gradient, laplacian, mean_squared, partial

DTYPE = torch.float64


@pytest.fixture
def coords() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return (torch.rand(64, 3, generator=gen, dtype=DTYPE) * 2 - 1).requires_grad_(True)


def field(c: torch.Tensor) -> torch.Tensor:
    """f(x, y, z) = sin(x) e^{2y} + x² z³, as [n, 1] like a network output."""
    x, y, z = c.unbind(1)
    return (torch.sin(x) * torch.exp(2 * y) + x**2 * z**3).unsqueeze(1)


def known(c: torch.Tensor) -> dict[str, torch.Tensor]:
    x, y, z = c.detach().unbind(1)
    s, co, e = torch.sin(x), torch.cos(x), torch.exp(2 * y)
    return {
        "x": co * e + 2 * x * z**3,
        "y": 2 * s * e,
        "z": 3 * x**2 * z**2,
        "xx": -s * e + 2 * z**3,
        "yy": 4 * s * e,
        "zz": 6 * x**2 * z,
        "xxx": -co * e,
        "xy": 2 * co * e,
        "xz": 6 * x * z**2,
    }


def test_gradient_matches_known_first_derivatives(coords):
    g = gradient(field(coords), coords)
    ref = known(coords)
    assert g.shape == coords.shape
    torch.testing.assert_close(g, torch.stack([ref["x"], ref["y"], ref["z"]], 1))
    assert g.requires_grad  # create_graph=True: trainable and differentiable again


def test_gradient_without_graph_is_detached(coords):
    assert not gradient(field(coords), coords, create_graph=False).requires_grad


@pytest.mark.parametrize(
    ("dim", "order", "key"),
    [
        (0, 1, "x"),
        (1, 1, "y"),
        (2, 1, "z"),
        (0, 2, "xx"),
        (1, 2, "yy"),
        (2, 2, "zz"),
        (0, 3, "xxx"),
        (-3, 2, "xx"),
    ],
)
def test_partial_pure(coords, dim, order, key):
    torch.testing.assert_close(partial(field(coords), coords, dim, order), known(coords)[key])


@pytest.mark.parametrize(
    ("dims", "key"), [((0, 1), "xy"), ((1, 0), "xy"), ((0, 2), "xz"), ((0, 0), "xx")]
)
def test_partial_mixed(coords, dims, key):
    torch.testing.assert_close(partial(field(coords), coords, dims), known(coords)[key])


def test_partial_accepts_flat_output(coords):
    torch.testing.assert_close(partial(field(coords).squeeze(1), coords, 0, 2), known(coords)["xx"])


def test_partial_of_polynomial_vanishes_beyond_its_degree(coords):
    u = 3 * coords[:, 0] + 2 * coords[:, 1] ** 2
    assert torch.equal(partial(u, coords, 0, 2), torch.zeros(64, dtype=DTYPE))
    torch.testing.assert_close(partial(u, coords, 1, 2), torch.full((64,), 4.0, dtype=DTYPE))
    assert torch.equal(partial(u, coords, 1, 3), torch.zeros(64, dtype=DTYPE))


def test_laplacian(coords):
    ref = known(coords)
    torch.testing.assert_close(laplacian(field(coords), coords), ref["xx"] + ref["yy"] + ref["zz"])
    torch.testing.assert_close(laplacian(field(coords), coords, dims=[0, 2]), ref["xx"] + ref["zz"])


def test_residual_is_differentiable_in_parameters(coords):
    a = torch.tensor(1.5, dtype=DTYPE, requires_grad=True)
    u = a * torch.sin(coords[:, 0])
    loss = mean_squared(partial(u, coords, 0, 2))  # (−a sin x)² averaged
    (grad_a,) = torch.autograd.grad(loss, a)
    x = coords.detach()[:, 0]
    torch.testing.assert_close(grad_a, (2 * a * torch.sin(x) ** 2).mean().detach())


def test_batched_network_derivatives_match_per_point_hessian():
    torch.manual_seed(0)
    model = MLP(in_features=2, hidden=8, depth=2).to(DTYPE)
    pts = torch.rand(5, 2, dtype=DTYPE).requires_grad_(True)
    u = model(pts)
    u_t, u_xx, u_xt = partial(u, pts, 1), partial(u, pts, 0, 2), partial(u, pts, (0, 1))
    for n in range(5):
        p = pts.detach()[n]
        jac = torch.autograd.functional.jacobian(lambda q: model(q[None])[0, 0], p)
        hess = torch.autograd.functional.hessian(lambda q: model(q[None])[0, 0], p)
        torch.testing.assert_close(u_t[n], jac[1])
        torch.testing.assert_close(u_xx[n], hess[0, 0])
        torch.testing.assert_close(u_xt[n], hess[0, 1])


def test_mean_squared():
    assert mean_squared(torch.tensor([3.0, -1.0])).item() == pytest.approx(5.0)
    with pytest.raises(ValueError, match="empty"):
        mean_squared(torch.zeros(0))


def test_error_when_inputs_do_not_require_grad():
    pts = torch.rand(4, 2)
    u = torch.sin(pts[:, 0])
    with pytest.raises(ValueError, match=r"inputs.requires_grad is False.*requires_grad_\(\)"):
        gradient(u, pts)
    with pytest.raises(ValueError, match="requires_grad is False"):
        partial(u, pts, 0)


def test_error_when_outputs_computed_without_grad():
    pts = torch.rand(4, 2, requires_grad=True)
    with torch.no_grad():
        u = torch.sin(pts[:, 0])
    with pytest.raises(ValueError, match=r"no_grad"):
        gradient(u, pts)


def test_shape_and_argument_errors():
    pts = torch.rand(4, 2, requires_grad=True)
    u = nn.Linear(2, 2)(pts)
    with pytest.raises(ValueError, match=r"u=\.\.\..*\[n\] or \[n, 1\].*u\[:, k\]"):
        partial(u, pts, 0)
    with pytest.raises(ValueError, match=r"coords=.*\[n, d\]"):
        partial(u[:, 0], pts[:, 0], 0)
    with pytest.raises(ValueError, match=r"u=\.\.\."):
        partial(u[:3, 0], pts, 0)
    with pytest.raises(ValueError, match=r"dim=2.*\[0, 2\)"):
        partial(u[:, 0], pts, 2)
    with pytest.raises(ValueError, match=r"order=0"):
        partial(u[:, 0], pts, 0, order=0)
    with pytest.raises(ValueError, match=r"order=2.*repeat"):
        partial(u[:, 0], pts, (0, 1), order=2)
    with pytest.raises(ValueError, match=r"dim=\(\)"):
        partial(u[:, 0], pts, ())
    with pytest.raises(ValueError, match=r"laplacian\(dim=5"):
        laplacian(u[:, 0], pts, dims=[5])
    with pytest.raises(TypeError, match="torch tensors"):
        gradient(math.pi, pts)
