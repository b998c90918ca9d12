"""The 1-D convection problem of the paper's boundary-value experiment.

    u_t + β u_x = 0,        x ∈ [0, 2π], t ∈ [0, 1],
    u(x, 0) = u₀(x)         (u₀ = sin by default),
    u(0, t) = u(2π, t)      (periodic boundary).

The solution is the transported initial condition, u(x, t) = u₀(x − βt); for u₀ = sin it
is sin(x − βt). A physics-informed network ``f_θ(x, t)`` is trained by driving three
residuals to zero: the PDE residual at interior points, the initial-condition residual
on ``t = 0`` and the periodicity residual on matched points of ``x = 0`` and ``x = 2π``.
The paper states them as equality constraints on their mean squares (or pointwise, one
multiplier per point); the PINN baseline is the fixed-weight sum with :data:`PINN_WEIGHTS`.

Network inputs are tensors ``[n, 2]`` with columns ``(x, t)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import numpy as np
import torch
from torch import Tensor, nn

from eclearn.pde.derivatives import gradient, mean_squared
from eclearn.pde.sampling import CollocationBatches, PairedFaces, UniformSampler

__all__ = [
    "DOMAIN_HIGH",
    "DOMAIN_LOW",
    "PINN_WEIGHTS",
    "ConvectionProblem",
    "ReferenceGrid",
    "bc_residual",
    "exact_solution",
    "ic_residual",
    "max_abs_error",
    "pde_residual",
    "predict_on_grid",
    "reference_grid",
    "reference_solution",
    "relative_l2_error",
    "spectral_solution",
]

DOMAIN_LOW = (0.0, 0.0)
"""Lower corner ``(x, t)`` of the domain."""
DOMAIN_HIGH = (2.0 * math.pi, 1.0)
"""Upper corner ``(x, t)`` of the domain."""
PINN_WEIGHTS: Mapping[str, float] = {"ic": 100.0, "bc": 100.0, "pde": 1.0}
"""Weights of the PINN baseline's loss 100·IC + 100·BC + 1·PDE (mean-squared residuals)."""

InitialCondition = Callable[[Tensor], Tensor]
_Array = TypeVar("_Array", Tensor, np.ndarray, float)


def exact_solution(x: _Array, t: _Array, beta: float) -> _Array:
    """``u(x, t) = sin(x − βt)``, the solution for ``u₀ = sin``; torch or numpy inputs."""
    if isinstance(x, Tensor) or isinstance(t, Tensor):
        return torch.sin(torch.as_tensor(x) - beta * torch.as_tensor(t))
    return cast(_Array, np.sin(np.asarray(x) - beta * np.asarray(t)))


def spectral_solution(
    u0_values: np.ndarray | Tensor,
    beta: float,
    x: np.ndarray | Tensor,
    t: np.ndarray | Tensor,
) -> np.ndarray:
    """Solution on the grid ``x × t`` by exact transport in Fourier space, shape [nt, nx].

    ``u0_values`` samples u₀ on ``x``, a uniform periodic grid without its right endpoint
    (period = nx · Δx). Each Fourier mode ``û_k`` evolves as ``û_k · exp(−iβkt)``; the
    inverse FFT gives u. This is the reference solver of the paper's code, exact for
    band-limited u₀ (e.g. sin) up to rounding.
    """
    u0 = np.asarray(u0_values, dtype=np.float64)
    xs = np.asarray(x, dtype=np.float64)
    ts = np.asarray(t, dtype=np.float64)
    if xs.ndim != 1 or xs.size < 2:
        raise ValueError(f"spectral_solution(x=...): expected a 1-D grid, got shape {xs.shape}")
    if u0.shape != xs.shape:
        raise ValueError(
            f"spectral_solution(u0_values=...): shape {u0.shape} does not match x {xs.shape}; "
            "sample the initial condition on x"
        )
    if ts.ndim != 1:
        raise ValueError(f"spectral_solution(t=...): expected a 1-D array, got shape {ts.shape}")
    dx = np.diff(xs)
    if not np.allclose(dx, dx[0], rtol=1e-9, atol=0.0) or dx[0] <= 0:
        raise ValueError(
            "spectral_solution(x=...): needs a uniform increasing grid, e.g. "
            "reference_grid().x, which leaves out the periodic endpoint"
        )
    period = xs.size * dx[0]
    k = 2.0 * np.pi * np.fft.fftfreq(xs.size, d=period / xs.size)
    modes = np.fft.fft(u0) * np.exp(-1j * beta * k[None, :] * ts[:, None])
    return np.real(np.fft.ifft(modes, axis=1))


