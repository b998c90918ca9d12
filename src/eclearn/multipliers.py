"""Multiplier tables.

Average constraints share one flat vector (:class:`DenseMultipliers`): the Lagrangian term
of all of them is one dot product, the dual step one vectorised update, and distributed
training one collective. Each pointwise constraint owns an ``[num_samples, size]`` table
(:class:`IndexedMultipliers`) of which a step reads and writes only the batch's rows, so
the step cost does not grow with the table. Equality multipliers are free; inequality
multipliers are projected onto ``≥ 0`` after every update.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from eclearn.problem import Constraint, ProblemError

__all__ = ["DenseMultipliers", "IndexedMultipliers"]


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

    def __getitem__(self, name: str) -> Tensor:
        return self.value[self.slices[name]]

    def flatten(self, values: dict[str, Tensor]) -> Tensor:
        """Concatenate per-constraint tensors in declaration order."""
        return torch.cat([values[c.name].reshape(-1) for c in self.constraints])

    def project_(self) -> None:
        """Inequality multipliers onto ``[0, ∞)``; equality multipliers untouched."""
        if self.has_inequality:
            self.value.copy_(torch.where(self.inequality, self.value.clamp_min(0), self.value))

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> None:
        self.value = self.value.to(device=device, dtype=dtype)
        self.target = self.target.to(device=device, dtype=dtype)
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
        self.table = (
            constraint.init.to(dtype=dtype).to(device).expand(self.num_samples, self.width).clone()
        )
        self.target = constraint.target.to(dtype=dtype, device=device)
        self.nonnegative = not constraint.is_equality
        self._refresh_sums()

    def _refresh_sums(self) -> None:
        table = self.table.double()
        self.sum = table.sum()
        self.sum_sq = (table * table).sum()

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
        self.table = table.to(self.table)
        if "sum" in state:
            self.sum = state["sum"].to(self.sum)
            self.sum_sq = state["sum_sq"].to(self.sum_sq)
        else:
            self._refresh_sums()
