"""``FairClassifier``: fair logistic regression as a scikit-learn estimator.

::

    from eclearn.fairness import FairClassifier

    clf = FairClassifier(constraint="demographic_parity")        # rate_k − rate_all = 0
    clf.fit(X, y, sensitive_features=A)                          # A: any labels, one per row
    clf.predict(X_test); clf.predict_proba(X_test)
    clf.multipliers_, clf.history_                               # the dual solution, the run

A logistic regression on standardised features is trained by :class:`eclearn.PrimalDual`
under the chosen constraint, with the settings of :mod:`eclearn.fairness.training` (warm
start from the unconstrained fit, exact-rate dual signal, best feasible iterate). See
``docs/fairness.md`` for the formulations and how the defaults were chosen.

Sensitive features are required whenever ``constraint`` is not None: ``fit(X, y)`` without
them raises (a fairness estimator that silently fit an unconstrained model would be a trap
inside pipelines that forgot to route them). ``constraint=None`` is plain logistic
regression and needs no groups. In a :class:`~sklearn.pipeline.Pipeline` with metadata
routing enabled, request them with ``clf.set_fit_request(sensitive_features=True)``.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.preprocessing import StandardScaler
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_is_fitted

import eclearn as ecl
from eclearn.fairness.training import (
    FairnessEvaluate,
    build_constraints,
    fair_solver,
)

try:  # scikit-learn ≥ 1.6
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # pragma: no cover - older scikit-learn

    def _validate_data(estimator: Any, *args: Any, **kwargs: Any) -> Any:
        return estimator._validate_data(*args, **kwargs)


__all__ = ["CONSTRAINTS", "FairClassifier", "SensitiveFeaturesError"]

CONSTRAINTS: tuple[str, ...] = ("demographic_parity", "equalized_odds", "prescribed_rate")


class SensitiveFeaturesError(ValueError):
    """``sensitive_features`` are missing or unusable for the requested constraint."""


class FairClassifier(ClassifierMixin, BaseEstimator):
    """Binary logistic regression trained under a statistical fairness constraint.

    Parameters
    ----------
    constraint : {"demographic_parity", "equalized_odds", "prescribed_rate"} or None
        ``"demographic_parity"``: every group's positive rate equals the overall rate;
        ``"equalized_odds"``: every group's true and false positive rates equal the overall
        ones; ``"prescribed_rate"``: every group's positive rate equals ``rate``; None:
        unconstrained logistic regression (``sensitive_features`` not needed).
    equality : bool, default True
        Demographic parity as equalities (the paper's formulation). With False it is
        ``|rate_k − rate_all| ≤ tolerance`` (two inequalities per group).
    tolerance : float or None
        ε of the inequality form (required when ``equality=False``).
    rate : float, sequence or mapping
        Target positive rate(s) of ``"prescribed_rate"``: one number for every group, one
        per group in the order of ``groups_`` (sorted labels), or ``{group label: rate}``
        covering exactly the groups of the training data.
    temperature, surrogate : float, {"sigmoid", "hinge"}
        Smoothed indicator whose gradient the primal step follows (slope ``T/4`` at the
        threshold); see :func:`eclearn.fairness.indicator`.
    dual_signal : {"exact", "surrogate"}
        What the multipliers follow: the exact training rates (default; the constraint value
        is exact, its gradient the surrogate's) or the smoothed ones (the paper's code).
    learning_rate, dual_learning_rate : float
        Adam step of the weights and Adam-ascent step of the multipliers.
    max_iter : int
        Most primal-dual steps (full batch).
    selection_tolerance : float
        Largest exact training violation that counts as feasible when choosing the
        returned iterate (the feasible iterate with the lowest training loss is returned;
        without one, the least violating iterate).
    patience : int or None
        Stop once a feasible iterate has not been improved on for this many steps
        (None: run ``max_iter`` steps).
    selection : {"best-feasible", "last"}
        Return the best feasible iterate (default) or the last one (the paper's code).
    init : {"unconstrained", "zeros"}
        Start from the unconstrained logistic regression (L-BFGS, default) or from zeros.
    random_state : int or None
        Seeds the (tiny) random initialisation of the weights before the warm start; the
        fit is deterministic given it.

    Attributes
    ----------
    classes_ : ndarray of shape (2,)
    groups_ : ndarray, the sensitive-feature labels (sorted); group ``k`` is ``groups_[k]``.
    coef_ : ndarray of shape (1, n_features_in_); intercept_ : ndarray of shape (1,)
        The logistic regression in the original feature units.
    multipliers_ : dict of constraint name → ndarray (one entry per group, in ``groups_``
        order); history_ : pandas.DataFrame of the per-step records.
    n_iter_ : int, steps taken; selected_iter_ : int, the step whose iterate was returned.
    train_violation_ : float, largest exact training violation of the returned iterate.
    n_features_in_, feature_names_in_ (DataFrame input only).
    """

    def __init__(
        self,
        constraint: str | None = "demographic_parity",
        *,
        equality: bool = True,
        tolerance: float | None = None,
        rate: float | Sequence[float] | Mapping[Any, float] | None = None,
        temperature: float = 8.0,
        surrogate: str = "sigmoid",
        dual_signal: str = "exact",
        learning_rate: float = 0.2,
        dual_learning_rate: float = 5e-3,
        max_iter: int = 2000,
        selection_tolerance: float = 0.01,
        patience: int | None = 100,
        selection: str = "best-feasible",
        init: str = "unconstrained",
        random_state: int | None = None,
    ) -> None:
        self.constraint = constraint
        self.equality = equality
        self.tolerance = tolerance
        self.rate = rate
        self.temperature = temperature
        self.surrogate = surrogate
        self.dual_signal = dual_signal
        self.learning_rate = learning_rate
        self.dual_learning_rate = dual_learning_rate
        self.max_iter = max_iter
        self.selection_tolerance = selection_tolerance
        self.patience = patience
        self.selection = selection
        self.init = init
        self.random_state = random_state

    # ------------------------------------------------------------------ tags
    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        tags.input_tags.allow_nan = False
        return tags

    def _more_tags(self) -> dict[str, Any]:  # pragma: no cover - scikit-learn < 1.6
        return {"binary_only": True}

    # ------------------------------------------------------------------ fit
    def _formulation(self) -> str:
        if self.constraint is None:
            return "unconstrained"
        if self.constraint not in CONSTRAINTS:
            raise ValueError(
                f"constraint={self.constraint!r} is unknown; choose one of {list(CONSTRAINTS)} "
                "or None (unconstrained)"
            )
        if self.constraint == "demographic_parity":
            if self.equality:
                return "dp-equality"
            if self.tolerance is None:
                raise ValueError("equality=False needs tolerance=ε (|rate_k − rate_all| ≤ ε)")
            return "dp-tolerance"
        if not self.equality:
            raise ValueError(
                f"constraint={self.constraint!r} is implemented with equality=True only"
            )
        return "equalized-odds" if self.constraint == "equalized_odds" else "prescribed-rate"

    def _check_params(self) -> None:
        def positive(name: str, value: Any, *, allow_zero: bool = False) -> None:
            ok = (
                isinstance(value, numbers.Real)
                and not isinstance(value, bool)
                and math.isfinite(value)
                and (value >= 0 if allow_zero else value > 0)
            )
            if not ok:
                raise ValueError(
                    f"{name} must be a {'non-negative' if allow_zero else 'positive'} "
                    f"number, got {value!r}"
                )

        positive("temperature", self.temperature)
        positive("learning_rate", self.learning_rate)
        positive("dual_learning_rate", self.dual_learning_rate, allow_zero=True)
        positive("selection_tolerance", self.selection_tolerance, allow_zero=True)
        if not isinstance(self.max_iter, numbers.Integral) or self.max_iter < 0:
            raise ValueError(f"max_iter must be an int ≥ 0, got {self.max_iter!r}")
        if self.patience is not None and (
            not isinstance(self.patience, numbers.Integral) or self.patience < 1
        ):
            raise ValueError(f"patience must be an int ≥ 1 or None, got {self.patience!r}")
        if self.surrogate not in ("sigmoid", "hinge"):
            raise ValueError(f"surrogate={self.surrogate!r}: choose 'sigmoid' or 'hinge'")
        if self.dual_signal not in ("exact", "surrogate"):
            raise ValueError(f"dual_signal={self.dual_signal!r}: choose 'exact' or 'surrogate'")
        if self.selection not in ("best-feasible", "last"):
            raise ValueError(f"selection={self.selection!r}: choose 'best-feasible' or 'last'")
        if self.init not in ("unconstrained", "zeros"):
            raise ValueError(f"init={self.init!r}: choose 'unconstrained' or 'zeros'")

    def fit(self, X: Any, y: Any, sensitive_features: Any = None) -> FairClassifier:
        """Fit under the constraint. ``sensitive_features``: one label per row (array,
        list, Series) or several columns (2-D array, DataFrame; each distinct row of labels
        is a group); required unless ``constraint=None``."""
        began = time.perf_counter()
        formulation = self._formulation()
        self._check_params()
        X, y = _validate_data(self, X, y, dtype=np.float64, y_numeric=False)
        check_classification_targets(y)
        y_type = type_of_target(y, input_name="y")
        classes, y_codes = np.unique(y, return_inverse=True)
        if y_type != "binary" or len(classes) != 2:
            raise ValueError(
                "Only binary classification is supported. The type of the target is "
                f"{y_type}: y has {len(classes)} class(es) ({classes[:5].tolist()}); "
                "FairClassifier needs exactly two (rates count the second, classes_[1])"
            )
        self.classes_ = classes
        groups, codes = self._encode_groups(sensitive_features, len(X), formulation)
        num_groups = max(len(groups), 2)
        self._check_groups(formulation, codes, y_codes, groups)
        rate = self._resolve_rate(formulation, groups)

        self.scaler_ = StandardScaler().fit(X)
        x = torch.as_tensor(self.scaler_.transform(X), dtype=torch.float64)
        batch = {
            "x": x,
            "y": torch.as_tensor(y_codes, dtype=torch.float64),
            "group": torch.as_tensor(codes, dtype=torch.int64),
        }
        model = torch.nn.Linear(X.shape[1], 1, dtype=torch.float64)
        with torch.no_grad():
            generator = torch.Generator().manual_seed(
                int(np.random.RandomState(self.random_state).randint(2**31 - 1))
            )
            model.weight.copy_(
                1e-3 * torch.randn(model.weight.shape, generator=generator, dtype=torch.float64)
            )
            model.bias.zero_()
        evaluate = FairnessEvaluate(
            formulation,
            num_groups,
            surrogate=self.surrogate,
            temperature=float(self.temperature),
            dual_signal=self.dual_signal,
        )
        constraints = build_constraints(
            formulation,
            num_groups,
            tolerance=self.tolerance,
            rate=rate,
            constraint_tolerance=max(float(self.selection_tolerance), 1e-6),
        )
        batch = evaluate.prepare(batch)
        recipe = fair_solver(
            evaluate,
            constraints,
            model,
            batch,
            optimizer=torch.optim.Adam(model.parameters(), lr=float(self.learning_rate)),
            dual=ecl.dual.Adam(lr=float(self.dual_learning_rate)),
            warm_start=self.init == "unconstrained",
            select=self.selection == "best-feasible",
            patience=self.patience,
        )
        solver = recipe.solver
        result = solver.fit(
            [batch],
            max_steps=int(self.max_iter),
            warn=False,
            callbacks=recipe.callbacks,
            select=recipe.selector,
            stopping=recipe.stopping,
        )
        if result.selected is not None:
            result.selected.load_into(model)
        scale = self.scaler_.scale_
        weight = model.weight.detach().numpy().reshape(-1) / scale
        self.coef_ = weight.reshape(1, -1)
        self.intercept_ = np.array(
            [float(model.bias.detach()) - float(weight @ self.scaler_.mean_)]
        )
        self.groups_ = groups
        self.constraint_names_ = [c.name for c in constraints]
        self.multipliers_ = {
            k: v.detach().cpu().numpy().copy() for k, v in result.multipliers.items()
        }
        self.history_ = pd.DataFrame(solver.history.to_numpy(), columns=solver.history.columns)
        self.n_iter_ = int(solver.step)
        self.stop_reason_ = result.stop_reason
        chosen = result.selected
        self.selected_iter_ = chosen.step if chosen is not None and chosen.step is not None else 0
        report = ecl.evaluate(recipe.problem, model, [batch], exact=True)
        self.train_violation_ = max(
            (c.worst_excess for c in report.constraints.values()), default=0.0
        )
        self.fit_seconds_ = time.perf_counter() - began
        return self

    def _encode_groups(
        self, sensitive_features: Any, n: int, formulation: str
    ) -> tuple[np.ndarray, np.ndarray]:
        if sensitive_features is None:
            if formulation == "unconstrained":
                return np.array([0]), np.zeros(n, dtype=np.int64)
            raise SensitiveFeaturesError(
                f"FairClassifier(constraint={self.constraint!r}).fit needs "
                "sensitive_features=<one group label per row>; without them no fairness "
                "constraint can be enforced. Pass them to fit (in a Pipeline: "
                "set_fit_request(sensitive_features=True) with metadata routing enabled), or "
                "use constraint=None for an unconstrained logistic regression."
            )
        if isinstance(sensitive_features, pd.DataFrame):
            frame = sensitive_features
        elif isinstance(sensitive_features, pd.Series):
            frame = sensitive_features.to_frame()
        else:
            values = np.asarray(sensitive_features, dtype=object)
            if values.ndim == 1:
                frame = pd.DataFrame({"group": values})
            elif values.ndim == 2:
                frame = pd.DataFrame(values)
            else:
                raise SensitiveFeaturesError(
                    f"sensitive_features must be 1-D (one label per row) or 2-D (columns of "
                    f"labels), got shape {values.shape}"
                )
        if len(frame) != n:
            raise SensitiveFeaturesError(f"sensitive_features has {len(frame)} rows but X has {n}")
        if frame.isna().to_numpy().any():
            raise SensitiveFeaturesError(
                "sensitive_features contains missing values (NaN/None); give every row a "
                "group label (e.g. an explicit 'unknown' group)"
            )
        if frame.shape[1] == 1:
            labels = frame.iloc[:, 0].to_numpy()
        else:
            labels = np.empty(len(frame), dtype=object)
            labels[:] = list(frame.itertuples(index=False, name=None))
        try:
            groups, codes = np.unique(labels, return_inverse=True)
        except TypeError:  # labels of mixed types: order them by their text
            as_text = np.array([repr(v) for v in labels])
            _, first, codes = np.unique(as_text, return_index=True, return_inverse=True)
            groups = labels[first]
        return groups, codes.reshape(-1).astype(np.int64)

    def _check_groups(
        self, formulation: str, codes: np.ndarray, y: np.ndarray, groups: np.ndarray
    ) -> None:
        if formulation == "unconstrained":
            return
        if len(groups) < 2:
            raise SensitiveFeaturesError(
                f"sensitive_features has a single group ({groups[0]!r}): a fairness "
                "constraint compares at least two groups"
            )
        if formulation == "equalized-odds":
            for label, name in ((1, "positive"), (0, "negative")):
                present = np.bincount(codes[y == label], minlength=len(groups))
                empty = [groups[k] for k in np.flatnonzero(present == 0)]
                if empty:
                    raise SensitiveFeaturesError(
                        f"equalized odds needs {name} examples in every group; group(s) "
                        f"{empty} have none, so their {'true' if label else 'false'} "
                        "positive rate is undefined"
                    )

    def _resolve_rate(self, formulation: str, groups: np.ndarray) -> Any:
        if formulation != "prescribed-rate":
            return None
        rate = self.rate
        if rate is None:
            raise ValueError(
                "constraint='prescribed_rate' needs rate=r (a number in (0, 1), "
                "one per group, or {group: rate})"
            )
        if isinstance(rate, Mapping):
            known = set(groups.tolist())
            absent = [g for g in rate if g not in known]
            if absent:
                raise SensitiveFeaturesError(
                    f"rate prescribes group(s) {absent} that have no training samples (groups "
                    f"in the data: {groups.tolist()}); a rate cannot be enforced on a group "
                    "absent from the training data"
                )
            missing = [g for g in groups.tolist() if g not in rate]
            if missing:
                raise SensitiveFeaturesError(
                    f"rate gives no target for group(s) {missing}; give one for every group "
                    f"({groups.tolist()}) or a single number for all"
                )
            rate = [rate[g] for g in groups.tolist()]
        values = np.asarray(rate, dtype=np.float64).reshape(-1)
        if values.size not in (1, len(groups)):
            raise ValueError(
                f"rate has {values.size} entries but the data has {len(groups)} groups "
                f"({groups.tolist()}); give one number or one per group"
            )
        if not np.all((values > 0) & (values < 1)):
            raise ValueError(f"prescribed rates must lie in (0, 1), got {values.tolist()}")
        return values.tolist() if values.size > 1 else float(values[0])

    # ------------------------------------------------------------------ predict
    def decision_function(self, X: Any) -> np.ndarray:
        """Logit of the positive class (``classes_[1]``), shape (n,)."""
        check_is_fitted(self, "coef_")
        X = _validate_data(self, X, dtype=np.float64, reset=False)
        return X @ self.coef_[0] + self.intercept_[0]

    def predict_proba(self, X: Any) -> np.ndarray:
        """Probabilities of ``classes_`` (n × 2)."""
        scores = self.decision_function(X)
        positive = 1.0 / (1.0 + np.exp(-np.clip(scores, -500, 500)))
        return np.column_stack([1.0 - positive, positive])

    def predict(self, X: Any) -> np.ndarray:
        """``classes_[1]`` where the logit is > 0 (probability > 0.5), else ``classes_[0]``."""
        positive = self.decision_function(X) > 0
        return self.classes_[positive.astype(np.int64)]
