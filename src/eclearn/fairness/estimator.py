"""``FairClassifier``: classification under statistical fairness constraints, as a
scikit-learn estimator, for any torch model and any data size.

::

    from eclearn.fairness import FairClassifier

    clf = FairClassifier(constraint="demographic_parity")        # rate_k − rate_all = 0
    clf.fit(X, y, sensitive_features=A, sample_weight=w)         # A: labels or columns
    clf.predict(X_test); clf.predict_proba(X_test)
    clf.multipliers_, clf.history_, clf.feasible_                # dual solution, run, verdict

    FairClassifier(model="mlp", hidden_layer_sizes=(64,))        # or any nn.Module / factory

The model (``"logistic"`` by default, ``"mlp"``, a ``torch.nn.Module`` or a callable
``n_features → module``) is trained by :class:`eclearn.PrimalDual` on standardised
features: the statistics are :class:`eclearn.Proxy` s (the primal step follows a smoothed
decision, the multipliers the exact rates), the returned iterate is chosen by
``ecl.select.BestFeasible`` and the fit stops with ``ecl.Patience``. Multiclass targets
get demographic parity per class (``rate_{k,c} − rate_c = 0`` for every group k and
class c, a decision being the arg-max class). Small data are trained full batch, large
data in mini-batches with exact running full-data rates (:mod:`eclearn.fairness._engine`).
See ``docs/fairness.md``.

Sensitive features are required whenever ``constraint`` is not None: ``fit(X, y)`` without
them raises (a fairness estimator that silently fit an unconstrained model would be a trap
inside pipelines that forgot to route them). In a :class:`~sklearn.pipeline.Pipeline` with
metadata routing enabled, request them with ``clf.set_fit_request(sensitive_features=True)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_is_fitted
from torch import Tensor, nn

import eclearn as ecl
from eclearn.fairness._base import FairBase, FairnessConvergenceWarning, store_params
from eclearn.fairness._engine import CHUNK_ROWS, Data, chunks, group_scale
from eclearn.fairness.groups import (
    MAX_GROUPS,
    MIN_GROUP_SIZE,
    SensitiveFeaturesError,
    UnseenGroupWarning,
)
from eclearn.fairness.rates import indicator
from eclearn.statistics import Ratio

try:  # scikit-learn ≥ 1.6
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # pragma: no cover - older scikit-learn

    def _validate_data(estimator: Any, *args: Any, **kwargs: Any) -> Any:
        return estimator._validate_data(*args, **kwargs)


__all__ = [
    "CONSTRAINTS",
    "ClassifierStatistics",
    "FairClassifier",
    "FairnessConvergenceWarning",
    "SensitiveFeaturesError",
    "UnseenGroupWarning",
]

CONSTRAINTS: tuple[str, ...] = ("demographic_parity", "equalized_odds", "prescribed_rate")


class ClassifierStatistics:
    """``evaluate(model, batch, exact=False)`` of a fair classifier (binary or multiclass).

    Batches hold ``x``, ``y`` (class codes), ``w`` (sample weights),
    ``group`` and, for training rows in mini-batch mode, ``index`` (the row's position
    among the training rows). The objective is the weighted mean cross-entropy as a
    :class:`~eclearn.Ratio`. Every gap statistic is ``Ratio(Σ w_i ind_i c_i, Σ w_i / W)``
    with contrasts ``c_i`` on the full training totals, so a pass pools to the exact
    training value and one batch estimates it; prescribed rates are
    ``Ratio(Σ_k w ind, Σ_k w)``. With ``running=True`` the exact part of the proxies is the
    running full-data value kept from every row's latest hard decision (see
    :mod:`eclearn.fairness._engine`)."""

    def __init__(
        self,
        formulation: str,
        num_groups: int,
        num_classes: int,
        totals: Mapping[str, Any],
        *,
        surrogate: str = "sigmoid",
        temperature: float = 8.0,
        dual_signal: str = "exact",
        running: bool = False,
        num_rows: int = 0,
    ) -> None:
        self.formulation = formulation
        self.k = num_groups
        self.c = num_classes
        self.binary = num_classes == 2
        self.surrogate = surrogate
        self.temperature = float(temperature)
        self.dual_signal = dual_signal
        self.running = running and formulation != "unconstrained"
        self.total = float(totals["weight"])
        self.group_weight = torch.as_tensor(totals["group_weight"], dtype=torch.float64)
        self.label_group_weight = torch.as_tensor(
            totals["label_group_weight"], dtype=torch.float64
        )  # [2, K]: label 0, 1 (binary only)
        if self.running:
            self.decisions = torch.zeros(num_rows, dtype=torch.int16)
            self.sums: Tensor | None = None

    # -- pieces
    def logits(self, model: nn.Module, x: Tensor) -> Tensor:
        out = model(x)
        if self.binary:
            if out.dim() == 2 and out.shape[1] == 2:
                return out[:, 1] - out[:, 0]
            return out.reshape(-1)
        if out.dim() != 2 or out.shape[1] != self.c:
            raise ValueError(
                f"the model returns shape {tuple(out.shape)}; a {self.c}-class problem needs "
                f"[n, {self.c}] logits"
            )
        return out

    def codes(self, logits: Tensor) -> Tensor:
        return (logits > 0).to(torch.int16) if self.binary else logits.argmax(1).to(torch.int16)

    def hard(self, codes: Tensor, dtype: torch.dtype) -> Tensor:
        if self.binary:
            return codes.to(dtype)
        return F.one_hot(codes.long(), self.c).to(dtype)

    def smooth(self, logits: Tensor) -> Tensor:
        if self.binary:
            return indicator(torch.sigmoid(logits), self.surrogate, self.temperature)
        return torch.softmax(0.25 * self.temperature * logits, dim=1)

    def _cells(self, batch: Mapping[str, Tensor], dtype: torch.dtype) -> Tensor:
        """``[n, K]`` weighted group indicator of a batch (kept for the batch served
        every step in full-batch mode: the same tensors come back)."""
        group, w = batch["group"], batch["w"]
        key = (group, w, dtype)
        cached = getattr(self, "_cell_cache", None)
        if cached is not None and all(a is b for a, b in zip(cached[0], key, strict=True)):
            return cached[1]
        cells = F.one_hot(group.long(), self.k).to(dtype) * w.to(dtype)[:, None]
        if len(group) > 4096:
            self._cell_cache = (key, cells)
        return cells

    def raw(self, ind: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
        """Numerators of the statistics (flat): gaps with full-data contrasts, or the
        weighted positive counts of prescribed rates."""
        dtype = ind.dtype
        w = batch["w"].to(dtype)
        cells = self._cells(batch, dtype)
        f = self.formulation
        if f == "prescribed-rate":
            return cells.T @ ind
        if f == "equalized-odds":
            y = batch["y"].to(dtype)
            parts = []
            for label, mask in ((1, y), (0, 1 - y)):
                cm = cells * mask[:, None]
                wk = self.label_group_weight[label].to(dtype)
                wl = wk.sum()
                parts.append((cm.T @ ind) / wk - ((w * mask) @ ind) / wl)
            return torch.cat(parts)
        gw = self.group_weight.to(dtype)
        if self.binary:
            return (cells.T @ ind) / gw - (w @ ind) / self.total
        return ((cells.T @ ind) / gw[:, None] - (w @ ind)[None, :] / self.total).reshape(-1)

    def finish(self, raw: Tensor, batch: Mapping[str, Tensor] | None) -> dict[str, Any]:
        """The statistics from numerators: Ratios with the batch's denominators, or (with
        ``batch=None``) finished full-data values from full-data numerators."""
        f = self.formulation
        if f == "prescribed-rate":
            if batch is None:
                return {"positive_rate": raw / self.group_weight.to(raw)}
            return {"positive_rate": Ratio(raw, self._cells(batch, raw.dtype).sum(0))}
        if batch is None:
            parts: dict[str, Any] = {"": raw}
        else:
            share = batch["w"].to(raw.dtype).sum() / self.total
            parts = {"": Ratio(raw, share.expand(raw.shape))}
        value = parts[""]
        if f == "dp-equality":
            return {"demographic_parity": value}
        if f == "dp-tolerance":
            neg = Ratio(-value.numerator, value.denominator) if isinstance(value, Ratio) else -value
            return {"demographic_parity_upper": value, "demographic_parity_lower": neg}
        k = self.k
        if isinstance(value, Ratio):
            return {
                "true_positive_rate_gap": Ratio(value.numerator[:k], value.denominator[:k]),
                "false_positive_rate_gap": Ratio(value.numerator[k:], value.denominator[k:]),
            }
        return {"true_positive_rate_gap": value[:k], "false_positive_rate_gap": value[k:]}

    # -- running exact rates (mini-batch mode)
    def start_running(self, model: nn.Module, data: Data, rows: Tensor) -> None:
        """Every training row's decision from ``model`` and the exact numerators."""
        sums = None
        was = model.training
        model.eval()
        with torch.no_grad():
            for batch in chunks(data, rows, indexed=True, size=CHUNK_ROWS):
                b = dict(batch.items())
                codes = self.codes(self.logits(model, b["x"]))
                self.decisions[b["index"]] = codes
                part = self.raw(self.hard(codes, torch.float64), b)
                sums = part if sums is None else sums + part
        model.train(was)
        self.sums = sums

    def _record(self, codes: Tensor, batch: Mapping[str, Tensor]) -> None:
        if self.sums is None:
            return
        index = batch["index"]
        old = self.decisions[index]
        changed = old != codes
        if bool(changed.any()):
            sub = {k: batch[k][changed] for k in ("w", "group", "y")}
            self.sums = self.sums + self.raw(self.hard(codes[changed], torch.float64), sub)
            self.sums = self.sums - self.raw(self.hard(old[changed], torch.float64), sub)
            self.decisions[index] = codes

    # -- evaluate
    def __call__(
        self, model: nn.Module, batch: Mapping[str, Tensor], exact: bool = False
    ) -> dict[str, Any]:
        logits = self.logits(model, batch["x"])
        w = batch["w"].to(logits.dtype)
        if self.binary:
            losses = F.binary_cross_entropy_with_logits(
                logits, batch["y"].to(logits.dtype), reduction="none"
            )
        else:
            losses = F.cross_entropy(logits, batch["y"].long(), reduction="none")
        out: dict[str, Any] = {"objective": Ratio((w * losses).sum(), w.sum())}
        if self.formulation == "unconstrained":
            return out
        codes = self.codes(logits.detach())
        if self.running and "index" in batch:
            self._record(codes, batch)
        hard = self.finish(self.raw(self.hard(codes, torch.float64), batch), batch)
        if exact:
            out.update(hard)
            return out
        surrogate = self.finish(self.raw(self.smooth(logits), batch), batch)
        if self.dual_signal == "surrogate":
            out.update(surrogate)
            return out
        measured = (
            self.finish(self.sums, None)
            if self.running and self.sums is not None and "index" in batch
            else hard
        )
        out.update({k: ecl.Proxy(surrogate[k], measured[k]) for k in surrogate})
        return out


