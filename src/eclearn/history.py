"""Per-step training records.

Each step appends one row of numbers (objective, Lagrangian, every constraint's value,
violation and multiplier, per-sample table summaries, learning rates). Rows are written
into a small buffer on the training device and moved to the CPU a block at a time, so
recording costs no device synchronisation per step.

Column names:
``step``, ``epoch``, ``lr`` (``lr/<g>`` for several parameter groups), ``objective``
(NaN for feasibility problems), ``lagrangian`` (the primal loss); for each average constraint component
``value/<name>``, ``violation/<name>``, ``multiplier/<name>`` (``<name>[i]`` for vector
constraints); for each pointwise constraint ``violation/<name>/mean_abs``,
``violation/<name>/max_abs`` (over the batch), ``multiplier/<name>/mean``,
``multiplier/<name>/norm`` (over the whole table), ``multiplier/<name>/batch_max_abs``.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from eclearn._io import atomic_write_text

__all__ = ["History"]

_BLOCK = 256


class History:
    """Append-only table of per-step numbers with CSV/JSONL export."""

    def __init__(self, columns: Sequence[str]) -> None:
        self.columns = list(columns)
        self._index = {name: i for i, name in enumerate(self.columns)}
        self._blocks: list[np.ndarray] = []
        self._buffer: Tensor | None = None
        self._fill = 0

    def record(self, row: Tensor) -> None:
        """Append one row (a 1-D tensor, one entry per column, on any device)."""
        if row.numel() != len(self.columns):
            raise ValueError(
                f"history row has {row.numel()} entries for {len(self.columns)} columns"
            )
        if self._buffer is None or self._buffer.device != row.device:
            self._flush()
            self._buffer = torch.empty(
                _BLOCK, len(self.columns), dtype=torch.float64, device=row.device
            )
        self._buffer[self._fill].copy_(row.detach())
        self._fill += 1
        if self._fill == _BLOCK:
            self._flush()

    def _flush(self) -> None:
        if self._buffer is not None and self._fill:
            self._blocks.append(self._buffer[: self._fill].cpu().numpy().copy())
            self._fill = 0

    def __len__(self) -> int:
        return sum(len(b) for b in self._blocks) + self._fill

    def to_numpy(self) -> np.ndarray:
        """All rows as a ``[steps, columns]`` float64 array."""
        self._flush()
        if not self._blocks:
            return np.zeros((0, len(self.columns)))
        if len(self._blocks) > 1:
            self._blocks = [np.concatenate(self._blocks)]
        return self._blocks[0]

    def tail(self, rows: int) -> np.ndarray:
        """The last ``rows`` rows, without concatenating the whole history."""
        self._flush()
        picked: list[np.ndarray] = []
        count = 0
        for block in reversed(self._blocks):
            picked.append(block)
            count += len(block)
            if count >= rows:
                break
        if not picked:
            return np.zeros((0, len(self.columns)))
        return np.concatenate(picked[::-1])[-rows:]

    def __getitem__(self, column: str) -> np.ndarray:
        if column not in self._index:
            raise KeyError(f"no history column {column!r}; columns: {self.columns}")
        return self.to_numpy()[:, self._index[column]]

    def __contains__(self, column: str) -> bool:
        return column in self._index

    def select(self, prefix: str) -> list[str]:
        """Column names starting with ``prefix`` (e.g. ``"violation/"``)."""
        return [c for c in self.columns if c.startswith(prefix)]

    def last(self) -> dict[str, float]:
        data = self.to_numpy()
        return {} if not len(data) else dict(zip(self.columns, data[-1].tolist(), strict=True))

    def records(self) -> Iterator[dict[str, float]]:
        for row in self.to_numpy():
            yield dict(zip(self.columns, row.tolist(), strict=True))

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write all rows as CSV (atomically); returns the path."""
        import io

        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(self.columns)
        for row in self.to_numpy():
            writer.writerow(_format(v) for v in row)
        return atomic_write_text(path, text.getvalue())

    def to_jsonl(self, path: str | os.PathLike[str]) -> Path:
        """Write one JSON object per step (atomically); NaN becomes null."""
        lines = []
        for record in self.records():
            clean = {k: (None if math.isnan(v) else v) for k, v in record.items()}
            lines.append(json.dumps(clean))
        return atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))

    @classmethod
    def read_csv(cls, path: str | os.PathLike[str]) -> History:
        with open(path, newline="") as handle:
            reader = csv.reader(handle)
            columns = next(reader)
            rows = [[float(v) if v != "" else math.nan for v in row] for row in reader]
        history = cls(columns)
        if rows:
            history._blocks = [np.asarray(rows, dtype=np.float64)]
        return history

    def state_dict(self) -> dict[str, object]:
        return {"columns": list(self.columns), "data": torch.from_numpy(self.to_numpy().copy())}

    def load_state_dict(self, state: dict[str, object]) -> None:
        columns = list(state["columns"])  # type: ignore[arg-type]
        if columns != self.columns:
            raise ValueError(
                "history columns in the checkpoint differ from this problem's: "
                f"{columns[:6]}... vs {self.columns[:6]}..."
            )
        data = state["data"]
        assert isinstance(data, Tensor)
        self._buffer, self._fill = None, 0
        self._blocks = [data.numpy().copy()] if len(data) else []


def _format(value: float) -> str:
    if math.isnan(value):
        return ""
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))
