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
- ``init_state(like)`` (optional override): the zero state for a multiplier tensor
  ``like`` (``[n]`` for the flat vector, ``[num_samples, size]`` for a table). Keep it
  small: state that is the same for a whole row (a step count, a "started" flag) is stored
  once per row (shape ``[num_samples, 1]``), and Adam's moments of float64 multipliers are
  kept in float32 (:func:`state_dtype`): the step ``m̂/√v̂`` needs relative, not absolute,
  precision, and the multipliers themselves accumulate in float64.

Learning rates: a float or ``{name: lr, "default": lr}`` (a constraint's own ``lr=`` wins),
changeable between fits with :meth:`DualOptimizer.set_lr`, and scaled at dual step ``k`` by
``schedule``: a callable ``k -> factor`` (e.g. ``lambda k: 1 / (1 + k / 1000)``, or any
``torch.optim.lr_scheduler``-like function of the step) or a number ``γ`` (factor ``γᵏ``).
The factor is a pure function of the solver's dual-step counter, so a resumed run gets the
same rates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

__all__ = ["SGD", "Adam", "DualOptimizer", "NuPI", "state_dtype"]

LearningRate = float | Mapping[str, float]
Schedule = Callable[[int], float] | float | None


def state_dtype(like: Tensor) -> torch.dtype:
    """Dtype of optimizer moments for multipliers ``like``: float32 for float64 multipliers
    (half the memory; the moments are noisy statistics), else the multipliers' own."""
    return torch.float32 if like.dtype == torch.float64 else like.dtype


def row_shape(like: Tensor) -> tuple[int, ...]:
    """Shape of once-per-row state: ``[n]`` for a flat vector, ``[rows, 1]`` for a table."""
    return tuple(like.shape[:1]) + (1,) * (like.dim() - 1)


class DualOptimizer:
    """Base class; see the module docstring for the subclass contract."""

    state_names: tuple[str, ...] = ()

    def __init__(self, lr: LearningRate, schedule: Schedule = None) -> None:
        self.version = 0
        self.set_lr(lr)
        if (
            schedule is not None
            and not callable(schedule)
            and (
                isinstance(schedule, bool)
                or not (isinstance(schedule, (int, float)) and 0 < schedule <= 1)
            )
        ):
            raise ValueError(
                f"dual schedule must be a callable k -> factor or a decay factor in (0, 1], "
                f"got {schedule!r}"
            )
        self.schedule = schedule

    def set_lr(self, lr: LearningRate) -> None:
        """Set the learning rate(s); a solver picks the change up at its next step."""
        if isinstance(lr, Mapping):
            if "default" not in lr:
                raise ValueError(
                    "a per-constraint dual learning rate mapping needs a 'default' entry for the "
                    f"constraints it does not name, got keys {sorted(lr)}"
                )
            for name, value in lr.items():
                _check_lr(value, f"dual lr for {name!r}")
            self._lrs = {k: float(v) for k, v in lr.items()}
        else:
            _check_lr(lr, "dual lr")
            self._lrs = {"default": float(lr)}
        self.version += 1

    @property
    def lrs(self) -> dict[str, float]:
        """The learning rates: ``{"default": lr}`` plus per-constraint entries."""
        return self._lrs

    @lrs.setter
    def lrs(self, value: LearningRate) -> None:
        self.set_lr(value)

    def factor(self, dual_step: int) -> float:
        """The schedule's factor at dual step ``dual_step`` (0 for the first dual step)."""
        if self.schedule is None:
            return 1.0
        if callable(self.schedule):
            value = float(self.schedule(dual_step))
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(
                    f"the dual schedule returned {value!r} at dual step {dual_step}; it must be a "
                    "finite factor ≥ 0"
                )
            return value
        return float(self.schedule) ** dual_step

    def lr_for(self, name: str, override: float | None = None) -> float:
        """Learning rate of constraint ``name`` (the constraint's own ``lr=`` wins)."""
        if override is not None:
            return override
        return float(self._lrs.get(name, self._lrs["default"]))

    def init_state(self, like: Tensor) -> dict[str, Tensor]:
        """The zero state for multipliers shaped like ``like`` (see the module docstring)."""
        return {name: torch.zeros_like(like) for name in self.state_names}

    def update(
        self, grad: Tensor, state: dict[str, Tensor], lr: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """``(delta, new state)`` of the touched entries from their dual gradient, state and
        learning rates — a pure function (see the module docstring)."""
        raise NotImplementedError

    def hyperparameters(self) -> dict[str, object]:
        """Plain settings (checkpoints compare them on load)."""
        return {"type": type(self).__name__, "lr": self.lrs}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items() if k != "type")
        return f"ecl.dual.{type(self).__name__}({params})"


def _check_lr(value: object, what: str) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite number ≥ 0, got {value!r}")


class SGD(DualOptimizer):
    """Projected gradient ascent: ``μ ← μ + η (ĥ − b)``, ``λ ← [λ + η (ĝ − c)]₊`` (no state)."""

    def update(
        self, grad: Tensor, state: dict[str, Tensor], lr: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        return lr * grad, state


class Adam(DualOptimizer):
    """Adam applied to ascent (as in the paper's code), with per-entry bias correction.

    ``m ← β₁m + (1−β₁)g``, ``v ← β₂v + (1−β₂)g²``, ``μ ← μ + η m̂ / (√v̂ + ε)``; each
    row counts its own steps, so rows of a pointwise table that are visited rarely get
    the correct bias correction. State: two moments (float32 for float64 multipliers) and
    one int32 step count per row.
    """

    state_names = ("exp_avg", "exp_avg_sq", "steps")

    def __init__(
        self,
        lr: LearningRate = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        schedule: Schedule = None,
    ) -> None:
        super().__init__(lr, schedule)
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Adam betas must lie in [0, 1), got {betas}")
        if eps <= 0:
            raise ValueError(f"Adam eps must be positive, got {eps}")
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)

    def init_state(self, like: Tensor) -> dict[str, Tensor]:
        moments = state_dtype(like)
        return {
            "exp_avg": torch.zeros(like.shape, dtype=moments, device=like.device),
            "exp_avg_sq": torch.zeros(like.shape, dtype=moments, device=like.device),
            "steps": torch.zeros(row_shape(like), dtype=torch.int32, device=like.device),
        }

    def update(
        self, grad: Tensor, state: dict[str, Tensor], lr: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        beta1, beta2 = self.betas
        steps = state["steps"] + 1
        g = grad.to(state["exp_avg"].dtype)
        exp_avg = state["exp_avg"].mul(beta1).add_(g, alpha=1 - beta1)
        exp_avg_sq = state["exp_avg_sq"].mul(beta2).addcmul_(g, g, value=1 - beta2)
        count = steps.to(grad.dtype)
        correction1 = 1 - beta1**count
        correction2 = 1 - beta2**count
        denom = (exp_avg_sq.to(grad.dtype) / correction2).sqrt_().add_(self.eps)
        delta = lr * (exp_avg.to(grad.dtype) / correction1) / denom
        return delta, {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq, "steps": steps}

    def hyperparameters(self) -> dict[str, object]:
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
        self,
        lr: LearningRate = 1e-2,
        kp: float = 1.0,
        ki: float = 1.0,
        nu: float = 0.0,
        schedule: Schedule = None,
    ) -> None:
        super().__init__(lr, schedule)
        if kp < 0 or ki < 0:
            raise ValueError(f"NuPI gains must be ≥ 0, got kp={kp}, ki={ki}")
        if not 0.0 <= nu < 1.0:
            raise ValueError(f"NuPI nu must lie in [0, 1), got {nu}")
        self.kp, self.ki, self.nu = float(kp), float(ki), float(nu)

    def init_state(self, like: Tensor) -> dict[str, Tensor]:
        return {
            "xi": torch.zeros_like(like),
            "started": torch.zeros(row_shape(like), dtype=torch.bool, device=like.device),
        }

    def update(
        self, grad: Tensor, state: dict[str, Tensor], lr: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        started = state["started"]
        previous = torch.where(started, state["xi"], grad)
        xi = torch.where(started, self.nu * state["xi"] + (1 - self.nu) * grad, grad)
        delta = lr * (self.ki * grad + self.kp * (xi - previous))
        return delta, {"xi": xi, "started": torch.ones_like(started)}

    def hyperparameters(self) -> dict[str, object]:
        return {**super().hyperparameters(), "kp": self.kp, "ki": self.ki, "nu": self.nu}
