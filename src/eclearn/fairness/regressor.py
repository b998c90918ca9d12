"""``FairRegressor``: regression under group constraints, as a scikit-learn estimator.

::

    from eclearn.fairness import FairRegressor

    reg = FairRegressor(constraint="bounded_group_loss", bound=0.3)   # mean loss_k ≤ ε
    reg = FairRegressor(constraint="equal_mean_prediction")           # mean f_k = mean f
    reg.fit(X, y, sensitive_features=A, sample_weight=w)

- ``"bounded_group_loss"``: every group's (weighted) mean squared error is ≤ ``bound``
  (one :class:`eclearn.Inequality` of size K, each value an :class:`eclearn.Ratio`), the
  objective the overall mean squared error — the constraint of Fairlearn's
  ``BoundedGroupLoss`` reduction (Agarwal, Dudík & Wu, ICML 2019);
- ``"equal_mean_prediction"``: every group's mean prediction equals the overall one (one
  :class:`eclearn.Equality` of size K; "statistical parity" of a regressor's mean).

Both statistics are smooth, so no proxy is needed; everything else (models, mini-batches,
validation, groups, the convergence warning) is that of
:class:`~eclearn.fairness.FairClassifier`. Targets are standardised internally (the bound
is in the units of ``y``: it is scaled with it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted
from torch import Tensor, nn

import eclearn as ecl
from eclearn.fairness._base import FairBase, store_params
from eclearn.fairness._engine import group_scale
from eclearn.fairness.groups import MAX_GROUPS, MIN_GROUP_SIZE
from eclearn.statistics import Ratio

try:  # scikit-learn ≥ 1.6
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # pragma: no cover

    def _validate_data(estimator: Any, *args: Any, **kwargs: Any) -> Any:
        return estimator._validate_data(*args, **kwargs)


__all__ = ["REGRESSION_CONSTRAINTS", "FairRegressor", "RegressorStatistics"]

REGRESSION_CONSTRAINTS: tuple[str, ...] = ("bounded_group_loss", "equal_mean_prediction")


class RegressorStatistics:
    """``evaluate`` of a fair regressor on standardised targets: weighted MSE objective
    (Ratio), group mean losses ``Ratio(Σ_k w ℓ, Σ_k w)``, or mean-prediction gaps
    ``Ratio(Σ w f c, Σ w / W)`` with full-data contrasts (pool exactly over a pass)."""

    def __init__(self, formulation: str, num_groups: int, totals: Mapping[str, Any]) -> None:
        self.formulation = formulation
        self.k = num_groups
        self.total = float(totals["weight"])
        self.group_weight = torch.as_tensor(totals["group_weight"], dtype=torch.float64)

    def start_running(self, *args: Any) -> None:  # smooth statistics: nothing to keep
        return None

    def __call__(
        self, model: nn.Module, batch: Mapping[str, Tensor], exact: bool = False
    ) -> dict[str, Any]:
        pred = model(batch["x"]).reshape(-1)
        y = batch["y"].to(pred.dtype)
        w = batch["w"].to(pred.dtype)
        losses = (pred - y) ** 2
        out: dict[str, Any] = {"objective": Ratio((w * losses).sum(), w.sum())}
        if self.formulation == "unconstrained":
            return out
        cells = F.one_hot(batch["group"].long(), self.k).to(pred.dtype) * w[:, None]
        if self.formulation == "bounded_group_loss":
            out["group_loss"] = Ratio(cells.T @ losses, cells.sum(0))
        else:
            gw = self.group_weight.to(pred.dtype)
            gap = (cells.T @ pred) / gw - (w @ pred) / self.total
            share = w.sum() / self.total
            out["mean_prediction_gap"] = Ratio(gap, share.expand(gap.shape))
        return out


class FairRegressor(FairBase, RegressorMixin, BaseEstimator):
    """A regressor trained under a group constraint (see the module docstring).

    Parameters are those of :class:`~eclearn.fairness.FairClassifier` (model,
    hidden_layer_sizes, activation, alpha, learning_rate, dual_learning_rate, max_iter,
    batch_size, exact_every, validation_fraction, selection_tolerance, patience,
    selection, init, min_group_size, max_groups, random_state) plus:

    constraint : {"bounded_group_loss", "equal_mean_prediction"} or None
    bound : float
        ε of ``"bounded_group_loss"`` (mean squared error per group, units of ``y²``).
    model : "linear" (default), "mlp", torch.nn.Module or callable (one output).

    Attributes: ``model_``, ``coef_``/``intercept_`` (``model="linear"``), ``groups_``,
    ``multipliers_``, ``history_``, ``feasible_``, ``worst_group_``, ``worst_violation_``,
    ``train_violation_``, ``group_loss_`` (training mean squared error per group).
    """

    _kind = "regressor"

    def __init__(
        self,
        constraint: str | None = "bounded_group_loss",
        *,
        bound: float | None = None,
        model: Any = "linear",
        hidden_layer_sizes: Any = (100,),
        activation: str = "relu",
        alpha: float = 1e-4,
        learning_rate: float | str = "auto",
        dual_learning_rate: float = 5e-3,
        max_iter: int = 2000,
        batch_size: int | str = "auto",
        exact_every: int | str = "auto",
        validation_fraction: float | str | None = "auto",
        selection_tolerance: float = 0.01,
        patience: int | None = 100,
        selection: str = "best-feasible",
        init: str = "unconstrained",
        min_group_size: int = MIN_GROUP_SIZE,
        max_groups: int = MAX_GROUPS,
        random_state: int | None = None,
    ) -> None:
        store_params(self, locals())

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags

    def _formulation(self) -> str:
        if self.constraint is None:
            return "unconstrained"
        if self.constraint not in REGRESSION_CONSTRAINTS:
            raise ValueError(
                f"constraint={self.constraint!r} is unknown; choose one of "
                f"{list(REGRESSION_CONSTRAINTS)} or None"
            )
        if self.constraint == "bounded_group_loss" and (
            self.bound is None or not np.isfinite(self.bound) or self.bound <= 0
        ):
            raise ValueError(
                "constraint='bounded_group_loss' needs bound=ε > 0 (each group's mean "
                f"squared error ≤ ε, in units of y²), got {self.bound!r}"
            )
        return self.constraint

    def fit(
        self, X: Any, y: Any, sensitive_features: Any = None, sample_weight: Any = None
    ) -> FairRegressor:
        """Fit under the constraint (``sensitive_features`` required unless None)."""
        formulation = self._formulation()
        self._check_common()
        X, y = _validate_data(self, X, y, dtype=np.float64, y_numeric=True)
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        self._formulation_ = formulation
        self.y_mean_, self.y_scale_ = float(y.mean()), float(y.std() or 1.0)
        target = (y - self.y_mean_) / self.y_scale_
        return self._fit(
            X, target, sensitive_features, sample_weight, n_outputs=1, strata_target=None
        )

    def _totals(self, codes: np.ndarray, target: np.ndarray, w: np.ndarray, k: int) -> dict:
        return {"weight": w.sum(), "group_weight": np.bincount(codes, weights=w, minlength=k)}

    def _statistics(self, k: int, totals: dict, running: bool) -> RegressorStatistics:
        return RegressorStatistics(self._formulation_, k, totals)

    def _constraints(self, k: int) -> list[Any]:
        f = self._formulation_
        if f == "unconstrained":
            return []
        if f == "bounded_group_loss":
            bound = float(self.bound) / self.y_scale_**2
            tol = max(float(self.selection_tolerance) / self.y_scale_**2, 1e-9)
            return [ecl.Inequality("group_loss", size=k, bound=bound, tolerance=tol)]
        tol = max(float(self.selection_tolerance) / self.y_scale_, 1e-9)
        return [ecl.Equality("mean_prediction_gap", size=k, tolerance=tol)]

    def _dual_scale(self, shares: np.ndarray, constraints: list[Any]) -> Tensor | None:
        return group_scale(shares, 1, len(constraints)) if constraints else None

    def _fit(self, *args: Any, **kwargs: Any) -> FairRegressor:
        out = super()._fit(*args, **kwargs)
        if self._linear():
            layer = self.model_
            assert isinstance(layer, nn.Linear)
            weight = layer.weight.detach().to(torch.float64).numpy()[0] / self.scaler_scale_
            bias = float(layer.bias.detach()[0]) - weight @ self.scaler_mean_
            self.coef_ = weight * self.y_scale_
            self.intercept_ = bias * self.y_scale_ + self.y_mean_
        # violations in the units of y (the solver works on standardised targets)
        unit = self.y_scale_**2 if self._formulation_ == "bounded_group_loss" else self.y_scale_
        self.train_violation_ = self.train_violation_ * unit
        self.worst_violation_ = self.worst_violation_ * unit
        return out

    def predict(self, X: Any) -> np.ndarray:
        """Predictions in the units of ``y`` (deterministic)."""
        check_is_fitted(self, "model_")
        X = _validate_data(self, X, dtype=np.float64, reset=False)
        return self._forward(X).reshape(-1).numpy() * self.y_scale_ + self.y_mean_

    def group_loss(self, X: Any, y: Any, sensitive_features: Any) -> dict[Any, float]:
        """Mean squared error per group on ``(X, y)`` (groups unseen in fit reported too)."""
        pred = self.predict(X)
        labels = self.group_encoder_.labels(sensitive_features, len(pred))
        err = (pred - np.asarray(y, dtype=np.float64)) ** 2
        return {g: float(err[labels == g].mean()) for g in np.unique(labels)}
