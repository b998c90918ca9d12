"""Formulations: how constraint violations enter the primal loss and the dual gradient.

All share the solver loop, so baselines are compared apples to apples.

- :class:`Lagrangian` — ``ℓ + Σ λ(ĝ − c) + Σ μ(ĥ − b)``; dual gradient = violation.
- :class:`Penalty` — fixed weights, no dual step: ``ℓ + Σ w|ĥ − b|^p + Σ w[ĝ − c]₊^p``
  (the fairness-regulariser / PINN baseline: with ``p = 1`` and mean-squared residuals as
  constraint values it is exactly ``ℓ + Σ w·MSE``).
- :class:`AugmentedLagrangian` — ``μv + ρ/2 v²`` for equalities and the
  Powell–Hestenes–Rockafellar term ``([λ + ρv]₊² − λ²)/(2ρ)`` for inequalities; its dual
  gradient ``max(v, −λ/ρ)`` for inequalities makes ``ecl.dual.SGD(lr=ρ)`` the classical
  method of multipliers.

Pointwise terms are batch means over the rows: ``(1/B) Σ_i term(μ_i, v_i)``.

**Schedules.** Penalty weights and the augmented Lagrangian's ``ρ`` may grow during
training, as in the classical method of multipliers: ``schedule`` is a callable
``k -> factor`` or a number ``γ ≥ 1`` (factor ``γᵏ``), capped by ``max_factor``; ``k`` counts
the dual steps (outer iterations) for the augmented Lagrangian and the training steps for
penalties, which take no dual steps. The solver calls :meth:`Formulation.at_step` before every step, so the
value is a pure function of the counter and resumes exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from eclearn.measures import excess
from eclearn.problem import Constraint, ProblemError

__all__ = ["AugmentedLagrangian", "Formulation", "Lagrangian", "Penalty"]


class Formulation:
    """Base class. ``term`` builds the differentiable primal term of some constraint entries
    (``weight`` carries per-entry fixed weights where the formulation has them),
    ``dual_gradient`` the ascent direction for their multipliers."""

    updates_multipliers = True
    schedule: Callable[[int], float] | float | None = None
    max_factor: float = math.inf
    factor: float = 1.0

    def _set_schedule(
        self, schedule: Callable[[int], float] | float | None, max_factor: float | None
    ) -> None:
        if (
            schedule is not None
            and not callable(schedule)
            and not (
                isinstance(schedule, (int, float))
                and not isinstance(schedule, bool)
                and schedule >= 1
            )
        ):
            raise ValueError(
                f"{type(self).__name__} schedule must be a callable k -> factor or a growth "
                f"factor ≥ 1, got {schedule!r}"
            )
        if max_factor is not None and not max_factor >= 1:
            raise ValueError(f"max_factor must be ≥ 1, got {max_factor!r}")
        self.schedule = schedule
        self.max_factor = math.inf if max_factor is None else float(max_factor)
        self.factor = 1.0

    def at_step(self, dual_step: int) -> None:
        """Apply the schedule at dual step ``dual_step`` (sets :attr:`factor`)."""
        if self.schedule is None:
            return
        raw = self.schedule(dual_step) if callable(self.schedule) else self.schedule**dual_step
        value = float(raw)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(
                f"the {type(self).__name__} schedule returned {value!r} at dual step "
                f"{dual_step}; it must be a finite factor > 0"
            )
        self.factor = min(value, self.max_factor)

    def bind(self, constraints: Sequence[Constraint]) -> None:
        """Resolve per-constraint settings against the problem's declarations."""

    def weights(self, constraint: Constraint) -> Tensor | None:
        """Per-component fixed weights of ``constraint`` (None: the formulation has none)."""
        return None

    def term(
        self, violation: Tensor, multiplier: Tensor, inequality: Tensor, weight: Tensor | None
    ) -> Tensor:
        """Elementwise primal term of signed violations ``v`` with their multipliers
        (``inequality`` marks inequality entries, ``weight`` the fixed weights); summed by the
        solver (batch-mean for pointwise rows)."""
        raise NotImplementedError

    def dual_gradient(self, violation: Tensor, multiplier: Tensor, inequality: Tensor) -> Tensor:
        """The ascent direction of the multipliers (the violation for the Lagrangian)."""
        return violation

    def describe(self) -> dict[str, object]:
        """Plain settings (stored in checkpoints and run directories)."""
        return {"type": type(self).__name__}


class Lagrangian(Formulation):
    """The (empirical) Lagrangian — the paper's formulation and the default."""

    def term(
        self, violation: Tensor, multiplier: Tensor, inequality: Tensor, weight: Tensor | None
    ) -> Tensor:
        return multiplier * violation


