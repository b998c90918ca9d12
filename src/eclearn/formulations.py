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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from eclearn.problem import Constraint, ProblemError

__all__ = ["AugmentedLagrangian", "Formulation", "Lagrangian", "Penalty"]


class Formulation:
    """Base class. ``term`` builds the differentiable primal term of some constraint entries
    (``weight`` carries per-entry fixed weights where the formulation has them),
    ``dual_gradient`` the ascent direction for their multipliers."""

    updates_multipliers = True

    def bind(self, constraints: Sequence[Constraint]) -> None:
        """Resolve per-constraint settings against the problem's declarations."""

    def weights(self, constraint: Constraint) -> Tensor | None:
        return None

    def term(
        self, violation: Tensor, multiplier: Tensor, inequality: Tensor, weight: Tensor | None
    ) -> Tensor:
        raise NotImplementedError

    def dual_gradient(self, violation: Tensor, multiplier: Tensor, inequality: Tensor) -> Tensor:
        return violation

    def describe(self) -> dict[str, object]:
        return {"type": type(self).__name__}


class Lagrangian(Formulation):
    """The (empirical) Lagrangian — the paper's formulation and the default."""

    def term(self, violation, multiplier, inequality, weight):
        return multiplier * violation


class Penalty(Formulation):
    """Fixed-weight penalties; multipliers are not updated.

    ``weights``: one number for every constraint, or ``{name: weight}`` (a number or a
    per-component list) with an optional ``"default"``. ``power``: 1 (absolute value /
    hinge) or 2 (squares).
    """

    updates_multipliers = False

    def __init__(
        self, weights: float | Mapping[str, float | Sequence[float]] = 1.0, power: int = 1
    ) -> None:
        if power not in (1, 2):
            raise ValueError(f"Penalty power must be 1 or 2, got {power}")
        self.raw_weights = weights
        self.power = power
        self._resolved: dict[str, Tensor] = {}

    def bind(self, constraints):
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

    def weights(self, constraint):
        return self._resolved[constraint.name]

    def term(self, violation, multiplier, inequality, weight):
        magnitude = torch.where(inequality, violation.clamp_min(0), violation.abs())
        if self.power == 2:
            magnitude = magnitude * magnitude
        return weight.to(violation) * magnitude

    def describe(self):
        return {
            "type": "Penalty",
            "power": self.power,
            "weights": {k: v.tolist() for k, v in self._resolved.items()},
        }


class AugmentedLagrangian(Formulation):
    """Augmented Lagrangian with penalty parameter ``rho`` (see the module docstring)."""

    def __init__(self, rho: float = 1.0) -> None:
        if not rho > 0:
            raise ValueError(f"AugmentedLagrangian rho must be positive, got {rho}")
        self.rho = float(rho)

    def term(self, violation, multiplier, inequality, weight):
        rho = self.rho
        equality = multiplier * violation + 0.5 * rho * violation * violation
        shifted = (multiplier + rho * violation).clamp_min(0)
        inequality_term = (shifted * shifted - multiplier * multiplier) / (2 * rho)
        return torch.where(inequality, inequality_term, equality)

    def dual_gradient(self, violation, multiplier, inequality):
        return torch.where(inequality, torch.maximum(violation, -multiplier / self.rho), violation)

    def describe(self):
        return {"type": "AugmentedLagrangian", "rho": self.rho}
