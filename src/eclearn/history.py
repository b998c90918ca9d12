"""Per-step training records and their column schema.

Each step appends one row of numbers (objective, Lagrangian, every constraint's value,
violation and multiplier, per-sample table summaries, learning rates). A row is kept as
references to the step's small tensors and assembled with the others of its block (256
rows) in a few device operations and one copy to the CPU, so recording costs no device
operation and no synchronisation per step.

The schema (:class:`Columns`, built from the problem; every reader asks it instead of
parsing names):

- ``step``, ``epoch``, ``lr`` (``lr/<g>`` for several parameter groups), ``dual_lr``
  (the dual learning-rate factor of the step's schedule), ``objective`` (NaN for
  feasibility problems; the exact part of an :class:`~eclearn.Proxy`), ``lagrangian``
  (the primal loss);
- per average constraint component (``<name>[i]`` for vector constraints):
  ``value/<name>`` and the signed ``violation/<name>`` (exact values), ``multiplier/<name>``;
- per pointwise constraint: ``excess/<name>/mean`` and ``excess/<name>/max`` over the
  batch's samples (``|v|`` for equalities, ``[v]₊`` for inequalities, see
  :mod:`eclearn.measures`), ``multiplier/<name>/mean`` and ``multiplier/<name>/norm`` (whole
  table), ``multiplier/<name>/batch_max_abs``;
- when ``evaluate`` returns proxies: ``surrogate/objective`` and ``surrogate/<name>`` for
  every average component (the differentiated values).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from eclearn._io import atomic_write_text
from eclearn.measures import excess

__all__ = [
    "Columns",
    "Component",
    "History",
    "moving_average",
    "violation_columns",
    "worst_violation",
]

_BLOCK = 256
_LEGACY = {"/mean_abs": "/mean", "/max_abs": "/max"}


@dataclass(frozen=True)
class Component:
    """One measured piece of a constraint in the history: an average component (its signed
    ``violation`` column) or a pointwise constraint (its per-batch ``excess_max`` column)."""

    label: str
    constraint: str
    inequality: bool
    pointwise: bool
    tolerance: float
    multiplier: str
    value: str | None = None
    violation: str | None = None
    surrogate: str | None = None
    excess_mean: str | None = None
    excess_max: str | None = None


class Columns:
    """The history's column names and what each measures.

    Build it with :meth:`for_problem` (what the solver records) or :meth:`from_names` (an
    existing ``history.csv`` plus the constraint declarations stored beside it).
    """

    def __init__(self, names: Sequence[str], components: Sequence[Component] = ()) -> None:
        self.names = list(names)
        self.components = list(components)
        self.index = {name: i for i, name in enumerate(self.names)}

    @classmethod
    def for_problem(cls, problem: Any, param_groups: int = 1, proxies: bool = False) -> Columns:
        """The columns :class:`~eclearn.PrimalDual` records for ``problem``."""
        names = ["step", "epoch"]
        names += ["lr"] if param_groups == 1 else [f"lr/{g}" for g in range(param_groups)]
        names += ["dual_lr", "objective", "lagrangian"]
        components: list[Component] = []
        labels = [(c, n) for c in problem.average for n in c.component_names()]
        names += [f"value/{n}" for _, n in labels]
        names += [f"violation/{n}" for _, n in labels]
        names += [f"multiplier/{n}" for _, n in labels]
        for c, n in labels:
            components.append(
                Component(
                    n,
                    c.name,
                    not c.is_equality,
                    False,
                    c.tolerance,
                    f"multiplier/{n}",
                    value=f"value/{n}",
                    violation=f"violation/{n}",
                    surrogate=f"surrogate/{n}" if proxies else None,
                )
            )
        for c in problem.pointwise:
            names += [
                f"excess/{c.name}/mean",
                f"excess/{c.name}/max",
                f"multiplier/{c.name}/mean",
                f"multiplier/{c.name}/norm",
                f"multiplier/{c.name}/batch_max_abs",
            ]
            components.append(
                Component(
                    c.name,
                    c.name,
                    not c.is_equality,
                    True,
                    c.tolerance,
                    f"multiplier/{c.name}/norm",
                    excess_mean=f"excess/{c.name}/mean",
                    excess_max=f"excess/{c.name}/max",
                )
            )
        if proxies:
            names += ["surrogate/objective"] + [f"surrogate/{n}" for _, n in labels]
        return cls(names, components)

    @classmethod
    def from_names(
        cls, names: Sequence[str], constraints: Sequence[Mapping[str, Any]] | None = None
    ) -> Columns:
        """Rebuild the schema of stored columns. ``constraints`` is the problem's
        declaration list (``Problem.describe()``, as in a run's ``config.json``): names,
        kinds and tolerances. Histories written before the ``excess/`` columns
        (``violation/<c>/max_abs``) are read too."""
        declared = {c["name"]: c for c in constraints or []}
        names = [_modern(n) for n in names]
        present = set(names)
        components = []
        for name in names:
            if name.startswith("violation/"):
                label = name[len("violation/") :]
                base = label.split("[")[0]
                info = declared.get(base, {})
                components.append(
                    Component(
                        label,
                        base,
                        info.get("kind") == "inequality",
                        False,
                        float(info.get("tolerance", 1e-3)),
                        f"multiplier/{label}",
                        value=f"value/{label}" if f"value/{label}" in present else None,
                        violation=name,
                        surrogate=(
                            f"surrogate/{label}" if f"surrogate/{label}" in present else None
                        ),
                    )
                )
            elif name.startswith("excess/") and name.endswith("/max"):
                base = name[len("excess/") : -len("/max")]
                info = declared.get(base, {})
                components.append(
                    Component(
                        base,
                        base,
                        info.get("kind") == "inequality",
                        True,
                        float(info.get("tolerance", 1e-3)),
                        f"multiplier/{base}/norm",
                        excess_mean=f"excess/{base}/mean",
                        excess_max=name,
                    )
                )
        return cls(names, components)

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def excess(self, data: np.ndarray, window: int = 1) -> np.ndarray:
        """``[steps, components]`` excess per step (see :mod:`eclearn.measures`). With
        ``window > 1`` the signed violation of an average component is first averaged over
        that many steps, so mini-batch noise around zero does not read as a violation."""
        parts = []
        for comp in self.components:
            column = comp.excess_max if comp.pointwise else comp.violation
            assert column is not None
            series = moving_average(data[:, self.index[column]], window)
            if not comp.pointwise:
                series = excess(series, comp.inequality)
            parts.append(series)
        if not parts:
            return np.zeros((len(data), 0))
        return np.stack(parts, axis=1)

    def worst(self, data: np.ndarray, window: int = 1) -> np.ndarray:
        """Per step, the largest excess over all components (0 without constraints)."""
        table = self.excess(data, window)
        if table.shape[1] == 0:
            return np.zeros(len(data))
        return np.where(np.isnan(table), -np.inf, table).max(axis=1).clip(min=0.0)

    def worst_of(self, row: Mapping[str, float]) -> float:
        """The largest excess in one row given as ``{column: value}``."""
        array = np.array([[row.get(n, np.nan) for n in self.names]], dtype=np.float64)
        return float(self.worst(array)[0]) if len(array) else 0.0


def _modern(name: str) -> str:
    if name.startswith("violation/"):
        for old, new in _LEGACY.items():
            if name.endswith(old):
                return "excess/" + name[len("violation/") : -len(old)] + new
    return name


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average that skips NaN entries (NaN where the window has none)."""
    values = np.asarray(values, dtype=np.float64)
    if window <= 1 or len(values) == 0:
        return values
    ok = np.isfinite(values)
    sums = np.cumsum(np.where(ok, values, 0.0))
    counts = np.cumsum(ok)
    sums[window:] = sums[window:] - sums[:-window]
    counts[window:] = counts[window:] - counts[:-window]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


class History:
    """Append-only table of per-step numbers with CSV/JSONL export."""

    def __init__(self, columns: Sequence[str] | Columns) -> None:
        self.schema = columns if isinstance(columns, Columns) else Columns(columns)
        self.columns = list(self.schema.names)
        self._index = self.schema.index
        self._blocks: list[np.ndarray] = []
        self._pending: list[tuple[Sequence[float], tuple[Tensor, ...]]] = []

    def record(self, row: Tensor | Sequence[Tensor], head: Sequence[float] = ()) -> None:
        """Append one row: ``head`` (plain numbers for the leading columns, e.g. the step
        counters) followed by ``row`` — a 1-D tensor, or a sequence of 0-D/1-D tensors (on
        any device) that together fill the remaining columns. The tensors are kept by reference
        and assembled a block of rows at a time, so recording costs no device operation and
        no synchronisation per step: they must not be modified in place afterwards."""
        pieces = (row,) if isinstance(row, Tensor) else tuple(row)
        if not self._pending:  # the layout is checked once per block
            width = len(head) + sum(p.numel() for p in pieces)
            if width != len(self.columns):
                raise ValueError(f"history row has {width} entries for {len(self.columns)} columns")
        self._pending.append((head, pieces))
        if len(self._pending) == _BLOCK:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        rows, self._pending = self._pending, []
        heads = np.asarray([h for h, _ in rows], dtype=np.float64).reshape(len(rows), -1)
        try:
            parts = []
            for i in range(len(rows[0][1])):
                column = torch.stack([r[i] for _, r in rows]).detach().to(torch.float64)
                parts.append(column if column.dim() == 2 else column.reshape(len(rows), -1))
            block = torch.cat(parts, dim=1).cpu().numpy()
        except RuntimeError as err:
            raise ValueError(
                f"history rows of one block must have the same layout ({err})"
            ) from None
        if heads.shape[1] + block.shape[1] != len(self.columns):
            raise ValueError(
                f"history row has {heads.shape[1] + block.shape[1]} entries for "
                f"{len(self.columns)} columns"
            )
        self._blocks.append(np.concatenate([heads, block], axis=1))

    def __len__(self) -> int:
        return sum(len(b) for b in self._blocks) + len(self._pending)

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
        """The last row as ``{column: value}`` (empty before the first step)."""
        data = self.to_numpy()
        return {} if not len(data) else dict(zip(self.columns, data[-1].tolist(), strict=True))

    def records(self) -> Iterator[dict[str, float]]:
        """Every row as ``{column: value}``."""
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
    def read_csv(
        cls,
        path: str | os.PathLike[str],
        constraints: Sequence[Mapping[str, Any]] | None = None,
    ) -> History:
        """Read a :meth:`to_csv` file; ``constraints`` (the declarations stored with the run)
        restores the schema's kinds and tolerances."""
        with open(path, newline="") as handle:
            reader = csv.reader(handle)
            columns = next(reader)
            rows = [[float(v) if v != "" else math.nan for v in row] for row in reader]
        history = cls(Columns.from_names(columns, constraints))
        if rows:
            history._blocks = [np.asarray(rows, dtype=np.float64)]
        return history

    def state_dict(self) -> dict[str, object]:
        """Columns and rows (a float64 tensor), for checkpoints."""
        return {"columns": list(self.columns), "data": torch.from_numpy(self.to_numpy().copy())}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (the columns must match)."""
        columns = list(state["columns"])
        if columns != self.columns:
            raise ValueError(
                "history columns in the checkpoint differ from this problem's: "
                f"{columns[:6]}... vs {self.columns[:6]}..."
            )
        data = state["data"]
        assert isinstance(data, Tensor)
        self._pending = []
        self._blocks = [data.numpy().copy()] if len(data) else []


def _format(value: float) -> str:
    if math.isnan(value):
        return ""
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def violation_columns(
    constraints: Sequence[Mapping[str, Any]] | None, columns: Sequence[str]
) -> list[tuple[str, bool]]:
    """(history column, is inequality) for the columns that measure constraint violation:
    average components (signed values) and pointwise ``max_abs``. ``constraints`` is
    ``Problem.fingerprint()`` (as stored in ``config.json``)."""
    kinds = {c["name"]: c["kind"] for c in constraints or []}
    found = []
    for col in columns:
        if not col.startswith("violation/") or col.endswith("/mean_abs"):
            continue
        name = col[len("violation/") :].split("/")[0].split("[")[0]
        found.append((col, kinds.get(name) == "inequality"))
    return found


def worst_violation(row: Mapping[str, float], columns: Sequence[tuple[str, bool]]) -> float:
    """max over components of |violation| (equalities) and [violation]₊ (inequalities)."""
    worst = 0.0
    for col, inequality in columns:
        v = row.get(col, math.nan)
        if math.isnan(v):
            continue
        worst = max(worst, float(excess(np.asarray(v), inequality)))
    return worst
