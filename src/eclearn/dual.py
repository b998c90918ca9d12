"""Dual optimizers: how the multipliers move along the constraint violations.

Every dual optimizer performs *ascent* on the dual function: the dual gradient of an
average constraint is its violation ``ĥ − b`` (``ĝ − c``), of a pointwise constraint the
per-sample violation of the batch's rows. Projection onto ``λ ≥ 0`` for inequalities is
done by the multiplier tables after every update, not by the optimizer.

Subclass contract (what a new dual optimizer implements):

- ``state_names``: names of the per-entry state tensors it keeps (each the shape of the
  multipliers it updates: the flat vector of average constraints, or a pointwise table);
- ``update(grad, state, lr) -> (delta, state)``: a pure function of the dual gradient of
  some entries, the state *of those entries* and their learning rates (a tensor
  broadcastable to ``grad``), returning the increment to add to the multipliers and the
  entries' new state. The base class gathers and scatters the rows of pointwise tables,
  so ``update`` never sees indices and its cost is that of the touched entries.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

__all__ = ["SGD", "Adam", "DualOptimizer", "NuPI"]

LearningRate = float | Mapping[str, float]


class DualOptimizer:
    """Base class; see the module docstring for the subclass contract."""

    state_names: tuple[str, ...] = ()

    def __init__(self, lr: LearningRate) -> None:
        if isinstance(lr, Mapping):
            if "default" not in lr:
                raise ValueError(
                    "a per-constraint dual learning rate mapping needs a 'default' entry for the "
                    f"constraints it does not name, got keys {sorted(lr)}"
                )
            for name, value in lr.items():
                _check_lr(value, f"dual lr for {name!r}")
            self.lrs = dict(lr)
        else:
            _check_lr(lr, "dual lr")
            self.lrs = {"default": float(lr)}

    def lr_for(self, name: str, override: float | None = None) -> float:
        """Learning rate of constraint ``name`` (the constraint's own ``lr=`` wins)."""
        if override is not None:
            return override
        return float(self.lrs.get(name, self.lrs["default"]))

    def init_state(self, like: Tensor) -> dict[str, Tensor]:
        return {name: torch.zeros_like(like) for name in self.state_names}

    def update(
        self, grad: Tensor, state: dict[str, Tensor], lr: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def hyperparameters(self) -> dict[str, object]:
        return {"type": type(self).__name__, "lr": self.lrs}


def _check_lr(value: object, what: str) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite number ≥ 0, got {value!r}")


class SGD(DualOptimizer):
    """Projected gradient ascent: ``μ ← μ + η (ĥ − b)``, ``λ ← [λ + η (ĝ − c)]₊``."""

    def update(self, grad, state, lr):
        return lr * grad, state


class Adam(DualOptimizer):
    """Adam applied to ascent (as in the paper's code), with per-entry bias correction.

    ``m ← β₁m + (1−β₁)g``, ``v ← β₂v + (1−β₂)g²``, ``μ ← μ + η m̂ / (√v̂ + ε)``; each
    entry counts its own steps, so rows of a pointwise table that are visited rarely get
    the correct bias correction.
    """

    state_names = ("exp_avg", "exp_avg_sq", "steps")

    def __init__(
        self, lr: LearningRate = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ) -> None:
        super().__init__(lr)
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Adam betas must lie in [0, 1), got {betas}")
        if eps <= 0:
            raise ValueError(f"Adam eps must be positive, got {eps}")
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)

    def update(self, grad, state, lr):
        beta1, beta2 = self.betas
        steps = state["steps"] + 1
        exp_avg = state["exp_avg"].mul(beta1).add_(grad, alpha=1 - beta1)
        exp_avg_sq = state["exp_avg_sq"].mul(beta2).addcmul_(grad, grad, value=1 - beta2)
        correction1 = 1 - beta1**steps
        correction2 = 1 - beta2**steps
        denom = (exp_avg_sq / correction2).sqrt_().add_(self.eps)
        delta = lr * (exp_avg / correction1) / denom
        return delta, {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq, "steps": steps}

    def hyperparameters(self):
        return {**super().hyperparameters(), "betas": list(self.betas), "eps": self.eps}


class NuPI(DualOptimizer):
    """The νPI controller of Sohrabi et al. (ICML 2024) for the multipliers.

    ``ξ_t = ν ξ_{t−1} + (1−ν) e_t`` and ``μ ← μ + η (κ_I e_t + κ_P (ξ_t − ξ_{t−1}))`` with
    error ``e_t`` the violation. The first update of each entry starts from ``ξ_{−1} = e_0``
    so it equals a plain ascent step of size ``η κ_I``. ``kp = 0`` recovers :class:`SGD`;
    the proportional term damps the oscillations plain ascent shows on rate constraints.
    """

    state_names = ("xi", "started")

    def __init__(
        self, lr: LearningRate = 1e-2, kp: float = 1.0, ki: float = 1.0, nu: float = 0.0
    ) -> None:
        super().__init__(lr)
        if kp < 0 or ki < 0:
            raise ValueError(f"NuPI gains must be ≥ 0, got kp={kp}, ki={ki}")
        if not 0.0 <= nu < 1.0:
            raise ValueError(f"NuPI nu must lie in [0, 1), got {nu}")
        self.kp, self.ki, self.nu = float(kp), float(ki), float(nu)

    def update(self, grad, state, lr):
        started = state["started"] > 0
        previous = torch.where(started, state["xi"], grad)
        xi = torch.where(started, self.nu * state["xi"] + (1 - self.nu) * grad, grad)
        delta = lr * (self.ki * grad + self.kp * (xi - previous))
        return delta, {"xi": xi, "started": torch.ones_like(state["started"])}

    def hyperparameters(self):
        return {**super().hyperparameters(), "kp": self.kp, "ki": self.ki, "nu": self.nu}
