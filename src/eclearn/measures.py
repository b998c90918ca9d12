"""How violated is a constraint: the one measure every reader uses.

For a signed violation ``v`` (``value − rhs`` for an equality, ``value − bound`` for an
inequality) the **excess** is

    excess(v) = |v|      (equality)
    excess(v) = [v]₊     (inequality: slack, v < 0, is not a violation)

and a component is within tolerance when ``excess(v) ≤ tol``. Pointwise constraints are
measured per sample and summarised by the mean and the max over the samples.

History, progress bars, stopping, diagnostics, :func:`eclearn.evaluate`, selection and
reports all read violations through these functions (certificates judge confidence
*intervals*, which is their own rule). Every function accepts torch tensors and NumPy
arrays; ``inequality`` is a bool or a bool mask broadcastable to ``violation``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, overload

import numpy as np
import torch
from torch import Tensor

__all__ = ["beyond", "excess", "feasibility_key", "worst"]


@overload
def excess(violation: Tensor, inequality: Any) -> Tensor: ...


@overload
def excess(violation: np.ndarray, inequality: Any) -> np.ndarray: ...


def excess(violation: Tensor | np.ndarray, inequality: Any) -> Tensor | np.ndarray:
    """``|v|`` for equalities, ``[v]₊`` for inequalities, elementwise."""
    if isinstance(violation, Tensor):
        if isinstance(inequality, bool):
            return violation.clamp_min(0) if inequality else violation.abs()
        mask = torch.as_tensor(inequality, device=violation.device)
        return torch.where(mask, violation.clamp_min(0), violation.abs())
    v = np.asarray(violation, dtype=np.float64)
    out: np.ndarray = np.where(inequality, np.maximum(v, 0.0), np.abs(v))
    return out


@overload
def beyond(violation: Tensor, inequality: Any, tolerance: Any) -> Tensor: ...


@overload
def beyond(violation: np.ndarray, inequality: Any, tolerance: Any) -> np.ndarray: ...


def beyond(violation: Tensor | np.ndarray, inequality: Any, tolerance: Any) -> Tensor | np.ndarray:
    """How far the excess lies beyond tolerance: ``[excess(v) − tol]₊`` (0 when satisfied)."""
    over = excess(violation, inequality) - tolerance
    return over.clamp_min(0) if isinstance(over, Tensor) else np.maximum(over, 0.0)


def worst(excesses: Iterable[float]) -> float:
    """The largest of some excesses, ignoring NaN (0 when there are none)."""
    finite = [float(e) for e in excesses if not np.isnan(e)]
    return max(finite, default=0.0)


def feasibility_key(worst_beyond: float, objective: float | None) -> tuple[int, float]:
    """Order candidates: feasible ones (nothing beyond tolerance) by objective, then the
    infeasible ones by how far their worst component lies beyond tolerance."""
    if worst_beyond <= 0.0:
        return (0, 0.0 if objective is None or np.isnan(objective) else float(objective))
    return (1, float(worst_beyond))
