"""Collocation samplers: where the residuals of a PDE problem are evaluated.

A sampler is a callable with no arguments that returns either a tensor of points
``[n, d]`` or a mapping of named tensors (paired boundary points, a fixed set with its
sample ids). :class:`CollocationBatches` combines named samplers into one ``dict`` batch
per step, the batch format the solver consumes.

Random draws use torch's global CPU generator by default and are moved to the requested
device afterwards, so a checkpoint of ``torch.get_rng_state()`` reproduces the stream on
any device. Pass ``generator=`` for an independent stream.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor

__all__ = ["CollocationBatches", "FixedPoints", "PairedFaces", "Sampler", "UniformSampler"]

Sampler = Callable[[], Tensor | Mapping[str, Tensor]]
"""A zero-argument callable returning points ``[n, d]`` or a mapping of named tensors."""


def _bounds(value: Sequence[float] | Tensor, name: str) -> Tensor:
    bounds = torch.as_tensor(value, dtype=torch.float64).detach().cpu()
    if bounds.dim() != 1 or bounds.numel() == 0:
        raise ValueError(
            f"UniformSampler({name}=...): expected one bound per coordinate, e.g. "
            f"(0.0, 0.0), got shape {tuple(bounds.shape)}"
        )
    if not torch.isfinite(bounds).all():
        raise ValueError(f"UniformSampler({name}={bounds.tolist()}): bounds must be finite")
    return bounds


def _positive_int(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{where}: must be a positive integer, got {value!r}")
    return value


class UniformSampler:
    """Fresh uniform points in the box ``[low, high]`` (one bound per coordinate) per call.

    ``sampler()`` returns ``[num_points, d]``; a coordinate with ``low == high`` is held
    fixed, which is how a face of the box is sampled (see :meth:`face`).
    """

    def __init__(
        self,
        low: Sequence[float] | Tensor,
        high: Sequence[float] | Tensor,
        num_points: int,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        self.low = _bounds(low, "low")
        self.high = _bounds(high, "high")
        if self.low.shape != self.high.shape:
            raise ValueError(
                f"UniformSampler: low has {self.low.numel()} coordinates but high has "
                f"{self.high.numel()}; give one bound per coordinate in both"
            )
        if (self.high < self.low).any():
            raise ValueError(
                f"UniformSampler: need low <= high in every coordinate, got "
                f"low={self.low.tolist()}, high={self.high.tolist()}"
            )
        self.num_points = _positive_int(num_points, "UniformSampler(num_points=...)")
        self.generator = generator
        self.dtype = dtype
        self.device = device

    @property
    def dim(self) -> int:
        """Number of coordinates."""
        return self.low.numel()

    def __call__(self) -> Tensor:
        """Draw ``[num_points, dim]`` points (float64 on CPU, then cast and moved)."""
        unit = torch.rand(self.num_points, self.dim, dtype=torch.float64, generator=self.generator)
        points = self.low + (self.high - self.low) * unit
        dtype = torch.get_default_dtype() if self.dtype is None else self.dtype
        return points.to(dtype=dtype, device=self.device)

    def face(self, dim: int, value: float, *, num_points: int | None = None) -> UniformSampler:
        """A sampler on the face ``x_dim = value`` of this box (e.g. ``t = 0``)."""
        if isinstance(dim, bool) or not isinstance(dim, int) or not -self.dim <= dim < self.dim:
            raise ValueError(f"UniformSampler.face(dim={dim!r}): must be in [0, {self.dim})")
        lo, hi = float(self.low[dim]), float(self.high[dim])
        if not lo <= value <= hi:
            raise ValueError(
                f"UniformSampler.face(value={value}): must lie in [{lo}, {hi}], the box's "
                f"range in coordinate {dim}"
            )
        low, high = self.low.clone(), self.high.clone()
        low[dim] = high[dim] = value
        return UniformSampler(
            low,
            high,
            self.num_points if num_points is None else num_points,
            generator=self.generator,
            dtype=self.dtype,
            device=self.device,
        )

    def fixed(self, *, batch_size: int | None = None) -> FixedPoints:
        """Draw one set of points now and keep it: a :class:`FixedPoints` set."""
        return FixedPoints(self(), batch_size=batch_size, generator=self.generator)

    def __repr__(self) -> str:
        return (
            f"UniformSampler(low={self.low.tolist()}, high={self.high.tolist()}, "
            f"num_points={self.num_points})"
        )


class FixedPoints:
    """A fixed set of ``N`` points with their sample ids, for pointwise constraints.

    Each call returns ``{"": points, "index": ids}`` (int64 ids in ``[0, N)``), so a
    constraint with one multiplier per point can look its rows up. With ``batch_size`` a
    fresh random subset of that size is served per call; otherwise the whole set.
    """

    def __init__(
        self,
        points: Tensor,
        *,
        batch_size: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        if not isinstance(points, Tensor) or points.dim() != 2 or points.shape[0] == 0:
            shape = tuple(points.shape) if isinstance(points, Tensor) else type(points).__name__
            raise ValueError(f"FixedPoints(points=...): expected a tensor [N, d], got {shape}")
        if not torch.isfinite(points).all():
            raise ValueError("FixedPoints(points=...): contains NaN or Inf values")
        self.points = points.detach()
        self.index = torch.arange(points.shape[0], device=points.device)
        if batch_size is not None:
            _positive_int(batch_size, "FixedPoints(batch_size=...)")
            if batch_size > len(self):
                raise ValueError(
                    f"FixedPoints(batch_size={batch_size}): larger than the {len(self)} "
                    "points in the set; use batch_size=None for the whole set"
                )
        self.batch_size = batch_size
        self.generator = generator

    def __len__(self) -> int:
        return self.points.shape[0]

    def __call__(self) -> dict[str, Tensor]:
        if self.batch_size is None:
            return {"": self.points, "index": self.index}
        rows = torch.randperm(len(self), generator=self.generator)[: self.batch_size]
        rows = rows.to(self.points.device)
        return {"": self.points[rows], "index": rows}


class PairedFaces:
    """Matched points on the two opposite faces ``x_dim = low`` and ``x_dim = high``.

    Each call draws points from ``base`` and returns ``{"left": p_low, "right": p_high}``,
    equal except in coordinate ``dim``, e.g. ``(0, t)`` and ``(2π, t)`` for a periodic
    boundary condition ``u(0, t) = u(2π, t)``. ``low``/``high`` default to ``base``'s
    bounds. A base that returns a mapping (a :class:`FixedPoints`) keeps its other entries,
    such as ``"index"``.
    """

    def __init__(
        self,
        base: Sampler,
        dim: int,
        low: float | None = None,
        high: float | None = None,
    ) -> None:
        if not callable(base):
            raise TypeError(
                f"PairedFaces(base=...): expected a sampler (a callable), got {type(base)}"
            )
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise ValueError(f"PairedFaces(dim={dim!r}): must be an integer coordinate index")
        if low is None or high is None:
            if not isinstance(base, UniformSampler):
                raise ValueError(
                    "PairedFaces: pass low= and high= explicitly when base is not a "
                    "UniformSampler (they cannot be read from its bounds)"
                )
            if not -base.dim <= dim < base.dim:
                raise ValueError(f"PairedFaces(dim={dim}): must be in [0, {base.dim})")
            low = float(base.low[dim]) if low is None else low
            high = float(base.high[dim]) if high is None else high
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(f"PairedFaces(low={low}, high={high}): must be finite")
        self.base = base
        self.dim = dim
        self.low = float(low)
        self.high = float(high)

    def __call__(self) -> dict[str, Tensor]:
        drawn = self.base()
        if isinstance(drawn, Tensor):
            extra: dict[str, Tensor] = {}
            points = drawn
        else:
            extra = {k: v for k, v in drawn.items() if k != ""}
            points = drawn[""]
        if points.dim() != 2 or not -points.shape[1] <= self.dim < points.shape[1]:
            raise ValueError(
                f"PairedFaces(dim={self.dim}): base returned points of shape "
                f"{tuple(points.shape)}; expected [n, d] with dim in [0, d)"
            )
        left, right = points.clone(), points.clone()
        left[:, self.dim] = self.low
        right[:, self.dim] = self.high
        return {"left": left, "right": right, **extra}


class CollocationBatches:
    """Re-iterable stream of ``dict`` batches, one entry set per named sampler per step.

    ``samplers`` maps a name to a sampler. A sampler returning a tensor contributes
    ``batch[name]``; one returning a mapping contributes ``batch[name]`` for its ``""``
    entry and ``batch[f"{name}_{key}"]`` for the others, e.g. ``"bc": PairedFaces(...)``
    gives ``"bc_left"`` and ``"bc_right"``, and ``"ic": FixedPoints(...)`` gives ``"ic"``
    and ``"ic_index"`` (pass ``index_key="ic_index"`` to that pointwise constraint).

    Iteration is endless unless ``steps_per_epoch`` is given, in which case each
    ``iter()`` yields that many batches (an "epoch" for ``fit(epochs=...)``).
    """

    def __init__(
        self,
        samplers: Mapping[str, Sampler],
        *,
        steps_per_epoch: int | None = None,
    ) -> None:
        if not isinstance(samplers, Mapping) or not samplers:
            raise ValueError(
                "CollocationBatches(samplers=...): expected a non-empty mapping name -> "
                'sampler, e.g. {"pde": UniformSampler(...)}'
            )
        for name, sampler in samplers.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"CollocationBatches: sampler names must be strings, got {name!r}")
            if not callable(sampler):
                raise TypeError(
                    f"CollocationBatches: sampler {name!r} is a {type(sampler).__name__}; "
                    "expected a callable returning a tensor or a mapping of tensors"
                )
        if steps_per_epoch is not None:
            _positive_int(steps_per_epoch, "CollocationBatches(steps_per_epoch=...)")
        self.samplers = dict(samplers)
        self.steps_per_epoch = steps_per_epoch

    def sample(self) -> dict[str, Tensor]:
        """One batch: every sampler called once, in the mapping's order."""
        batch: dict[str, Tensor] = {}
        for name, sampler in self.samplers.items():
            drawn = sampler()
            if isinstance(drawn, Tensor):
                entries = {name: drawn}
            elif isinstance(drawn, Mapping):
                entries = {(name if k == "" else f"{name}_{k}"): v for k, v in drawn.items()}
            else:
                raise TypeError(
                    f"CollocationBatches: sampler {name!r} returned a {type(drawn).__name__}; "
                    "expected a tensor or a mapping of tensors"
                )
            clash = batch.keys() & entries.keys()
            if clash:
                raise ValueError(
                    f"CollocationBatches: sampler {name!r} produces key(s) {sorted(clash)} "
                    "already produced by another sampler; rename one of them"
                )
            batch.update(entries)
        return batch

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        step = 0
        while self.steps_per_epoch is None or step < self.steps_per_epoch:
            yield self.sample()
            step += 1

    def __len__(self) -> int:
        if self.steps_per_epoch is None:
            raise TypeError(
                "CollocationBatches has no length: it is endless; train with "
                "fit(max_steps=...) or pass steps_per_epoch= to define an epoch"
            )
        return self.steps_per_epoch
