"""The fit loop shared by :class:`~eclearn.fairness.FairClassifier` and
:class:`~eclearn.fairness.FairRegressor` (see :mod:`eclearn.fairness._engine` for the data
path, mini-batches and running exact rates)."""

from __future__ import annotations

import math
import numbers
import time
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.exceptions import ConvergenceWarning
from torch import Tensor, nn

import eclearn as ecl
from eclearn.fairness._engine import (
    CHUNK_ROWS,
    DEFAULT_BATCH_SIZE,
    FULL_BATCH_MAX_ROWS,
    Data,
    GroupScaledAdam,
    MiniBatches,
    build_model,
    chunks,
    rate_swing,
    seed_of,
    stratified_split,
)
from eclearn.fairness.groups import GroupEncoder, SensitiveFeaturesError

__all__ = ["FairBase", "FairnessConvergenceWarning", "store_params"]

WARM_START_MAX_ROWS = 50_000
FLOAT64_MAX_ROWS = FULL_BATCH_MAX_ROWS  # full batch: float64; mini-batches: float32


def store_params(estimator: Any, params: Mapping[str, Any]) -> None:
    """Set every ``__init__`` argument in ``params`` (the ``locals()`` of an ``__init__``)
    as the attribute of its name, unchanged — scikit-learn's convention (validation
    happens in ``fit``). Shared by :class:`~eclearn.fairness.FairClassifier` and
    :class:`~eclearn.fairness.FairRegressor`."""
    for name, value in params.items():
        if name != "self" and not name.startswith("__"):
            setattr(estimator, name, value)


class FairnessConvergenceWarning(ConvergenceWarning):
    """No iterate of a fair fit met the selection tolerance: the returned model violates
    the constraint (the message names the worst group, its violation and what to try;
    the estimator's ``feasible_`` is False)."""


class _RunningStart(ecl.Callback):
    """After the warm start (callbacks run in order), compute every training row's
    decision once, so the running exact rates start exact."""

    def __init__(self, statistics: Any, data: Data, rows: Tensor) -> None:
        self.statistics, self.data, self.rows = statistics, data, rows

    def on_fit_start(self, solver: Any) -> None:
        self.statistics.start_running(solver.model, self.data, self.rows)