class FairClassifier(FairBase, ClassifierMixin, BaseEstimator):
    """A classifier trained under a statistical fairness constraint.

    Parameters
    ----------
    constraint : {"demographic_parity", "equalized_odds", "prescribed_rate"} or None
        ``"demographic_parity"``: every group's positive rate (multiclass: every class's
        rate) equals the overall one; ``"equalized_odds"`` (binary): every group's true and
        false positive rates equal the overall ones; ``"prescribed_rate"`` (binary): every
        group's positive rate equals ``rate``; None: unconstrained (no groups needed).
    equality, tolerance : bool, float
        ``equality=False``: demographic parity as ``|rate_k − rate_all| ≤ tolerance``.
    rate : float, sequence or mapping
        Targets of ``"prescribed_rate"``: one number, one per group (``groups_`` order), or
        ``{group label: rate}`` covering exactly the training groups.
    model : "logistic", "mlp", torch.nn.Module or callable
        ``"logistic"`` (default; zero-initialised linear layer), ``"mlp"`` (see
        ``hidden_layer_sizes``, ``activation``), a module (deep-copied before training) or a
        factory ``n_features → module``. A module returns logits: ``[n]``/``[n, 1]`` (or
        ``[n, 2]``) for two classes, ``[n, C]`` for C classes.
    hidden_layer_sizes, activation, alpha : as in scikit-learn's ``MLPClassifier``
        Hidden widths and activation (``"relu"``, ``"tanh"``, ``"logistic"``,
        ``"identity"``) of ``model="mlp"``; ``alpha`` the L2 penalty
        (``alpha/(2n)·‖W‖²`` on the weight matrices, any model).
    temperature, surrogate, dual_signal : float, {"sigmoid", "hinge"}, {"exact", "surrogate"}
        The smoothed decision the primal step differentiates (multiclass:
        ``softmax(T/4 · logits)``) and what the multipliers follow.
    learning_rate : float or "auto"
        Adam step. ``"auto"``: 0.2 (logistic, full batch), 0.01 (logistic, mini-batch),
        0.01 / 0.003 (other models, full / mini-batch).
    dual_learning_rate : float
        Adam-ascent step of the multipliers (scaled per group by ``sqrt(share_k / max
        share)`` so small groups do not swing; see ``docs/fairness.md``).
    max_iter : int
        Most steps (full batch) or epochs (mini-batch).
    batch_size : int or "auto"
        ``"auto"``: full batch up to 200 000 training rows, else mini-batches of 2048.
    exact_every : int or "auto"
        Mini-batch mode: steps between selection passes (full passes over the training or
        validation rows). ``"auto"``: ``max(100, steps per epoch // 4)``.
    validation_fraction : float, None or "auto"
        Rows set aside (stratified by group and label) to select the returned iterate on.
        ``"auto"``: none for ``model="logistic"``, 0.2 for other models.
    selection_tolerance, patience, selection
        The returned iterate is the best one whose exact violations are ≤ the tolerance
        (judged on the training steps, or on the validation rows with a tolerance of at
        least ``0.5 / sqrt(smallest validation group)``); the fit stops once it has not
        improved for ``patience`` steps (mini-batch: ``ceil(patience / 10)`` selection
        passes). ``selection="last"`` returns the last iterate.
    init : {"unconstrained", "zeros"}
        Start from the unconstrained fit (L-BFGS on the objective; on at most 50 000 rows)
        or from the initialisation. With ``model="logistic"`` trained full batch the result
        does not depend on ``random_state``.
    min_group_size, max_groups : int
        Groups with fewer training rows raise (naming them); more distinct values in a
        sensitive column (continuous) raise, see :mod:`eclearn.fairness.groups`.
    random_state : int or None
        Seeds the model's initialisation, the validation split and the mini-batch order.

    Attributes
    ----------
    classes_, groups_, n_features_in_, feature_names_in_ (DataFrame input)
    coef_, intercept_ : ``model="logistic"`` only, in the original feature units
    model_ : the trained torch module (eval mode); multipliers_, history_
    n_iter_ : steps (full batch) or epochs; n_steps_; selected_iter_ (step returned)
    feasible_ : whether the returned iterate met the tolerance on the selection data
    worst_constraint_, worst_group_, worst_violation_ : the largest exact training violation
    train_violation_ : that violation; rate_swing_ : max − min of the exact statistics over
    the last 100 steps; selection_data_, batch_size_, validation_size_, fit_seconds_
    """

    def __init__(
        self,
        constraint: str | None = "demographic_parity",
        *,
        equality: bool = True,
        tolerance: float | None = None,
        rate: float | Sequence[float] | Mapping[Any, float] | None = None,
        model: Any = "logistic",
        hidden_layer_sizes: Any = (100,),
        activation: str = "relu",
        alpha: float = 1e-4,
        temperature: float = 8.0,
        surrogate: str = "sigmoid",
        dual_signal: str = "exact",
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

    # ------------------------------------------------------------------ checks
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
        self._check_common()
        self._positive("temperature", self.temperature)
        if self.surrogate not in ("sigmoid", "hinge"):
            raise ValueError(f"surrogate={self.surrogate!r}: choose 'sigmoid' or 'hinge'")
        if self.dual_signal not in ("exact", "surrogate"):
            raise ValueError(f"dual_signal={self.dual_signal!r}: choose 'exact' or 'surrogate'")

    # ------------------------------------------------------------------ fit
    def fit(
        self, X: Any, y: Any, sensitive_features: Any = None, sample_weight: Any = None
    ) -> FairClassifier:
        """Fit under the constraint. ``sensitive_features``: one label per row or several
        columns (each distinct row of labels is a group); required unless
        ``constraint=None``. ``sample_weight``: weights of the objective and of the rates."""
        formulation = self._formulation()
        self._check_params()
        X, y = _validate_data(self, X, y, dtype=np.float64, y_numeric=False)
        check_classification_targets(y)
        y_type = type_of_target(y, input_name="y")
        classes, y_codes = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(f"y has 1 class ({classes.tolist()}); a classifier needs at least two")
        if len(classes) > 2 and formulation in ("equalized-odds", "prescribed-rate"):
            raise ValueError(
                f"constraint={self.constraint!r} is implemented for binary targets; y has "
                f"{len(classes)} classes (type {y_type}): use demographic_parity (per class)"
            )
        self.classes_ = classes
        self._formulation_ = formulation
        n_out = 1 if len(classes) == 2 else len(classes)
        return self._fit(
            X,
            y_codes.astype(np.int64),
            sensitive_features,
            sample_weight,
            n_outputs=n_out,
            strata_target=y_codes.astype(np.int64),
        )

    def _totals(
        self, codes: np.ndarray, target: np.ndarray, w: np.ndarray, k: int
    ) -> dict[str, Any]:
        label_group = np.zeros((2, k))
        if len(self.classes_) == 2:
            for label in (0, 1):
                label_group[label] = np.bincount(
                    codes[target == label], weights=w[target == label], minlength=k
                )
        return {
            "weight": w.sum(),
            "group_weight": np.bincount(codes, weights=w, minlength=k),
            "label_group_weight": label_group,
        }

    def _statistics(self, k: int, totals: dict[str, Any], running: bool) -> ClassifierStatistics:
        self._rate_ = self._resolve_rate(self._formulation_, self.groups_from_encoder())
        return ClassifierStatistics(
            self._formulation_,
            k,
            len(self.classes_),
            totals,
            surrogate=self.surrogate,
            temperature=float(self.temperature),
            dual_signal=self.dual_signal,
            running=running,
            num_rows=self._train_rows,
        )

    def groups_from_encoder(self) -> np.ndarray:
        return self.group_encoder_.groups_

    def _constraints(self, k: int) -> list[Any]:
        f = self._formulation_
        tol = max(float(self.selection_tolerance), 1e-6)
        c = len(self.classes_)
        if f == "unconstrained":
            return []
        if f == "dp-equality":
            return [
                ecl.Equality("demographic_parity", size=k * (1 if c == 2 else c), tolerance=tol)
            ]
        if f == "dp-tolerance":
            size = k * (1 if c == 2 else c)
            return [
                ecl.Inequality(
                    "demographic_parity_upper", size=size, bound=self.tolerance, tolerance=tol
                ),
                ecl.Inequality(
                    "demographic_parity_lower", size=size, bound=self.tolerance, tolerance=tol
                ),
            ]
        if f == "prescribed-rate":
            rates = torch.as_tensor(self._rate_, dtype=torch.float64).reshape(-1)
            return [ecl.Equality("positive_rate", size=k, rhs=rates, tolerance=tol)]
        return [
            ecl.Equality("true_positive_rate_gap", size=k, tolerance=tol),
            ecl.Equality("false_positive_rate_gap", size=k, tolerance=tol),
        ]

    def _dual_scale(self, shares: np.ndarray, constraints: list[Any]) -> Tensor | None:
        if not constraints:
            return None
        per_group = constraints[0].size // len(shares)
        return group_scale(shares, per_group, len(constraints))

    def _component_group(self, name: str, component: int) -> Any:
        c = len(self.classes_)
        if c > 2 and name.startswith("demographic_parity"):
            return (self.groups_[component // c], self.classes_[component % c])
        return self.groups_[component % len(self.groups_)]

    def _check_training_groups(
        self, codes: np.ndarray, target: np.ndarray, groups: np.ndarray, constrained: bool
    ) -> None:
        self._train_rows = len(codes)
        super()._check_training_groups(codes, target, groups, constrained)
        if self._formulation_ == "equalized-odds":
            for label, name in ((1, "positive"), (0, "negative")):
                present = np.bincount(codes[target == label], minlength=len(groups))
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

    def _fit(self, *args: Any, **kwargs: Any) -> FairClassifier:
        out = super()._fit(*args, **kwargs)
        if self._linear():
            layer = self.model_
            assert isinstance(layer, nn.Linear)
            weight = layer.weight.detach().to(torch.float64).numpy() / self.scaler_scale_
            bias = layer.bias.detach().to(torch.float64).numpy() - weight @ self.scaler_mean_
            self.coef_, self.intercept_ = weight, bias
        return out

    # ------------------------------------------------------------------ predict
    def decision_function(self, X: Any) -> np.ndarray:
        """Logit of ``classes_[1]`` (binary, shape (n,)) or the class logits (n × C)."""
        check_is_fitted(self, "model_")
        X = _validate_data(self, X, dtype=np.float64, reset=False)
        out = self._forward(X)
        if len(self.classes_) == 2:
            if out.dim() == 2 and out.shape[1] == 2:
                out = out[:, 1] - out[:, 0]
            return out.reshape(-1).numpy()
        return out.numpy()

    def predict_proba(self, X: Any) -> np.ndarray:
        """Probabilities of ``classes_`` (n × C)."""
        scores = self.decision_function(X)
        if scores.ndim == 1:
            positive = 1.0 / (1.0 + np.exp(-np.clip(scores, -500, 500)))
            return np.column_stack([1.0 - positive, positive])
        return torch.softmax(torch.as_tensor(scores), dim=1).numpy()

    def predict(self, X: Any) -> np.ndarray:
        """Binary: ``classes_[1]`` where the logit is > 0; multiclass: the arg-max class.
        Deterministic (the same decision the exact rates count)."""
        scores = self.decision_function(X)
        codes = (scores > 0).astype(np.int64) if scores.ndim == 1 else scores.argmax(1)
        return self.classes_[codes]

    def group_rates(self, X: Any, sensitive_features: Any) -> pd.DataFrame:
        """Rate of every predicted class per group on ``X`` (one row per group, columns
        ``classes_`` plus ``size`` and ``seen_in_fit``). Groups absent from the training
        data are reported as their own rows with ``seen_in_fit=False`` and an
        :class:`UnseenGroupWarning`; they were not constrained."""
        check_is_fitted(self, "model_")
        pred = self.predict(X)
        codes = self.group_encoder_.transform(sensitive_features, len(pred))
        labels = self.group_encoder_.labels(sensitive_features, len(pred))
        rows = []
        for label in pd.unique(pd.Series(list(labels))):
            mask = np.array([v == label for v in labels.tolist()])
            row = {str(c): float((pred[mask] == c).mean()) for c in self.classes_}
            row.update(group=label, size=int(mask.sum()), seen_in_fit=bool(codes[mask][0] >= 0))
            rows.append(row)
        return pd.DataFrame(rows).set_index("group")