@dataclass(frozen=True)
class ReferenceGrid:
    """Evaluation grid: ``x`` [nx] in [0, 2π) (no endpoint) and ``t`` [nt] in [0, 1].

    Values on the grid are arrays [nt, nx] (row j is time t[j]); :attr:`points` lists the
    grid points in the same row-major order as ``[nt · nx, 2]`` columns ``(x, t)``.
    """

    x: Tensor
    t: Tensor
    points: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        xx, tt = self.mesh
        object.__setattr__(self, "points", torch.stack([xx.reshape(-1), tt.reshape(-1)], dim=1))

    @property
    def shape(self) -> tuple[int, int]:
        """``(nt, nx)``, the shape of values on the grid."""
        return (self.t.numel(), self.x.numel())

    @property
    def mesh(self) -> tuple[Tensor, Tensor]:
        """``(X, T)``, each [nt, nx]."""
        tt, xx = torch.meshgrid(self.t, self.x, indexing="ij")
        return xx, tt


def reference_grid(nx: int = 512, nt: int = 251) -> ReferenceGrid:
    """The paper's 512 × 251 error grid (float64): x without 2π, t with both ends."""
    for name, value in (("nx", nx), ("nt", nt)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise ValueError(f"reference_grid({name}={value!r}): must be an integer >= 2")
    x = torch.arange(nx, dtype=torch.float64) * (DOMAIN_HIGH[0] / nx)
    t = torch.linspace(DOMAIN_LOW[1], DOMAIN_HIGH[1], nt, dtype=torch.float64)
    return ReferenceGrid(x, t)


def _check_points(points: Tensor, where: str) -> None:
    if not isinstance(points, Tensor) or points.dim() != 2 or points.shape[1] != 2:
        shape = tuple(points.shape) if isinstance(points, Tensor) else type(points).__name__
        raise ValueError(f"{where}: expected points [n, 2] with columns (x, t), got {shape}")
    if not torch.isfinite(points).all():
        raise ValueError(f"{where}: points contain NaN or Inf")


def _predict(model: Callable[[Tensor], Tensor], points: Tensor) -> Tensor:
    """Model output at ``points`` as [n] (accepts models returning [n] or [n, 1])."""
    out = model(points)
    if out.dim() == 2 and out.shape[1] == 1:
        out = out.squeeze(1)
    if out.shape != points.shape[:1]:
        raise ValueError(
            f"model output has shape {tuple(out.shape)} for {points.shape[0]} points; "
            "expected [n] or [n, 1] (a scalar field u(x, t))"
        )
    return out


def _initial_values(initial_condition: InitialCondition, x: Tensor) -> Tensor:
    values = initial_condition(x)
    if not isinstance(values, Tensor) or values.shape != x.shape:
        got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise ValueError(
            f"initial_condition(x) must return a tensor shaped like x {tuple(x.shape)}, got {got}"
        )
    return values


def ic_residual(
    model: Callable[[Tensor], Tensor],
    points: Tensor,
    initial_condition: InitialCondition = torch.sin,
) -> Tensor:
    """``u(x, 0) − u₀(x)`` per point, shape [n]; ``points`` are ``(x, 0)`` pairs [n, 2]."""
    _check_points(points, "ic_residual(points=...)")
    return _predict(model, points) - _initial_values(initial_condition, points[:, 0])


def bc_residual(model: Callable[[Tensor], Tensor], left: Tensor, right: Tensor) -> Tensor:
    """``u(0, t) − u(2π, t)`` per point, shape [n], for matched ``left``/``right`` points."""
    _check_points(left, "bc_residual(left=...)")
    _check_points(right, "bc_residual(right=...)")
    if left.shape != right.shape:
        raise ValueError(
            f"bc_residual: left {tuple(left.shape)} and right {tuple(right.shape)} must be "
            "matched pairs; sample them together with PairedFaces"
        )
    u_left, u_right = _predict(model, torch.cat([left, right])).split(left.shape[0])
    return u_left - u_right


def pde_residual(model: Callable[[Tensor], Tensor], points: Tensor, beta: float) -> Tensor:
    """``u_t + β u_x`` per interior point, shape [n], differentiable in the model's weights.

    Works under ``torch.no_grad()`` too (gradients are re-enabled locally), so held-out
    evaluation can report the PDE residual.
    """
    _check_points(points, "pde_residual(points=...)")
    with torch.enable_grad():
        coords = points.detach().requires_grad_(True)
        du = gradient(_predict(model, coords), coords)
        return du[:, 1] + beta * du[:, 0]


def reference_solution(
    beta: float,
    grid: ReferenceGrid | None = None,
    initial_condition: InitialCondition | None = None,
) -> Tensor:
    """Reference values [nt, nx] (float64) on ``grid`` (default :func:`reference_grid`).

    ``initial_condition=None`` means u₀ = sin and uses the closed form sin(x − βt); any
    other u₀ is sampled on the grid and transported by :func:`spectral_solution`, as in
    the paper's code.
    """
    grid = reference_grid() if grid is None else grid
    if initial_condition is None:
        xx, tt = grid.mesh
        return exact_solution(xx, tt, beta)
    u0 = _initial_values(initial_condition, grid.x).detach().cpu().numpy()
    values = spectral_solution(u0, beta, grid.x.numpy(), grid.t.numpy())
    return torch.from_numpy(values)


def predict_on_grid(
    model: Callable[[Tensor], Tensor],
    grid: ReferenceGrid | None = None,
    *,
    chunk_size: int = 32_768,
) -> Tensor:
    """Model values [nt, nx] (float64, CPU) on ``grid``, computed in chunks without grad.

    Grid points are cast to the dtype and device of the model's parameters; a model
    without parameters gets them in float64 on the CPU.
    """
    grid = reference_grid() if grid is None else grid
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"predict_on_grid(chunk_size={chunk_size!r}): must be a positive int")
    param = next(model.parameters(), None) if isinstance(model, nn.Module) else None
    points = grid.points if param is None else grid.points.to(param.device, param.dtype)
    with torch.no_grad():
        chunks = [
            _predict(model, points[i : i + chunk_size]).to("cpu", torch.float64)
            for i in range(0, points.shape[0], chunk_size)
        ]
    return torch.cat(chunks).view(grid.shape)


