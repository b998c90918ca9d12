"""In-memory batch iterables: a dict of tensors served as shuffled dict batches, and the
seeded train/validation split that model selection needs.

Shuffling and any ``transform`` draw from torch's global RNG, so the solver's checkpoints
(which save the RNG state at the start of each epoch) resume such a stream exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import torch
from torch import Tensor

__all__ = ["Batches", "validation_split"]


def validation_split(
    data: Mapping[str, Tensor],
    fraction: float,
    *,
    seed: int,
    stratify: Tensor | None = None,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Split the rows of ``data`` into ``(train, validation)``, ``validation`` holding
    ``round(fraction · n)`` rows drawn with a generator seeded by ``seed`` (independent of
    the global RNG). With ``stratify`` (one integer label per row, e.g. group × class) every
    stratum keeps its share: each contributes ``round(fraction · n_stratum)`` rows, at least
    one when it has two or more. Model selection judges candidates on the validation part;
    the test split is never touched."""
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must lie in (0, 1), got {fraction!r}")
    n = int(next(iter(data.values())).shape[0])
    generator = torch.Generator().manual_seed(int(seed))
    if stratify is None:
        order = torch.randperm(n, generator=generator)
        take = max(1, round(fraction * n))
        if take >= n:
            raise ValueError(f"a validation fraction of {fraction} leaves no training rows of {n}")
        chosen = order[:take]
    else:
        labels = torch.as_tensor(stratify).reshape(-1).long().cpu()
        if labels.numel() != n:
            raise ValueError(f"stratify has {labels.numel()} labels for {n} rows")
        picks = []
        for value in torch.unique(labels):
            members = torch.nonzero(labels == value).reshape(-1)
            members = members[torch.randperm(members.numel(), generator=generator)]
            take = round(fraction * members.numel())
            if members.numel() >= 2:
                take = min(max(take, 1), members.numel() - 1)
            else:
                take = 0
            picks.append(members[:take])
        chosen = torch.cat(picks)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[chosen] = True
    train = {k: v[~mask.to(v.device)] for k, v in data.items()}
    validation = {k: v[mask.to(v.device)] for k, v in data.items()}
    return train, validation


class Batches:
    """Re-iterable mini-batches over the rows of ``data``.

    Each batch is ``{key: tensor[rows]}`` plus ``batch[index_key]`` (int64 row ids) unless
    ``data`` already has that key, so pointwise constraints can look up their multipliers.
    ``transform(batch) -> batch`` runs on every batch (e.g. data augmentation).
    ``batch_size=None`` serves the whole data as one batch (full-batch training).
    """

    def __init__(
        self,
        data: Mapping[str, Tensor],
        batch_size: int | None = None,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        transform: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None,
        index_key: str = "index",
        device: torch.device | str | None = None,
    ) -> None:
        if not data:
            raise ValueError("Batches(data=...) needs at least one tensor")
        sizes = {key: int(value.shape[0]) for key, value in data.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"Batches: all tensors need the same number of rows, got {sizes}")
        self.num_rows = next(iter(sizes.values()))
        if batch_size is not None and batch_size <= 0:
            raise ValueError(f"Batches: batch_size must be positive, got {batch_size}")
        self.data = {k: (v.to(device) if device is not None else v) for k, v in data.items()}
        if index_key not in self.data:
            self.data[index_key] = torch.arange(self.num_rows, device=device)
        self.batch_size = self.num_rows if batch_size is None else batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.transform = transform

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_rows // self.batch_size
        return -(-self.num_rows // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        if self.shuffle and self.batch_size < self.num_rows:
            order = torch.randperm(self.num_rows)
        else:
            order = None
        for b in range(len(self)):
            rows = slice(b * self.batch_size, (b + 1) * self.batch_size)
            if order is None:
                batch = {k: v[rows] for k, v in self.data.items()}
            else:
                idx = order[rows].to(next(iter(self.data.values())).device)
                batch = {k: v.index_select(0, idx) for k, v in self.data.items()}
            yield self.transform(batch) if self.transform is not None else batch