class Penalty(Formulation):
    """Fixed-weight penalties; multipliers are not updated.

    ``weights``: one number for every constraint, or ``{name: weight}`` (a number or a
    per-component list) with an optional ``"default"``. ``power``: 1 (absolute value /
    hinge) or 2 (squares). ``schedule`` / ``max_factor``: grow every weight by a factor
    (see the module docstring).
    """

    updates_multipliers = False

    def __init__(
        self,
        weights: float | Mapping[str, float | Sequence[float]] = 1.0,
        power: int = 1,
        *,
        schedule: Callable[[int], float] | float | None = None,
        max_factor: float | None = None,
    ) -> None:
        if power not in (1, 2):
            raise ValueError(f"Penalty power must be 1 or 2, got {power}")
        self.raw_weights = weights
        self.power = power
        self._resolved: dict[str, Tensor] = {}
        self._set_schedule(schedule, max_factor)

    def bind(self, constraints: Sequence[Constraint]) -> None:
        names = {c.name for c in constraints}
        if isinstance(self.raw_weights, Mapping):
            unknown = sorted(set(self.raw_weights) - names - {"default"})
            if unknown:
                raise ProblemError(
                    f"Penalty weights name {unknown}, which the problem does not declare; "
                    f"declared: {sorted(names)}"
                )
            missing = sorted(names - set(self.raw_weights))
            if missing and "default" not in self.raw_weights:
                raise ProblemError(
                    f"Penalty weights give no weight for {missing}: add them or a 'default'"
                )
        for c in constraints:
            if isinstance(self.raw_weights, Mapping):
                raw = self.raw_weights.get(c.name, self.raw_weights.get("default"))
            else:
                raw = self.raw_weights
            w = torch.as_tensor(raw, dtype=torch.float64).reshape(-1)
            if w.numel() == 1:
                w = w.expand(c.size).clone()
            if w.numel() != c.size or bool((w < 0).any()):
                raise ProblemError(
                    f"Penalty weight for {c.name!r} must be ≥ 0 with 1 or {c.size} entries, got "
                    f"{w.tolist()}"
                )
            self._resolved[c.name] = w

    def weights(self, constraint: Constraint) -> Tensor | None:
        return self._resolved[constraint.name]

    def term(
        self, violation: Tensor, multiplier: Tensor, inequality: Tensor, weight: Tensor | None
    ) -> Tensor:
        assert weight is not None
        magnitude = excess(violation, inequality)
        if self.power == 2:
            magnitude = magnitude * magnitude
        scaled = weight.to(violation)
        return (scaled if self.factor == 1.0 else scaled * self.factor) * magnitude

    def describe(self) -> dict[str, object]:
        return {
            "type": "Penalty",
            "power": self.power,
            "weights": {k: v.tolist() for k, v in self._resolved.items()},
            "schedule": None if self.schedule is None else repr(self.schedule),
        }


class AugmentedLagrangian(Formulation):
    """Augmented Lagrangian with penalty parameter ``rho`` (see the module docstring).

    ``schedule`` / ``max_factor`` grow ``ρ`` during training (``ρ_k = rho · factor(k)``); the
    current value is :attr:`current_rho`.
    """

    def __init__(
        self,
        rho: float = 1.0,
        *,
        schedule: Callable[[int], float] | float | None = None,
        max_factor: float | None = None,
    ) -> None:
        if not (isinstance(rho, (int, float)) and math.isfinite(rho) and rho > 0):
            raise ValueError(f"AugmentedLagrangian rho must be a finite positive number, got {rho}")
        self.rho = float(rho)
        self._set_schedule(schedule, max_factor)

    @property
    def current_rho(self) -> float:
        """``ρ`` at the current dual step (``rho`` times the schedule's factor)."""
        return self.rho * self.factor

    def term(
        self, violation: Tensor, multiplier: Tensor, inequality: Tensor, weight: Tensor | None
    ) -> Tensor:
        rho = self.current_rho
        equality = multiplier * violation + 0.5 * rho * violation * violation
        shifted = (multiplier + rho * violation).clamp_min(0)
        inequality_term = (shifted * shifted - multiplier * multiplier) / (2 * rho)
        return torch.where(inequality, inequality_term, equality)

    def dual_gradient(self, violation: Tensor, multiplier: Tensor, inequality: Tensor) -> Tensor:
        rho = self.current_rho
        return torch.where(inequality, torch.maximum(violation, -multiplier / rho), violation)

    def describe(self) -> dict[str, object]:
        return {
            "type": "AugmentedLagrangian",
            "rho": self.rho,
            "schedule": None if self.schedule is None else repr(self.schedule),
        }