def relative_l2_error(
    model: Callable[[Tensor], Tensor],
    beta: float,
    grid: ReferenceGrid | None = None,
    *,
    initial_condition: InitialCondition | None = None,
    chunk_size: int = 32_768,
) -> float:
    """``‖û − u‖₂ / ‖u‖₂`` over the reference grid, the paper's error metric."""
    reference = reference_solution(beta, grid, initial_condition)
    prediction = predict_on_grid(model, grid, chunk_size=chunk_size)
    return float(
        torch.linalg.vector_norm(prediction - reference) / torch.linalg.vector_norm(reference)
    )


def max_abs_error(
    model: Callable[[Tensor], Tensor],
    beta: float,
    grid: ReferenceGrid | None = None,
    *,
    initial_condition: InitialCondition | None = None,
    chunk_size: int = 32_768,
) -> float:
    """``max |û − u|`` over the reference grid."""
    reference = reference_solution(beta, grid, initial_condition)
    prediction = predict_on_grid(model, grid, chunk_size=chunk_size)
    return float((prediction - reference).abs().max())


_BATCH_KEYS = ("pde", "ic", "bc_left", "bc_right")


class ConvectionProblem:
    """The convection problem for one ``beta``: batches, residuals and errors together.

    ``batches()`` serves fresh uniform points per step under the keys ``"pde"``, ``"ic"``,
    ``"bc_left"``, ``"bc_right"``; ``residuals(model, batch)`` returns the per-point
    residuals (for pointwise constraints) and ``evaluate(model, batch)`` their mean squares
    ``{"pde", "ic", "bc"}`` (for average constraints or the PINN loss), both from two
    forward passes (interior points; initial and boundary points together). For
    pointwise constraints on a fixed point set, build the batches with
    :class:`~eclearn.pde.sampling.FixedPoints`, e.g.
    ``"ic": box.face(1, 0.0).fixed()``, which adds ``"ic_index"``.
    """

    def __init__(self, beta: float, initial_condition: InitialCondition | None = None) -> None:
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta):
            raise ValueError(f"ConvectionProblem(beta={beta!r}): must be a finite number")
        if initial_condition is not None and not callable(initial_condition):
            raise TypeError(
                "ConvectionProblem(initial_condition=...): expected a callable x -> u0(x) on "
                f"tensors, got {type(initial_condition).__name__}"
            )
        self.beta = float(beta)
        self.initial_condition = initial_condition

    def __repr__(self) -> str:
        return f"ConvectionProblem(beta={self.beta}, initial_condition={self.initial_condition})"

    @property
    def u0(self) -> InitialCondition:
        """The initial condition as a tensor function (``torch.sin`` by default)."""
        return torch.sin if self.initial_condition is None else self.initial_condition

    def batches(
        self,
        num_points: int = 1000,
        *,
        num_ic: int | None = None,
        num_bc: int | None = None,
        steps_per_epoch: int | None = None,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> CollocationBatches:
        """Fresh uniform collocation points every step (``num_ic``/``num_bc`` default to
        ``num_points``): interior, ``t = 0``, and matched ``x = 0`` / ``x = 2π`` points."""
        options: dict[str, Any] = {"generator": generator, "dtype": dtype, "device": device}
        box = UniformSampler(DOMAIN_LOW, DOMAIN_HIGH, num_points, **options)
        ic = box.face(1, DOMAIN_LOW[1], num_points=num_points if num_ic is None else num_ic)
        bc_base = UniformSampler(
            DOMAIN_LOW, DOMAIN_HIGH, num_points if num_bc is None else num_bc, **options
        )
        return CollocationBatches(
            {"pde": box, "ic": ic, "bc": PairedFaces(bc_base, dim=0)},
            steps_per_epoch=steps_per_epoch,
        )

    def residuals(
        self, model: Callable[[Tensor], Tensor], batch: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        """Per-point residuals ``{"pde": u_t + βu_x, "ic": u(x,0) − u₀(x), "bc": u(0,t) −
        u(2π,t)}``, in two forward passes whatever the number of point sets.

        Input derivatives are taken only where the PDE needs them: the interior points go
        through one pass with ``requires_grad`` inputs, the initial and boundary points
        through one plain pass (measured ~40% cheaper per training step than
        differentiating the concatenation of all points)."""
        missing = [key for key in _BATCH_KEYS if key not in batch]
        if missing:
            raise KeyError(
                f"ConvectionProblem.residuals: batch lacks {', '.join(missing)} (has "
                f"{', '.join(sorted(batch))}); "
                "build batches with ConvectionProblem.batches() or CollocationBatches with "
                'samplers named "pde", "ic" and "bc" (a PairedFaces)'
            )
        parts = [batch[key] for key in _BATCH_KEYS]
        for key, points in zip(_BATCH_KEYS, parts, strict=True):
            _check_points(points, f'ConvectionProblem.residuals(batch["{key}"])')
        if parts[2].shape != parts[3].shape:
            raise ValueError(
                'ConvectionProblem.residuals: batch["bc_left"] and batch["bc_right"] must be '
                "matched pairs of the same shape; sample them with PairedFaces"
            )
        pde = pde_residual(model, parts[0], self.beta)
        n_ic, n_bc = parts[1].shape[0], parts[2].shape[0]
        u_ic, u_left, u_right = _predict(model, torch.cat(parts[1:])).split([n_ic, n_bc, n_bc])
        return {
            "pde": pde,
            "ic": u_ic - _initial_values(self.u0, parts[1][:, 0]),
            "bc": u_left - u_right,
        }

    def evaluate(
        self, model: Callable[[Tensor], Tensor], batch: Mapping[str, Tensor], exact: bool = False
    ) -> dict[str, Tensor]:
        """Mean-squared residuals ``{"pde", "ic", "bc"}``: the three equality constraints
        of the paper's formulation (``exact`` is accepted for the solver's protocol; the
        residuals are the same either way)."""
        return {key: mean_squared(r) for key, r in self.residuals(model, batch).items()}

    def reference_solution(self, grid: ReferenceGrid | None = None) -> Tensor:
        """Reference values [nt, nx]; see :func:`reference_solution`."""
        return reference_solution(self.beta, grid, self.initial_condition)

    def relative_l2_error(
        self, model: Callable[[Tensor], Tensor], grid: ReferenceGrid | None = None
    ) -> float:
        """``‖û − u‖₂ / ‖u‖₂`` on the reference grid; see :func:`relative_l2_error`."""
        return relative_l2_error(model, self.beta, grid, initial_condition=self.initial_condition)

    def max_abs_error(
        self, model: Callable[[Tensor], Tensor], grid: ReferenceGrid | None = None
    ) -> float:
        """``max |û − u|`` on the reference grid; see :func:`max_abs_error`."""
        return max_abs_error(model, self.beta, grid, initial_condition=self.initial_condition)
