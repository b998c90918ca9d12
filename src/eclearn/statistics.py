"""Statistics an ``evaluate`` may return besides plain tensors.

**Ratios of sums.** A group's positive rate or a class's mean loss is
``Σ numerator / Σ denominator``. Averaging per-batch (or per-process) ratios is biased when
the denominators differ, so an ``evaluate`` may return ``Ratio(numerator, denominator)``
instead of the finished value: ``ecl.evaluate`` sums numerators and denominators over
batches, and distributed training sums them over processes, before dividing.

**Proxies.** Many statistics users care about have no useful gradient: a 0/1 error rate, a
thresholded positive rate, a count. ``Proxy(surrogate, exact)`` pairs the real statistic
with a differentiable stand-in (Cotter, Jiang & Sridharan, ALT 2019, "proxy Lagrangian";
Cooper's ``strict_violation``; TFCO's ``proxy_constraints``):

- the primal step differentiates the formulation's term built on ``surrogate``;
- the dual step, the history, stopping, diagnostics, selection, :func:`eclearn.evaluate`
  (with ``exact=True``) and :func:`eclearn.certify` use ``exact``.

So the multipliers keep moving until the *exact* statistic meets the constraint, while the
model is trained along the surrogate's gradient. For the Lagrangian this is the same
gradient as the straight-through value ``surrogate + (exact − surrogate).detach()``; for
``Penalty`` and ``AugmentedLagrangian`` the term is differentiated at the surrogate value
(the conventional choice). Either part may be a :class:`Ratio`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Proxy", "Ratio", "as_value"]


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
        """Both parts detached from the graph."""
        return Ratio(self.numerator.detach(), self.denominator.detach())

    def __add__(self, other: Ratio) -> Ratio:
        """Pool two ratios by summing their parts (what batch and process reductions do)."""
        if not isinstance(other, Ratio):
            return NotImplemented
        return Ratio(self.numerator + other.numerator, self.denominator + other.denominator)


@dataclass(frozen=True)
class Proxy:
    """A statistic whose ``exact`` value has no useful gradient, trained through ``surrogate``.

    Both parts have the constraint's shape (pointwise constraints: per-sample rows) and each
    may be a tensor or a :class:`Ratio`; ``exact`` is used detached. See the module
    docstring for which part each piece of the solver uses.
    """

    surrogate: Tensor | Ratio
    exact: Tensor | Ratio

    def __post_init__(self) -> None:
        for what in ("surrogate", "exact"):
            part = getattr(self, what)
            if isinstance(part, Proxy) or not isinstance(part, (Tensor, Ratio)):
                raise TypeError(
                    f"Proxy(surrogate, exact): {what} must be a tensor or an ecl.Ratio, got "
                    f"{type(part).__name__}"
                )


def as_value(statistic: Tensor | Ratio) -> Tensor:
    """The finished value of a statistic that may be a :class:`Ratio`."""
    return statistic.value if isinstance(statistic, Ratio) else statistic
