"""Derivatives of a network's output with respect to its input, for PDE residuals.

A physics-informed residual such as ``u_t + β u_x`` needs derivatives of the network
output ``u = f_θ(coords)`` with respect to the coordinates, and must stay differentiable
in θ so that it can be trained on. Every helper here therefore calls
``torch.autograd.grad(..., create_graph=True)`` by default.

The helpers are batched: they differentiate ``Σ_n u_n`` with respect to ``coords``, which
gives the per-point derivative ``∂u_n / ∂coords_n`` because a pointwise network (an MLP;
nothing that mixes rows, such as batch normalisation in training mode) makes ``u_n``
depend on row ``n`` of ``coords`` only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["gradient", "laplacian", "mean_squared", "partial"]


def gradient(outputs: Tensor, inputs: Tensor, *, create_graph: bool = True) -> Tensor:
    """``∂(Σ outputs) / ∂inputs``, shaped like ``inputs``.

    For a pointwise network, row ``n`` of the result is the gradient of ``outputs[n]`` with
    respect to ``inputs[n]``. ``create_graph=True`` keeps the result differentiable (in the
    network's parameters and for higher derivatives); pass ``False`` for evaluation only.
    """
    if not isinstance(inputs, Tensor) or not isinstance(outputs, Tensor):
        raise TypeError("gradient(outputs, inputs): both arguments must be torch tensors")
    _check_grad_mode("gradient")
    if not inputs.requires_grad:
        raise ValueError(
            "gradient(inputs=...): inputs.requires_grad is False, so autograd cannot "
            "differentiate with respect to it; call inputs.requires_grad_() on the network "
            "input BEFORE the forward pass, then recompute outputs"
        )
    if not outputs.requires_grad:
        raise ValueError(
            "gradient(outputs=...): outputs does not require grad; it was computed under "
            "torch.no_grad() (recompute it with gradients enabled) or does not depend on "
            "inputs at all (then its derivative is zero)"
        )
    (grad,) = torch.autograd.grad(
        outputs.sum(),
        inputs,
        create_graph=create_graph,
        allow_unused=True,
        materialize_grads=True,
    )
    return grad


def _check_grad_mode(name: str) -> None:
    """Input derivatives need autograd: refuse to run (rather than return zeros) under
    ``torch.no_grad()`` / ``torch.inference_mode()``."""
    if not torch.is_grad_enabled():
        raise RuntimeError(
            f"{name}: autograd is disabled (called under torch.no_grad() or "
            "torch.inference_mode()), so derivatives with respect to the input cannot be "
            "computed. Compute the network output and its derivatives with autograd on: "
            "wrap them in `with torch.enable_grad():`, or pass inference=False to "
            "ecl.evaluate / ecl.certify / the ecl.select selectors (ecl.PrimalDual measures "
            "with autograd on)"
        )


def _check_field(u: Tensor, coords: Tensor, name: str) -> Tensor:
    """Validate ``u`` ([n] or [n, 1]) against ``coords`` ([n, d]); return ``u`` as [n]."""
    if coords.dim() != 2:
        raise ValueError(
            f"{name}(coords=...): expected the network input of shape [n, d], got "
            f"{tuple(coords.shape)}; reshape single-coordinate inputs to [n, 1]"
        )
    if u.dim() == 2 and u.shape[1] == 1:
        u = u.squeeze(1)
    if u.dim() != 1 or u.shape[0] != coords.shape[0]:
        raise ValueError(
            f"{name}(u=...): expected a scalar field of shape [n] or [n, 1] with "
            f"n = coords.shape[0] = {coords.shape[0]}, got {tuple(u.shape)}; for a "
            "vector-valued network differentiate one output column at a time, u[:, k]"
        )
    return u


def _check_dim(dim: int, coords: Tensor, name: str) -> int:
    d = coords.shape[1]
    if isinstance(dim, bool) or not isinstance(dim, int) or not -d <= dim < d:
        raise ValueError(
            f"{name}(dim={dim!r}): must be an integer coordinate index in [0, {d}) for "
            f"coords with {d} columns"
        )
    return dim % d


def partial(
    u: Tensor,
    coords: Tensor,
    dim: int | Sequence[int],
    order: int = 1,
    *,
    create_graph: bool = True,
) -> Tensor:
    """Partial derivative ``∂^order u / ∂x_dim^order`` at every point, shape [n].

    ``u`` ([n] or [n, 1]) is the network output computed from ``coords`` ([n, d], with
    ``requires_grad``). ``dim`` may also be a sequence of coordinate indices for a mixed
    derivative taken in that order, e.g. ``dim=(0, 1)`` is ``∂²u / ∂x₀∂x₁`` (then
    ``order`` must be 1). Derivatives that vanish identically come back as zeros.

    Needs autograd: under ``torch.no_grad()`` (or when ``u`` has no graph to ``coords``)
    it raises instead of returning wrong zeros.
    """
    _check_grad_mode("partial")
    u = _check_field(u, coords, "partial")
    if isinstance(dim, Sequence):
        if order != 1:
            raise ValueError(
                f"partial(order={order}): a sequence dim={tuple(dim)} already lists every "
                "differentiation; repeat an index instead of passing order"
            )
        dims = [_check_dim(k, coords, "partial") for k in dim]
        if not dims:
            raise ValueError("partial(dim=()): give at least one coordinate index")
    else:
        if isinstance(order, bool) or not isinstance(order, int) or order < 1:
            raise ValueError(f"partial(order={order!r}): must be a positive integer")
        dims = [_check_dim(dim, coords, "partial")] * order
    if not coords.requires_grad or not u.requires_grad:
        gradient(u, coords)  # raises the explanatory error
    derivative = u
    for i, k in enumerate(dims):
        if not derivative.requires_grad:
            # a derivative that no longer depends on the input (nor on anything that
            # requires grad): every further derivative vanishes identically
            return torch.zeros_like(u)
        last = i == len(dims) - 1
        derivative = gradient(derivative, coords, create_graph=create_graph or not last)[:, k]
    return derivative


def laplacian(
    u: Tensor,
    coords: Tensor,
    dims: Sequence[int] | None = None,
    *,
    create_graph: bool = True,
) -> Tensor:
    """``Σ_{k ∈ dims} ∂²u / ∂x_k²`` at every point, shape [n] (all coordinates by default).

    Use ``dims`` to leave out e.g. the time column: ``laplacian(u, coords, dims=[0, 1])``
    for ``u_xx + u_yy`` with coords ``(x, y, t)``. The first derivatives are computed once.
    """
    _check_grad_mode("laplacian")
    u = _check_field(u, coords, "laplacian")
    ks = (
        range(coords.shape[1])
        if dims is None
        else [_check_dim(k, coords, "laplacian") for k in dims]
    )
    first = gradient(u, coords, create_graph=True)
    total = torch.zeros_like(u)
    for k in ks:
        if first[:, k].requires_grad:
            total = total + gradient(first[:, k], coords, create_graph=create_graph)[:, k]
    return total


def mean_squared(residual: Tensor) -> Tensor:
    """``mean(r²)``: the statistic a mean-squared residual constraint drives to zero."""
    if residual.numel() == 0:
        raise ValueError("mean_squared(residual=...): got an empty tensor; sample some points")
    return residual.square().mean()
