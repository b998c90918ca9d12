"""Ratio-of-sums statistics.

A group's positive rate or a class's mean loss is ``Σ numerator / Σ denominator``.
Averaging per-batch (or per-process) ratios is biased when the denominators differ, so an
``evaluate`` may return ``Ratio(numerator, denominator)`` instead of the finished value:
``ecl.evaluate`` sums numerators and denominators over batches, and distributed training
sums them over processes, before dividing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Ratio"]


@dataclass(frozen=True)
class Ratio:
    """A statistic ``numerator / denominator`` whose parts are sums over samples.

    Both parts are tensors of the constraint's shape (or broadcastable to it). The
    denominator is typically a count (or a sum of weights) and needs no gradient.
    """

    numerator: Tensor
    denominator: Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.numerator, Tensor) or not isinstance(self.denominator, Tensor):
            raise TypeError(
                "Ratio(numerator, denominator) takes two tensors; got "
                f"{type(self.numerator).__name__} and {type(self.denominator).__name__}"
            )

    @property
    def value(self) -> Tensor:
        """The ratio; entries with a zero denominator are 0 (an empty group contributes nothing)."""
        den = self.denominator.to(self.numerator.dtype)
        safe = torch.where(den == 0, torch.ones_like(den), den)
        return torch.where(den == 0, torch.zeros_like(self.numerator / safe), self.numerator / safe)

    def detach(self) -> Ratio:
        return Ratio(self.numerator.detach(), self.denominator.detach())

    def __add__(self, other: Ratio) -> Ratio:
        """Pool two ratios by summing their parts (what batch and process reductions do)."""
        if not isinstance(other, Ratio):
            return NotImplemented
        return Ratio(self.numerator + other.numerator, self.denominator + other.denominator)


def as_value(statistic: Tensor | Ratio) -> Tensor:
    """The finished value of a statistic that may be a :class:`Ratio`."""
    return statistic.value if isinstance(statistic, Ratio) else statistic
