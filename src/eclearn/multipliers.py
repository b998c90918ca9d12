"""Multiplier tables.

Average constraints share one flat vector (:class:`DenseMultipliers`): the Lagrangian term
of all of them is one dot product, the dual step one vectorised update, and distributed
training one collective. Each pointwise constraint owns an ``[num_samples, size]`` table
(:class:`IndexedMultipliers`) of which a step reads and writes only the batch's rows, so
the step cost does not grow with the table. Equality multipliers are free; inequality
multipliers are projected onto ``≥ 0`` after every update. :class:`Multipliers` holds both
kinds for one problem (what the solver owns and checkpoints).

Memory: a table is built at its final size in one allocation (no temporary copies), and its
running sums start from the closed form of a constant initial value. The flat vector is
replaced by every update rather than changed in place (it is small), so each step's
multipliers can be recorded by reference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from eclearn.measures import excess
from eclearn.problem import Constraint, ProblemError

__all__ = ["DenseMultipliers", "IndexedMultipliers", "Multipliers"]


class DenseMultipliers:
    """One flat vector holding the multipliers of all average constraints."""

    def __init__(
        self,
        constraints: Sequence[Constraint],
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        self.constraints = list(constraints)
        self.slices: dict[str, slice] = {}
        start = 0
        for c in self.constraints:
            self.slices[c.name] = slice(start, start + c.size)
            start += c.size
        self.size = start
        self.value = torch.cat(
            [c.init.to(dtype) for c in self.constraints] or [torch.zeros(0, dtype=dtype)]
        ).to(device)
        self.target = torch.cat(
            [c.target.to(dtype) for c in self.constraints] or [torch.zeros(0, dtype=dtype)]
        ).to(device)
        self.inequality = torch.tensor(
            [not c.is_equality for c in self.constraints for _ in range(c.size)],
            dtype=torch.bool,
            device=device,
        )
        self.has_inequality = bool(self.inequality.any())
        self.zero_target = not bool(self.target.any())
        signs = [c.sign for c in self.constraints for _ in range(c.size)]
        self.signed = any(x != 1.0 for x in signs)
        self.sign = torch.tensor(signs, dtype=dtype, device=device)

    def violation(self, flat: Tensor) -> Tensor:
        """Signed violations of the flat values (positive = violated)."""
        if self.zero_target:
            v = flat
        else:
            target = self.target if flat.dtype == self.target.dtype else self.target.to(flat.dtype)
            v = flat - target
        return v * self.sign.to(flat.dtype) if self.signed else v

    def __getitem__(self, name: str) -> Tensor:
        return self.value[self.slices[name]]

    def flatten(self, values: Mapping[str, Tensor]) -> Tensor:
        """Concatenate per-constraint ``[size]`` tensors in declaration order."""
        if len(self.constraints) == 1:
            return values[self.constraints[0].name]
        return torch.cat([values[c.name] for c in self.constraints])

    def measured(self, ev: Any) -> Tensor:
        """The flat measured values of an ``Evaluation`` (exact parts of proxies)."""
        if len(self.constraints) == 1:
            return ev.measured(self.constraints[0].name)
        return torch.cat([ev.measured(c.name) for c in self.constraints])

    def project_(self) -> None:
        """Inequality multipliers onto ``[0, ∞)``; equality multipliers untouched."""
        if self.has_inequality:
            self.value = torch.where(self.inequality, self.value.clamp_min(0), self.value)

    def step_(self, delta: Tensor) -> None:
        """``value ← project(value + delta)``. The vector is replaced, never changed in place,
        so the history may keep a reference to each step's multipliers."""
        self.value = self.value + delta
        self.project_()

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> None:
        self.value = self.value.to(device=device, dtype=dtype)
        self.target = self.target.to(device=device, dtype=dtype)
        self.sign = self.sign.to(device=device, dtype=dtype)
        self.inequality = self.inequality.to(device=device)

    def state_dict(self) -> dict[str, Tensor]:
        return {"value": self.value.detach().clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        value = state["value"]
        if value.shape != self.value.shape:
            raise ProblemError(
                f"multiplier vector in the checkpoint has {value.numel()} entries but the problem "
                f"declares {self.size} average-constraint components"
            )
        self.value = value.to(self.value)


class IndexedMultipliers:
    """Per-sample multipliers of one pointwise constraint: a ``[num_samples, size]`` table.

    Besides the table it keeps running float64 sums of the entries and of their squares,
    updated from the rows a step touches, so the table's mean and norm can be logged every
    step at a cost independent of ``num_samples``.
    """

    def __init__(
        self,
        constraint: Constraint,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        assert constraint.num_samples is not None
        self.constraint = constraint
        self.num_samples = constraint.num_samples
        self.width = constraint.size
        init = constraint.init.to(dtype=dtype, device=device)
        self.table = torch.empty(self.num_samples, self.width, dtype=dtype, device=device)
        self.table.copy_(init.expand(self.num_samples, self.width))
        self.target = constraint.target.to(dtype=dtype, device=device)
        self.sign = float(constraint.sign)
        self.nonnegative = not constraint.is_equality
        rounded = init.double()
        self.sum = rounded.sum() * self.num_samples
        self.sum_sq = (rounded * rounded).sum() * self.num_samples

    def violation(self, value: Tensor) -> Tensor:
        """Signed per-sample violations ``[B, size]`` of the batch's rows."""
        target = self.target if value.dtype == self.target.dtype else self.target.to(value.dtype)
        v = value - target
        return v if self.sign == 1.0 else v * self.sign

    def excess(self, value: Tensor) -> Tensor:
        """Per-sample excess of the batch's rows: ``|v|`` (equality), ``[v]₊`` (inequality)."""
        return excess(self.violation(value), self.nonnegative)

    def _refresh_sums(self, chunk: int = 1 << 20) -> None:
        """Recompute the running sums from the table, a chunk of rows at a time (no full copy)."""
        total = torch.zeros((), dtype=torch.float64, device=self.table.device)
        squares = torch.zeros((), dtype=torch.float64, device=self.table.device)
        for start in range(0, self.num_samples, chunk):
            rows = self.table[start : start + chunk].double()
            total += rows.sum()
            squares += (rows * rows).sum()
        self.sum, self.sum_sq = total, squares

    def check_index(self, index: Tensor, where: str) -> None:
        """Raise when ids fall outside ``[0, num_samples)`` (one reduction, no Python loop)."""
        if index.numel() == 0:
            return
        low, high = int(index.min()), int(index.max())
        if low < 0 or high >= self.num_samples:
            bad = low if low < 0 else high
            raise ProblemError(
                f"{where}: pointwise constraint {self.constraint.name!r} got sample id {bad} in "
                f"batch[{self.constraint.index_key!r}], outside [0, {self.num_samples}); set "
                "num_samples to the training-set size and use ids 0..num_samples-1"
            )

    def gather(self, index: Tensor) -> Tensor:
        return self.table.index_select(0, index)

    def write(self, index: Tensor, rows: Tensor) -> None:
        """Store updated rows (projected for inequalities) and update the running sums."""
        if self.nonnegative:
            rows = rows.clamp_min(0)
        old = self.table.index_select(0, index).double()
        new = rows.double()
        self.sum = self.sum + (new - old).sum()
        self.sum_sq = self.sum_sq + (new * new - old * old).sum()
        self.table.index_copy_(0, index, rows.to(self.table.dtype))

    def summary(self) -> Tensor:
        """``[mean, norm]`` of the whole table, from the running sums."""
        count = self.num_samples * self.width
        return torch.stack([self.sum / count, self.sum_sq.clamp_min(0).sqrt()])

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> None:
        self.table = self.table.to(device=device, dtype=dtype)
        self.target = self.target.to(device=device, dtype=dtype)
        self.sum = self.sum.to(device=device)
        self.sum_sq = self.sum_sq.to(device=device)

    def state_dict(self) -> dict[str, Tensor]:
        return {
            "table": self.table.detach().clone(),
            "sum": self.sum.clone(),
            "sum_sq": self.sum_sq.clone(),
        }

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore the table (and the running sums when present, so summaries resume
        bit for bit; without them they are recomputed from the table)."""
        table = state["table"]
        if table.shape != self.table.shape:
            raise ProblemError(
                f"pointwise constraint {self.constraint.name!r}: checkpoint table has shape "
                f"{tuple(table.shape)}, the problem declares {tuple(self.table.shape)}"
            )
        self.table.copy_(table)
        if "sum" in state:
            self.sum = state["sum"].to(self.sum)
            self.sum_sq = state["sum_sq"].to(self.sum_sq)
        else:
            self._refresh_sums()


class Multipliers:
    """All multipliers of one problem: the flat vector of the average constraints
    (``dense``) and one table per pointwise constraint (``tables``)."""

    DENSE_KEY = "__average__"

    def __init__(
        self,
        problem: Any,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
    ) -> None:
        self.dense = DenseMultipliers(problem.average, dtype=dtype, device=device)
        self.tables = {
            c.name: IndexedMultipliers(c, dtype=dtype, device=device) for c in problem.pointwise
        }
        self.names = [c.name for c in problem.constraints]

    def as_dict(self) -> dict[str, Tensor]:
        """Copies by constraint name: average → ``[size]``, pointwise → ``[num_samples]``
        (or ``[num_samples, size]``)."""
        out = {c.name: self.dense[c.name].detach().clone() for c in self.dense.constraints}
        for name, table in self.tables.items():
            t = table.table.detach().clone()
            out[name] = t.squeeze(1) if table.width == 1 else t
        return out

    def set(self, values: Mapping[str, Tensor]) -> None:
        """Overwrite multipliers by name (shapes as in :meth:`as_dict`; inequalities are
        projected onto ``≥ 0``)."""
        self.dense.value = self.dense.value.clone()  # replaced, not changed in place
        for name, value in values.items():
            if name in self.dense.slices:
                target = self.dense.value[self.dense.slices[name]]
                target.copy_(torch.as_tensor(value, dtype=target.dtype).reshape(target.shape))
            elif name in self.tables:
                table = self.tables[name]
                rows = torch.as_tensor(value, dtype=table.table.dtype).reshape(table.table.shape)
                table.load_state_dict({"table": rows.clamp_min(0) if table.nonnegative else rows})
            else:
                raise KeyError(f"no constraint {name!r}; declared: {sorted(self.names)}")
        self.dense.project_()

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> None:
        self.dense.to(device, dtype)
        for table in self.tables.values():
            table.to(device, dtype)

    def state_dict(self) -> dict[str, dict[str, Tensor]]:
        return {
            self.DENSE_KEY: self.dense.state_dict(),
            **{name: t.state_dict() for name, t in self.tables.items()},
        }

    def load_state_dict(self, state: Mapping[str, Mapping[str, Tensor]]) -> None:
        self.dense.load_state_dict(dict(state[self.DENSE_KEY]))
        for name, table in self.tables.items():
            table.load_state_dict(dict(state[name]))
