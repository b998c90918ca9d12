"""The resumable batch stream: epochs over a re-iterable of batches, with exact replay.

Counters: ``epoch`` (completed passes) and ``batch_in_epoch`` (batches served in the
current pass). At the start of every pass the global RNG states are captured; resuming
mid-epoch rebuilds the pass's iterator from that state, skips the batches already used and
restores the current RNG state — exact for any iterable whose randomness comes from the
global generators (``ecl.Batches``, a ``DataLoader`` with its default generator,
augmentation in a transform). An iterable with its own ``state_dict()/load_state_dict()``
is asked instead. Lists and tuples (full-batch training) need no RNG capture.

Batches may be dicts of tensors, or tuples/lists of tensors (what
``DataLoader(TensorDataset(...))`` yields): with ``keys=`` they become dicts, without they
are passed to ``evaluate`` as they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from eclearn import _rng
from eclearn.batches import Batches
from eclearn.problem import ProblemError

__all__ = ["BatchStream", "prepare_batch"]


def prepare_batch(
    batch: Any,
    device: torch.device | None,
    keys: Sequence[str] | None = None,
    where: str = "fit",
) -> Any:
    """A batch as ``evaluate`` receives it: named by ``keys`` when it is a tuple/list, its
    tensors moved to ``device``."""
    if isinstance(batch, Mapping):
        if device is None or all(
            not isinstance(v, Tensor) or v.device == device for v in batch.values()
        ):
            return batch  # already where it must be: no copy
        return {k: _move(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        if keys is not None:
            if len(keys) != len(batch):
                raise ProblemError(
                    f"{where}: a batch of {len(batch)} items cannot be named by keys={list(keys)} "
                    f"({len(keys)} names); give one key per item"
                )
            return {k: _move(v, device) for k, v in zip(keys, batch, strict=True)}
        if not all(isinstance(v, Tensor) for v in batch):
            raise ProblemError(
                f"{where}: a batch must be a dict of tensors or a tuple/list of tensors, got a "
                f"{type(batch).__name__} of {[type(v).__name__ for v in batch]}"
            )
        return type(batch)(_move(v, device) for v in batch)
    raise ProblemError(
        f"{where}: a batch must be a dict of tensors (or a tuple/list of tensors, named with "
        f"keys=...), got {type(batch).__name__}; an iterable of batches is passed to fit, "
        "not a single batch"
    )


def _exact_length(batches: Iterable[Any]) -> int | None:
    """The number of batches of one pass when it is known exactly, else None. (An
    iterable with its own ``state_dict`` resumes from its own position, so its pass ends
    when it says so.)"""
    if hasattr(batches, "state_dict"):
        return None
    if isinstance(batches, (list, tuple, Batches)):
        return len(batches)
    if isinstance(batches, torch.utils.data.DataLoader) and not isinstance(
        batches.dataset, torch.utils.data.IterableDataset
    ):
        return len(batches)
    return None


def _move(value: Any, device: torch.device | None) -> Any:
    if device is not None and isinstance(value, Tensor) and value.device != device:
        return value.to(device, non_blocking=True)
    return value


class BatchStream:
    """Serve batches from an iterable epoch after epoch (see the module docstring)."""

    def __init__(self) -> None:
        self.epoch = 0
        self.batch_in_epoch = 0
        self._epoch_rng: dict[str, Any] | None = None
        self._iterator: Any = None
        self._iterable: Any = None
        self._replay = False
        self._pending: Any = None

    def next(self, batches: Iterable[Any]) -> Any | None:
        """The next batch, or None when the pass ends (``epoch`` is then incremented)."""
        if self._iterator is None or self._iterable is not batches:
            if self._iterable is not None and self._iterable is not batches:
                # Another iterable mid-epoch (e.g. fit([batch]) called again): continue the
                # epoch where it was, exactly as after load_state_dict.
                self._replay = self.batch_in_epoch > 0
            self._start(batches)
        try:
            batch = next(self._iterator)
        except StopIteration:
            empty = self.batch_in_epoch == 0
            self._iterator = None
            self.batch_in_epoch = 0
            if empty:
                raise ValueError(
                    "fit: the batch iterable produced no batches in an epoch; "
                    "pass a non-empty iterable of batches"
                ) from None
            self.epoch += 1
            return None
        self.batch_in_epoch += 1
        return batch

    def end_if_complete(self, batches: Iterable[Any]) -> bool:
        """End the pass now (``epoch`` += 1) when its last batch has been served and the
        iterable's length is known exactly (lists, tuples, ``ecl.Batches``, a
        ``DataLoader`` over a map-style dataset; not one with its own ``state_dict``), so
        that a fit stopped by ``max_steps`` at an epoch's last batch counts that epoch.
        Other iterables end their pass at the next request, as before. Returns whether
        the pass ended."""
        if self._iterator is None or self._iterable is not batches or self.batch_in_epoch == 0:
            return False
        length = _exact_length(batches)
        if length is None or self.batch_in_epoch < length:
            return False
        self._iterator = None
        self.batch_in_epoch = 0
        self.epoch += 1
        return True

    def _start(self, batches: Iterable[Any]) -> None:
        self._iterable = batches
        pending, self._pending = self._pending, None
        if self._replay and pending is not None and hasattr(batches, "load_state_dict"):
            self._replay = False
            batches.load_state_dict(pending)  # the iterable continues from its own position
            self._iterator = iter(batches)
            return
        if self._replay and self.batch_in_epoch > 0:
            self._replay = False
            current = _rng.capture()
            if self._epoch_rng is not None:
                _rng.restore(self._epoch_rng)
            self._iterator = iter(batches)
            for _ in range(self.batch_in_epoch):
                next(self._iterator)
            _rng.restore(current)
            return
        self._replay = False
        self.batch_in_epoch = 0
        self._epoch_rng = None if isinstance(batches, (list, tuple)) else _rng.capture()
        self._iterator = iter(batches)

    def state_dict(self) -> dict[str, Any]:
        own = None
        if self._iterable is not None and hasattr(self._iterable, "state_dict"):
            own = self._iterable.state_dict()
        return {
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "epoch_rng": _rng.serialize(self._epoch_rng),
            "batches": own,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self._epoch_rng = state["epoch_rng"]
        self._iterator, self._iterable = None, None
        self._replay = True
        self._pending = state.get("batches")
