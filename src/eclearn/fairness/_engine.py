"""What :class:`~eclearn.fairness.FairClassifier` and :class:`~eclearn.fairness.FairRegressor`
share: models, data held once and served as batches, the running exact rates of
mini-batch training, the group-scaled dual step, validation splits and the fit itself.

**Full batch or mini-batches.** With ``n ≤`` :data:`FULL_BATCH_MAX_ROWS` training rows (and
no ``batch_size``) every step is one batch holding the training split, as in the paper.
Above it (or with ``batch_size=``) steps are mini-batches drawn without replacement epoch
after epoch (own seeded generator). The data are never copied beyond the validated input:
each batch is standardised as it is drawn.

**Exact full-data rates in mini-batch mode, cheaply.** The constraint statistics are
written so that they pool exactly over batches: a group-rate gap on a batch is
``Ratio(Σ_batch w_i·ind_i·c_i, Σ_batch w_i / W)`` with the contrast ``c_i`` built on the
*full* training totals (``1[g_i = k]/W_k − 1/W``), so summing numerators and denominators
over a pass gives the exact training gap (:func:`eclearn.evaluate` pools them), and one
batch gives an estimate. For the dual signal the estimator keeps one small integer per
training row — its current hard decision (1 byte: binary, 2 bytes: multiclass) — and the
running sum of the exact numerators: each step updates the batch's rows (``O(batch)``), so
the exact full-data rates the multipliers follow are those of the decisions each row had
when last seen (at most one epoch old), and every selection pass (a full pass over the
training data every ``exact_every`` steps, the same :func:`eclearn.evaluate` that judges
the iterate) refreshes all of them. Memory beyond the data: that table, one batch and one
evaluation chunk (:data:`CHUNK_ROWS` rows).

**Group-scaled dual step.** A group's multiplier acts on its members with weight
``λ_k / W_k``, so its equilibrium value is proportional to the group's share; the dual
Adam step (a fixed size per entry) is therefore large relative to a small group's
multiplier and makes its rate swing. :class:`GroupScaledAdam` multiplies each entry's step
by ``sqrt(W_k / W_max)`` (the largest group keeps the nominal rate).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

import eclearn as ecl

__all__ = [
    "CHUNK_ROWS",
    "DEFAULT_BATCH_SIZE",
    "FULL_BATCH_MAX_ROWS",
    "Data",
    "GroupScaledAdam",
    "LazyBatch",
    "MiniBatches",
    "build_model",
    "chunks",
    "stratified_split",
]

FULL_BATCH_MAX_ROWS = 200_000
DEFAULT_BATCH_SIZE = 2048
CHUNK_ROWS = 65_536
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "logistic": nn.Sigmoid,
    "identity": nn.Identity,
}


def seed_of(random_state: Any) -> int:
    """An int seed from ``random_state`` (None → 0: fits are deterministic by default)."""
    if random_state is None:
        return 0
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(2**31 - 1))
    return int(random_state)


def build_model(
    spec: Any,
    n_features: int,
    n_outputs: int,
    *,
    hidden_layer_sizes: Any = (100,),
    activation: str = "relu",
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> nn.Module:
    """The model of ``spec``: ``"logistic"``/``"linear"`` (one linear layer, zero
    initialised), ``"mlp"`` (linear layers of ``hidden_layer_sizes`` with ``activation``
    between them, initialised from ``seed``), a ``torch.nn.Module`` (deep-copied: the
    estimator's parameter is never trained in place) or a callable ``n_features → module``
    (called under ``torch.manual_seed(seed)``)."""
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        if isinstance(spec, str):
            if spec in ("logistic", "linear"):
                linear = nn.Linear(n_features, n_outputs)
                nn.init.zeros_(linear.weight)
                nn.init.zeros_(linear.bias)
                model: nn.Module = linear
            elif spec == "mlp":
                if activation not in ACTIVATIONS:
                    raise ValueError(
                        f"activation={activation!r}: choose one of {sorted(ACTIVATIONS)}"
                    )
                sizes = (
                    [int(hidden_layer_sizes)]
                    if isinstance(hidden_layer_sizes, (int, np.integer))
                    else [int(h) for h in hidden_layer_sizes]
                )
                if not sizes or min(sizes) < 1:
                    raise ValueError(
                        f"hidden_layer_sizes must be positive ints, got {hidden_layer_sizes!r}"
                    )
                layers: list[nn.Module] = []
                width = n_features
                for h in sizes:
                    layers += [nn.Linear(width, h), ACTIVATIONS[activation]()]
                    width = h
                layers.append(nn.Linear(width, n_outputs))
                model = nn.Sequential(*layers)
            else:
                raise ValueError(
                    f"model={spec!r}: choose 'logistic' (or 'linear'), 'mlp', a torch.nn.Module "
                    "or a callable n_features → module"
                )
        elif isinstance(spec, nn.Module):
            model = copy.deepcopy(spec)
        elif callable(spec):
            model = spec(n_features)
            if not isinstance(model, nn.Module):
                raise TypeError(
                    f"model factory returned {type(model).__name__}, not a torch.nn.Module"
                )
        else:
            raise TypeError(
                f"model must be 'logistic', 'mlp', a torch.nn.Module or a callable, got "
                f"{type(spec).__name__}"
            )
    finally:
        torch.random.set_rng_state(generator_state)
    return model.to(dtype)


def stratified_split(strata: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of validation rows: ``round(fraction · n_s)`` rows of every stratum
    ``s`` (at least one of every stratum with ≥ 2 rows), drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(strata), dtype=bool)
    for s in np.unique(strata):
        rows = np.flatnonzero(strata == s)
        take = round(fraction * len(rows))
        if len(rows) >= 2:
            take = min(max(take, 1), len(rows) - 1)
        else:
            take = 0
        mask[rng.permutation(rows)[:take]] = True
    return mask


class Data:
    """The training input held once: ``x`` (numpy, float64, as validated), the
    standardisation, the targets, weights and group codes as tensors; :meth:`batch` builds
    the standardised batch of some rows (``index`` = position among ``rows``)."""

    def __init__(
        self,
        x: np.ndarray,
        mean: np.ndarray,
        scale: np.ndarray,
        target: Tensor,
        weight: Tensor,
        group: Tensor,
        dtype: torch.dtype,
    ) -> None:
        x = np.ascontiguousarray(x)
        self.x = torch.from_numpy(x if x.flags.writeable else x.copy())
        self.mean = torch.as_tensor(mean, dtype=dtype)
        self.scale = torch.as_tensor(scale, dtype=dtype)
        self.target, self.weight, self.group = target, weight, group
        self.dtype = dtype

    def features(self, rows: Tensor | slice) -> Tensor:
        return (self.x[rows].to(self.dtype) - self.mean) / self.scale

    def batch(self, rows: Tensor, index: Tensor | None = None) -> dict[str, Tensor]:
        out = {
            "x": self.features(rows),
            "y": self.target[rows],
            "w": self.weight[rows],
            "group": self.group[rows],
        }
        if index is not None:
            out["index"] = index
        return out


class LazyBatch(Mapping):
    """A batch built only when read (so a list of them for a full pass holds no data)."""

    def __init__(self, data: Data, rows: Tensor, index: Tensor | None) -> None:
        self._data, self._rows, self._index = data, rows, index
        self._keys = ("x", "y", "w", "group") + (("index",) if index is not None else ())

    _slot: ClassVar[list[Any]] = [None, None]  # the one batch built last (shared by all)

    def _built(self) -> dict[str, Tensor]:
        slot = LazyBatch._slot
        if slot[0] is not self:
            slot[0], slot[1] = self, self._data.batch(self._rows, self._index)
        return slot[1]

    def release(self) -> None:
        """Drop the built batch (the shared slot), e.g. once a pass ends."""
        LazyBatch._slot[0] = LazyBatch._slot[1] = None

    def __getitem__(self, key: str) -> Tensor:
        return self._built()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def items(self) -> Any:  # one build for all keys
        return self._built().items()


def chunks(data: Data, rows: Tensor, *, indexed: bool, size: int = CHUNK_ROWS) -> list[Any]:
    """The full pass over ``rows`` as lazy batches of ``size`` rows (``index`` set when
    ``indexed``: the rows are the training rows, whose running decisions it refreshes)."""
    out = []
    for start in range(0, len(rows), size):
        sub = rows[start : start + size]
        index = torch.arange(start, start + len(sub)) if indexed else None
        out.append(LazyBatch(data, sub, index))
    return out


class MiniBatches:
    """Mini-batches of ``rows`` without replacement, a fresh permutation every epoch from
    a generator seeded with ``seed`` and the epoch number (deterministic, resumable)."""

    def __init__(self, data: Data, rows: Tensor, batch_size: int, seed: int) -> None:
        self.data, self.rows, self.batch_size, self.seed = data, rows, batch_size, seed
        self.epoch = 0

    def __len__(self) -> int:
        return math.ceil(len(self.rows) / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        self.epoch += 1
        order = torch.randperm(len(self.rows), generator=generator)
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            yield self.data.batch(self.rows[index], index)


class GroupScaledAdam(ecl.dual.Adam):
    """Dual Adam-ascent whose step of every dense multiplier entry is multiplied by
    ``scale`` (a tensor over the problem's flat multiplier vector, in declaration order);
    see the module docstring. A subclass through the documented ``update`` contract."""

    def __init__(self, lr: float, scale: Tensor, **kwargs: Any) -> None:
        super().__init__(lr, **kwargs)
        self.scale = scale

    def update(
        self, grad: Tensor, state: dict[str, Tensor], lr: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        delta, state = super().update(grad, state, lr)
        if delta.shape == self.scale.shape:
            delta = delta * self.scale.to(delta)
        return delta, state


GROUP_SCALE_POWER = 0.5


def group_scale(shares: np.ndarray, repeat: int, constraints: int) -> Tensor:
    """``(share_k / max share)^½`` for every entry of ``constraints`` constraints of
    ``len(shares) · repeat`` entries (group-major, ``repeat`` entries per group)."""
    s = (shares / shares.max()) ** GROUP_SCALE_POWER
    return torch.as_tensor(np.tile(np.repeat(s, repeat), constraints), dtype=torch.float64)


def rate_swing(history: Any, columns: list[str], window: int = 100) -> float:
    """Largest max − min of the exact ``value/…`` columns over the last ``window`` steps."""
    if not columns or len(history) == 0:
        return 0.0
    tail = history[columns].to_numpy()[-window:]
    return float(np.nanmax(tail.max(0) - tail.min(0)))
