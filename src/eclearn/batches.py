"""In-memory batch iterables: a dict of tensors served as shuffled dict batches.

Shuffling and any ``transform`` draw from torch's global RNG, so the solver's checkpoints
(which save the RNG state at the start of each epoch) resume such a stream exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import torch
from torch import Tensor

__all__ = ["Batches"]


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
