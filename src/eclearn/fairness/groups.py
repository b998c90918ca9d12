"""Sensitive features → group codes, with the checks the fair estimators share.

``sensitive_features`` is one label per row (array, list, Series) or several columns (2-D
array, DataFrame): each distinct row of labels is one (intersectional) group. Groups are
sorted (``groups_``); a group is a label or a tuple of labels.

Documented limits (:class:`GroupEncoder`):

- **minimum size** ``min_group_size`` (default :data:`MIN_GROUP_SIZE` = 10 members, counted
  by rows, in the training data the constraint is enforced on): a rate of a group of 3
  people moves in steps of 0.33, so no tolerance is meaningful; the error names every group
  below the minimum and how many members it has (merge it, drop it, or lower the minimum).
- **maximum number of groups** ``max_groups`` (default :data:`MAX_GROUPS` = 100): a
  sensitive column with more distinct values is almost always continuous (age, income) or
  an identifier; the error names the column and says to bin it (``pandas.cut``).
- **groups at predict time**: the estimators' ``predict`` does not take sensitive features
  (the model sees only ``X``), so an unseen group changes nothing there; the helpers that
  take them after fit (``group_rates``) report groups unseen in fit separately
  (``seen_in_fit = False``) with a warning, never mapping them onto a training group.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "MAX_GROUPS",
    "MIN_GROUP_SIZE",
    "GroupEncoder",
    "SensitiveFeaturesError",
    "UnseenGroupWarning",
    "sensitive_frame",
]

MIN_GROUP_SIZE = 10
MAX_GROUPS = 100


class SensitiveFeaturesError(ValueError):
    """``sensitive_features`` are missing or unusable for the requested constraint."""


class UnseenGroupWarning(UserWarning):
    """Sensitive features given after fit hold groups the training data did not have."""


def sensitive_frame(sensitive_features: Any, n: int) -> pd.DataFrame:
    """``sensitive_features`` as a DataFrame of ``n`` rows (one column per feature)."""
    if isinstance(sensitive_features, pd.DataFrame):
        frame = sensitive_features.reset_index(drop=True)
    elif isinstance(sensitive_features, pd.Series):
        frame = sensitive_features.reset_index(drop=True).to_frame()
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
    return frame


def _labels(frame: pd.DataFrame) -> np.ndarray:
    if frame.shape[1] == 1:
        return frame.iloc[:, 0].to_numpy()
    labels = np.empty(len(frame), dtype=object)
    labels[:] = list(frame.itertuples(index=False, name=None))
    return labels


class GroupEncoder:
    """Maps sensitive features to group codes ``0 … K−1`` (sorted labels) and back.

    ``fit(sensitive_features, n)`` learns the groups and checks the limits of the module
    docstring; ``transform`` gives codes for new rows, ``-1`` for a group not seen in fit.
    """

    def __init__(self, min_group_size: int = MIN_GROUP_SIZE, max_groups: int = MAX_GROUPS):
        self.min_group_size = int(min_group_size)
        self.max_groups = int(max_groups)

    def fit_transform(self, sensitive_features: Any, n: int, *, check: bool = True) -> np.ndarray:
        """Learn the groups of ``sensitive_features`` (``n`` rows); return their codes."""
        frame = sensitive_frame(sensitive_features, n)
        self.columns_ = [str(c) for c in frame.columns]
        if check:
            for column in frame.columns:
                distinct = frame[column].nunique()
                if distinct > self.max_groups:
                    numbers = pd.to_numeric(frame[column], errors="coerce")
                    continuous = bool(numbers.notna().all() and (numbers % 1 != 0).any())
                    kind = "continuous" if continuous else "like an identifier"
                    raise SensitiveFeaturesError(
                        f"sensitive feature {column!r} has {distinct} distinct values (> "
                        f"max_groups={self.max_groups}); it looks {kind}. Bin it into a few "
                        "groups (e.g. pandas.cut(values, bins=4)) or raise max_groups"
                    )
        labels = _labels(frame)
        try:
            groups, codes = np.unique(labels, return_inverse=True)
        except TypeError:  # labels of mixed types: order them by their text
            as_text = np.array([repr(v) for v in labels])
            _, first, codes = np.unique(as_text, return_index=True, return_inverse=True)
            groups = labels[first]
        codes = codes.reshape(-1).astype(np.int64)
        self.groups_ = groups
        if check and len(groups) > self.max_groups:
            raise SensitiveFeaturesError(
                f"the sensitive features form {len(groups)} (intersectional) groups (> "
                f"max_groups={self.max_groups}); bin or merge columns, or raise max_groups"
            )
        self.counts_ = np.bincount(codes, minlength=len(groups))
        if check and len(groups) >= 2:
            small = np.flatnonzero(self.counts_ < self.min_group_size)
            if small.size:
                named = ", ".join(f"{groups[k]!r} ({self.counts_[k]} rows)" for k in small[:10])
                more = f" and {small.size - 10} more" if small.size > 10 else ""
                raise SensitiveFeaturesError(
                    f"group(s) {named}{more} have fewer than min_group_size="
                    f"{self.min_group_size} members; a rate over so few people moves in "
                    "steps too coarse for any tolerance. Merge them into a larger group, "
                    "drop those rows, or lower min_group_size"
                )
        return codes

    def transform(self, sensitive_features: Any, n: int) -> np.ndarray:
        """Codes of new rows; ``-1`` for groups unseen in fit (with an
        :class:`UnseenGroupWarning` naming them)."""
        frame = sensitive_frame(sensitive_features, n)
        labels = _labels(frame)
        index = {g: k for k, g in enumerate(self.groups_.tolist())}
        codes = np.array([index.get(v, -1) for v in labels.tolist()], dtype=np.int64)
        if (codes < 0).any():
            unseen = sorted({repr(v) for v, c in zip(labels.tolist(), codes, strict=True) if c < 0})
            warnings.warn(
                f"group(s) {', '.join(unseen[:10])} were not in the training data: the "
                "constraint was not enforced on them; they are reported separately "
                "(seen_in_fit=False), never mapped onto a training group",
                UnseenGroupWarning,
                stacklevel=3,
            )
        return codes

    def labels(self, sensitive_features: Any, n: int) -> np.ndarray:
        """The group label of every row (tuples for several columns)."""
        return _labels(sensitive_frame(sensitive_features, n))