class FairBase:
    """Parameter checks, data preparation and the primal-dual fit (mixin; subclasses set
    ``_kind`` and the hooks ``_targets``, ``_statistics``, ``_constraints``)."""

    _kind = "classifier"

    # the parameters the shared fit reads (set by the subclasses' ``__init__``)
    constraint: str | None
    model: Any
    hidden_layer_sizes: Any
    activation: str
    alpha: float
    learning_rate: float | str
    dual_learning_rate: float
    max_iter: int
    batch_size: int | str | None
    exact_every: int | str
    validation_fraction: float | str | None
    selection_tolerance: float
    patience: int | None
    selection: str
    init: str
    min_group_size: int
    max_groups: int
    random_state: int | None
    groups_: np.ndarray

    # ------------------------------------------------------------ hooks
    def _formulation(self) -> str:
        raise NotImplementedError

    def _totals(
        self, codes: np.ndarray, target: np.ndarray, w: np.ndarray, k: int
    ) -> dict[str, Any]:
        raise NotImplementedError

    def _statistics(self, k: int, totals: dict[str, Any], running: bool) -> Any:
        raise NotImplementedError

    def _constraints(self, k: int) -> list[Any]:
        raise NotImplementedError

    # ------------------------------------------------------------ parameters
    def _positive(self, name: str, value: Any, *, allow_zero: bool = False) -> None:
        ok = (
            isinstance(value, numbers.Real)
            and not isinstance(value, bool)
            and math.isfinite(value)
            and (float(value) >= 0 if allow_zero else float(value) > 0)
        )
        if not ok:
            raise ValueError(
                f"{name} must be a {'non-negative' if allow_zero else 'positive'} number, "
                f"got {value!r}"
            )

    def _check_common(self) -> None:
        if self.learning_rate != "auto":
            self._positive("learning_rate", self.learning_rate)
        self._positive("dual_learning_rate", self.dual_learning_rate, allow_zero=True)
        self._positive("selection_tolerance", self.selection_tolerance, allow_zero=True)
        self._positive("alpha", self.alpha, allow_zero=True)
        if not isinstance(self.max_iter, numbers.Integral) or self.max_iter < 0:
            raise ValueError(f"max_iter must be an int ≥ 0, got {self.max_iter!r}")
        if self.patience is not None and (
            not isinstance(self.patience, numbers.Integral) or self.patience < 1
        ):
            raise ValueError(f"patience must be an int ≥ 1 or None, got {self.patience!r}")
        if self.batch_size not in ("auto", None) and (
            not isinstance(self.batch_size, numbers.Integral) or self.batch_size < 1
        ):
            raise ValueError(f"batch_size must be 'auto' or an int ≥ 1, got {self.batch_size!r}")
        vf = self.validation_fraction
        if vf != "auto" and vf is not None and not (isinstance(vf, numbers.Real) and 0 <= vf < 1):
            raise ValueError(f"validation_fraction must be 'auto', None or in [0, 1), got {vf!r}")
        if self.selection not in ("best-feasible", "last"):
            raise ValueError(f"selection={self.selection!r}: choose 'best-feasible' or 'last'")
        if self.init not in ("unconstrained", "zeros"):
            raise ValueError(f"init={self.init!r}: choose 'unconstrained' or 'zeros'")

    def _linear(self) -> bool:
        return isinstance(self.model, str) and self.model in ("logistic", "linear")

    def _validation_fraction(self) -> float:
        vf = self.validation_fraction
        if vf == "auto":
            return 0.0 if self._linear() else 0.2
        return float(vf or 0.0)

    # ------------------------------------------------------------ fit
    def _fit(
        self,
        X: np.ndarray,
        target: np.ndarray,
        sensitive_features: Any,
        sample_weight: Any,
        *,
        n_outputs: int,
        strata_target: np.ndarray | None,
    ) -> Any:
        began = time.perf_counter()
        n = len(X)
        constrained = self._formulation() != "unconstrained"
        encoder = GroupEncoder(self.min_group_size, self.max_groups)
        if sensitive_features is None:
            if constrained:
                raise SensitiveFeaturesError(self._missing_groups_message())
            codes = np.zeros(n, dtype=np.int64)
            encoder.groups_ = np.array([0])
        else:
            codes = encoder.fit_transform(sensitive_features, n, check=constrained)
            if constrained and len(encoder.groups_) < 2:
                raise SensitiveFeaturesError(
                    f"sensitive_features has a single group ({encoder.groups_[0]!r}): a "
                    "fairness constraint compares at least two groups"
                )
        self.group_encoder_ = encoder
        groups = encoder.groups_
        weight = self._weights(sample_weight, n)
        seed = seed_of(self.random_state)

        fraction = self._validation_fraction()
        strata = codes * (int(strata_target.max()) + 1 if strata_target is not None else 1)
        if strata_target is not None:
            strata = strata + strata_target
        valid = stratified_split(strata, fraction, seed) if fraction > 0 else np.zeros(n, bool)
        train_rows = np.flatnonzero(~valid)
        self._check_training_groups(codes[train_rows], target[train_rows], groups, constrained)

        full = self.batch_size in ("auto", None) and len(train_rows) <= FULL_BATCH_MAX_ROWS
        batch_size = (
            len(train_rows)
            if full
            else (DEFAULT_BATCH_SIZE if self.batch_size in ("auto", None) else int(self.batch_size))
        )
        full = full or batch_size >= len(train_rows)
        dtype = torch.float64 if full and len(train_rows) <= FLOAT64_MAX_ROWS else torch.float32
        mean = _chunked_mean(X, train_rows, weight)
        scale = _chunked_std(X, train_rows, mean, weight)
        scale = np.where(scale > 0, scale, 1.0)
        target_t = torch.as_tensor(target)
        data = Data(
            X,
            mean,
            scale,
            target_t,
            torch.as_tensor(weight, dtype=torch.float64),
            torch.as_tensor(codes, dtype=torch.int64),
            dtype,
        )
        rows_t = torch.as_tensor(train_rows, dtype=torch.int64)
        w_train = weight[train_rows]
        totals = self._totals(codes[train_rows], target[train_rows], w_train, len(groups))
        statistics = self._statistics(len(groups), totals, running=not full)
        constraints = self._constraints(len(groups))
        problem = ecl.Problem(statistics, constraints)

        model = build_model(
            self.model,
            X.shape[1],
            n_outputs,
            hidden_layer_sizes=self.hidden_layer_sizes,
            activation=self.activation,
            seed=seed,
            dtype=dtype,
        )
        lr = self._learning_rate(full)
        decay = float(self.alpha) / max(float(weight[train_rows].sum()), 1e-12)
        weights = [p for p in model.parameters() if p.dim() > 1]
        others = [p for p in model.parameters() if p.dim() <= 1]
        optimizer = ecl.eager_optimizer(torch.optim.Adam)(
            [{"params": weights, "weight_decay": decay}, {"params": others, "weight_decay": 0.0}],
            lr=lr,
        )
        shares = totals["group_weight"] / totals["group_weight"].sum()
        scale_t = self._dual_scale(shares, constraints)
        dual = (
            GroupScaledAdam(float(self.dual_learning_rate), scale_t)
            if scale_t is not None
            else ecl.dual.Adam(lr=float(self.dual_learning_rate))
        )
        solver = ecl.PrimalDual(problem, model, optimizer, dual, dtype=torch.float64)

        if full:
            batch = data.batch(rows_t)
            batches: Any = [batch]
            warm_batch = batch
        else:
            batches = MiniBatches(data, rows_t, batch_size, seed)
            warm_rows = rows_t
            if len(rows_t) > WARM_START_MAX_ROWS:
                pick = torch.randperm(len(rows_t), generator=torch.Generator().manual_seed(seed))[
                    :WARM_START_MAX_ROWS
                ]
                warm_rows = rows_t[pick.sort().values]
            warm_batch = data.batch(warm_rows)
        callbacks: list[Any] = [
            ecl.ObjectiveWarmStart(warm_batch, max_iter=100 if self.init == "unconstrained" else 0)
        ]
        if not full and constrained:
            callbacks.append(_RunningStart(statistics, data, rows_t))

        steps_per_epoch = 1 if full else len(batches)
        every = 1 if full else self._exact_every(steps_per_epoch)
        valid_rows = torch.as_tensor(np.flatnonzero(valid), dtype=torch.int64)
        selector: Any = None
        stopping: list[Any] = []
        selection_data = "training steps"
        tolerance = None
        if self.selection == "best-feasible":
            if len(valid_rows):
                on = (
                    [data.batch(valid_rows)]
                    if full
                    else chunks(data, valid_rows, indexed=False, size=CHUNK_ROWS)
                )
                tolerance = self._validation_tolerance(codes[valid_rows.numpy()], len(groups))
                selector = ecl.select.BestFeasible(
                    on=on, every=every, tolerance=tolerance, label="validation"
                )
                selection_data = "validation"
            elif full:
                selector = ecl.select.BestFeasible(on="steps", min_delta=1e-4)
            else:
                selector = ecl.select.BestFeasible(
                    on=chunks(data, rows_t, indexed=True), every=every, label="training data"
                )
                selection_data = "training data"
            if self.patience:
                patience = self.patience if full else math.ceil(self.patience / 10) * every
                stopping.append(ecl.Patience(selector, patience))
        budget: dict[str, Any] = (
            {"max_steps": int(self.max_iter)} if full else {"epochs": int(self.max_iter)}
        )
        result = solver.fit(
            batches, warn=False, callbacks=callbacks, select=selector, stopping=stopping, **budget
        )
        chosen = result.selected
        if chosen is not None:
            chosen.load_into(model)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)

        self.model_ = model
        self.scaler_mean_, self.scaler_scale_ = mean, scale
        self.groups_ = groups
        self.constraint_names_ = [c.name for c in constraints]
        self.multipliers_ = {
            k: v.detach().cpu().numpy().copy() for k, v in result.multipliers.items()
        }
        self.history_ = pd.DataFrame(solver.history.to_numpy(), columns=solver.history.columns)
        self.n_iter_ = int(solver.step) if full else int(solver.epoch)
        self.n_steps_ = int(solver.step)
        self.batch_size_ = batch_size
        self.validation_size_ = len(valid_rows)
        self.selection_data_ = selection_data
        self.stop_reason_ = result.stop_reason
        self.selected_iter_ = chosen.step if chosen is not None and chosen.step is not None else 0
        value_columns = [
            c for c in self.history_.columns if c.startswith("value/") and c != "value/objective"
        ]
        self.rate_swing_ = rate_swing(self.history_, value_columns)
        train_batches = [data.batch(rows_t)] if full else chunks(data, rows_t, indexed=True)
        report = ecl.evaluate(problem, model, train_batches, exact=True)
        self.train_report_ = report
        self.train_violation_ = max(
            (c.worst_excess for c in report.constraints.values()), default=0.0
        )
        self._set_feasibility(chosen, report, selection_data, tolerance)
        self.fit_seconds_ = time.perf_counter() - began
        del data
        return self

    # ------------------------------------------------------------ pieces
    def _missing_groups_message(self) -> str:
        name = type(self).__name__
        return (
            f"{name}(constraint={self.constraint!r}).fit needs sensitive_features=<one group "
            "label per row>; without them no fairness constraint can be enforced. Pass them "
            "to fit (in a Pipeline: set_fit_request(sensitive_features=True) with metadata "
            "routing enabled), or use constraint=None for an unconstrained model."
        )

    def _weights(self, sample_weight: Any, n: int) -> np.ndarray:
        if sample_weight is None:
            return np.ones(n)
        w = np.asarray(sample_weight, dtype=np.float64).reshape(-1)
        if w.shape != (n,):
            raise ValueError(f"sample_weight has shape {w.shape}, expected ({n},)")
        if not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
            raise ValueError("sample_weight must be finite, ≥ 0 and not all zero")
        return w

    def _learning_rate(self, full: bool) -> float:
        if self.learning_rate != "auto":
            return float(self.learning_rate)
        if self._linear():
            return 0.2 if full else 0.01
        return 0.01 if full else 0.003

    def _exact_every(self, steps_per_epoch: int) -> int:
        if self.exact_every != "auto":
            return int(self.exact_every)
        return max(100, steps_per_epoch // 4)

    def _validation_tolerance(self, codes: np.ndarray, k: int) -> float:
        """The tolerance held-out selection judges rates with: the selection tolerance, or
        the standard deviation of a rate near 0.5 in the smallest validation group
        (``0.5 / sqrt(n_k)``) if larger — a finite validation set cannot show less."""
        counts = np.bincount(codes, minlength=k)
        counts = counts[counts > 0]
        floor = 0.5 / math.sqrt(counts.min()) if counts.size else 0.0
        return max(float(self.selection_tolerance), floor)

    def _dual_scale(self, shares: np.ndarray, constraints: list[Any]) -> Tensor | None:
        return None

    def _set_feasibility(
        self, chosen: Any, report: Any, data: str, tolerance: float | None
    ) -> None:
        worst_name, worst_component, worst_value = None, None, 0.0
        for name, r in report.constraints.items():
            ex = r.excess.reshape(-1)
            if ex.numel() and float(ex.max()) >= worst_value:
                worst_name, worst_component, worst_value = name, int(ex.argmax()), float(ex.max())
        self.worst_constraint_ = worst_name
        self.worst_group_ = (
            None
            if worst_component is None
            else self._component_group(str(worst_name), worst_component)
        )
        self.worst_violation_ = worst_value
        if not report.constraints:
            self.feasible_ = True
            return
        if chosen is not None and chosen.feasible is not None:
            self.feasible_ = bool(chosen.feasible)
        else:
            self.feasible_ = bool(worst_value <= float(self.selection_tolerance) + 1e-12)
        if not self.feasible_:
            tol = float(self.selection_tolerance) if tolerance is None else tolerance
            warnings.warn(
                f"{type(self).__name__}: no iterate met the selection tolerance {tol:.3g} on "
                f"the {data}; the returned model is the least violating one. Worst on the "
                f"training data: group {self.worst_group_!r} ({worst_name}), violation "
                f"{worst_value:.3g}. Try: more iterations (max_iter), a smaller "
                "learning_rate, a larger selection_tolerance, or a looser constraint "
                "(e.g. equality=False with tolerance=ε); check the group is not too small for the "
                "tolerance.",
                FairnessConvergenceWarning,
                stacklevel=5,
            )

    def _component_group(self, name: str, component: int) -> Any:
        k = len(self.groups_)
        return self.groups_[component % k] if component >= 0 else None

    def _check_training_groups(
        self, codes: np.ndarray, target: np.ndarray, groups: np.ndarray, constrained: bool
    ) -> None:
        if not constrained:
            return
        counts = np.bincount(codes, minlength=len(groups))
        small = np.flatnonzero(counts < self.min_group_size)
        if small.size:
            named = ", ".join(f"{groups[k]!r} ({counts[k]} rows)" for k in small[:10])
            raise SensitiveFeaturesError(
                f"after setting the validation split aside, group(s) {named} have fewer than "
                f"min_group_size={self.min_group_size} training rows; merge them, lower "
                "min_group_size or validation_fraction"
            )

    # ------------------------------------------------------------ predict
    def _forward(self, X: np.ndarray) -> Tensor:
        model = self.model_
        dtype = next(iter(model.parameters())).dtype
        mean = torch.as_tensor(self.scaler_mean_, dtype=dtype)
        scale = torch.as_tensor(self.scaler_scale_, dtype=dtype)
        xt = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float64))
        outs = []
        with torch.no_grad():
            for start in range(0, max(len(xt), 1), CHUNK_ROWS):
                part = (xt[start : start + CHUNK_ROWS].to(dtype) - mean) / scale
                outs.append(model(part).to(torch.float64))
        out = torch.cat(outs) if outs else torch.zeros(0)
        return out


def _chunked_mean(X: np.ndarray, rows: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted column means over ``rows``, a chunk at a time (no copy of the data)."""
    total = np.zeros(X.shape[1])
    for start in range(0, len(rows), CHUNK_ROWS):
        part = rows[start : start + CHUNK_ROWS]
        total += w[part] @ X[part]
    return total / max(float(w[rows].sum()), 1e-300)


def _chunked_std(X: np.ndarray, rows: np.ndarray, mean: np.ndarray, w: np.ndarray) -> np.ndarray:
    total = np.zeros(X.shape[1])
    for start in range(0, len(rows), CHUNK_ROWS):
        part = rows[start : start + CHUNK_ROWS]
        total += w[part] @ ((X[part] - mean) ** 2)
    return np.sqrt(total / max(float(w[rows].sum()), 1e-300))


def model_dtype(model: nn.Module) -> torch.dtype:
    return next(iter(model.parameters())).dtype
