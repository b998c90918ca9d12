"""ProPublica COMPAS two-year recidivism data, preprocessed as in the paper's experiments.

Rows with −30 ≤ ``days_b_screening_arrest`` ≤ 30 are kept (6172 people); the protected
attribute is race with Asian and Native American merged into Other (:data:`GROUPS`); the
label is ``two_year_recid``. The 23 float32 features are: race one-hot (4), sex (1 column,
Male = 1), charge degree (1 column, misdemeanour = 1), ``priors_count`` in the bins of
:data:`PRIORS_EDGES` (6), ``juv_misd_count`` and ``juv_other_count`` in the bins of
:data:`JUVENILE_EDGES` (3 each), and age in 5 quantile bins fitted on the training split
only (so no test information leaks into the features).

The file is never downloaded: it is found through :func:`eclearn.datafiles.resolve_data_file`
(an explicit path or ``$ECLEARN_DATA/compas/compas-scores-two-years.csv``) and verified by
its sha256.
"""

from __future__ import annotations

import functools
import itertools
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from sklearn.compose import ColumnTransformer
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import KBinsDiscretizer, OneHotEncoder
from torch import Tensor

from eclearn.datafiles import resolve_data_file

__all__ = [
    "COMPAS_FILE",
    "COMPAS_SHA256",
    "GROUPS",
    "JUVENILE_EDGES",
    "PRIORS_EDGES",
    "CompasSplit",
    "compas_split",
    "load_compas",
]

COMPAS_FILE = "compas/compas-scores-two-years.csv"
COMPAS_SHA256 = "c451db85908b2f7fef1d83203bedf6b71ecda0d5af468d82ae62178f91d0cc7d"
GROUPS: tuple[str, ...] = ("African-American", "Caucasian", "Hispanic", "Other")
#: Bin edges of ``priors_count``; right-closed, first bin closed: 0, 1, 2, 3, 4, ≥ 5 priors.
PRIORS_EDGES: tuple[float, ...] = (0, 0.99, 1, 2, 3, 4, 1000)
#: Bin edges of the juvenile counts; right-closed, first bin closed: 0, 1, ≥ 2 charges.
JUVENILE_EDGES: tuple[float, ...] = (0, 0.99, 1, 1000)

_MERGED_INTO_OTHER = ("Asian", "Native American")
_COUNT_EDGES = {
    "priors_count": PRIORS_EDGES,
    "juv_misd_count": JUVENILE_EDGES,
    "juv_other_count": JUVENILE_EDGES,
}
_AGE_BINS = 5
_REQUIRED_COLUMNS = (
    "race",
    "sex",
    "age",
    "c_charge_degree",
    "days_b_screening_arrest",
    "two_year_recid",
    *_COUNT_EDGES,
)
_HOW_TO_GET = (
    "Download compas-scores-two-years.csv from ProPublica's compas-analysis GitHub repository "
    "(https://github.com/propublica/compas-analysis; raw file: "
    "https://raw.githubusercontent.com/propublica/compas-analysis/master/"
    "compas-scores-two-years.csv) and save it as <data folder>/compas/compas-scores-two-years.csv."
)


@functools.lru_cache(maxsize=4)
def _read_filtered(path: str, mtime_ns: int, size: int) -> pd.DataFrame:
    """Parse and filter the file once per (path, version); callers must not mutate the result."""
    del mtime_ns, size  # part of the cache key only: a replaced file is read again
    frame = pd.read_csv(path, low_memory=False)
    missing = [column for column in _REQUIRED_COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(f"{path} lacks the columns {missing}; is it the COMPAS two-year file?")
    days = frame["days_b_screening_arrest"]
    frame = frame[(days >= -30) & (days <= 30)].reset_index(drop=True)
    race = frame["race"].replace(dict.fromkeys(_MERGED_INTO_OTHER, "Other"))
    unknown = sorted(set(race) - set(GROUPS))
    if unknown:
        raise ValueError(f"{path} has race values {unknown} outside {GROUPS}")
    frame["group"] = pd.Categorical(race, categories=list(GROUPS))
    return frame


def _filtered(path: str | os.PathLike[str] | None) -> pd.DataFrame:
    found = resolve_data_file(
        COMPAS_FILE, path, what="COMPAS two-year file", how_to_get=_HOW_TO_GET, sha256=COMPAS_SHA256
    ).resolve()
    stat = found.stat()
    return _read_filtered(str(found), stat.st_mtime_ns, stat.st_size)


def load_compas(path: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """The filtered COMPAS rows (6172), all original columns plus ``group``.

    ``group`` is a categorical of the merged race names with categories :data:`GROUPS`.
    ``path`` is the file or a data folder holding ``compas/compas-scores-two-years.csv``;
    without it ``$ECLEARN_DATA`` is used. The parsed file is cached per path; each call
    returns a fresh copy.
    """
    return _filtered(path).copy()


def _interval_labels(edges: tuple[float, ...]) -> list[str]:
    """Names of ``pd.cut(..., right=True, include_lowest=True)`` intervals."""
    return [
        f"{'[' if k == 0 else '('}{lo:g}, {hi:g}]"
        for k, (lo, hi) in enumerate(itertools.pairwise(edges))
    ]


def _raw_features(frame: pd.DataFrame) -> pd.DataFrame:
    """The columns the encoder sees: categorical strings, binned counts, numeric age."""
    raw = pd.DataFrame(
        {
            "race": frame["group"].astype(str),
            "sex": frame["sex"],
            "c_charge_degree": frame["c_charge_degree"],
            "age": frame["age"].astype(np.float64),
        }
    )
    for column, edges in _COUNT_EDGES.items():
        binned = pd.cut(
            frame[column], bins=list(edges), labels=_interval_labels(edges), include_lowest=True
        )
        if binned.isna().any():
            bad = frame.loc[binned.isna(), column].unique()[:5].tolist()
            raise ValueError(f"{column} values {bad} fall outside the bin edges {edges}")
        raw[column] = binned.astype(str)
    return raw


def _encoder() -> ColumnTransformer:
    kbins_options = {"n_bins": _AGE_BINS, "encode": "onehot-dense", "strategy": "quantile"}
    if "quantile_method" in KBinsDiscretizer().get_params():
        # sklearn ≥ 1.7 offers several quantile definitions; "linear" (np.percentile) is the
        # only one older versions have, so the bins do not depend on the installed version.
        kbins_options["quantile_method"] = "linear"
    onehot = {"sparse_output": False, "dtype": np.float32}
    return ColumnTransformer(
        [
            ("race", OneHotEncoder(categories=[list(GROUPS)], **onehot), ["race"]),
            (
                "binary",
                OneHotEncoder(categories=[["Female", "Male"], ["F", "M"]], drop="first", **onehot),
                ["sex", "c_charge_degree"],
            ),
            (
                "counts",
                OneHotEncoder(
                    categories=[_interval_labels(e) for e in _COUNT_EDGES.values()], **onehot
                ),
                list(_COUNT_EDGES),
            ),
            ("age", KBinsDiscretizer(**kbins_options), ["age"]),
        ],
        sparse_threshold=0.0,
        verbose_feature_names_out=False,
    )


def _age_names(edges: np.ndarray) -> list[str]:
    """KBinsDiscretizer bins are [e_k, e_k+1); values beyond the fitted range go to the end bins."""
    inner = edges[1:-1]
    if len(inner) == 0:
        return ["age"]
    names = [f"age_<{inner[0]:g}"]
    names += [f"age_[{lo:g}, {hi:g})" for lo, hi in itertools.pairwise(inner)]
    return [*names, f"age_>={inner[-1]:g}"]


@dataclass(frozen=True, eq=False)
class CompasSplit:
    """One train/test split: float32 features, int64 labels, int64 group codes into ``groups``.

    ``train_rows``/``test_rows`` are the positions of the rows in :func:`load_compas`'s frame;
    ``age_bin_edges`` are the age quantile edges fitted on the training rows.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    g_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    g_test: np.ndarray
    feature_names: list[str]
    groups: tuple[str, ...]
    seed: int
    train_rows: np.ndarray
    test_rows: np.ndarray
    age_bin_edges: np.ndarray

    def to_tensors(
        self, device: torch.device | str | None = None
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Train and test batches ``{"x", "y", "group", "index"}`` on ``device``.

        ``x`` float32 [n, 23], ``y`` float32 [n] (0/1, as losses expect), ``group`` int64 [n],
        ``index`` int64 ``arange(n)`` (sample ids for pointwise constraints).
        """

        def batch(x: np.ndarray, y: np.ndarray, g: np.ndarray) -> dict[str, Tensor]:
            return {
                "x": torch.as_tensor(x, dtype=torch.float32, device=device),
                "y": torch.as_tensor(y, dtype=torch.float32, device=device),
                "group": torch.as_tensor(g, dtype=torch.int64, device=device),
                "index": torch.arange(len(y), dtype=torch.int64, device=device),
            }

        return (
            batch(self.x_train, self.y_train, self.g_train),
            batch(self.x_test, self.y_test, self.g_test),
        )


def compas_split(
    seed: int, path: str | os.PathLike[str] | None = None, test_size: float = 0.3
) -> CompasSplit:
    """The paper's split number ``seed`` (0–9 in the experiments).

    Rows are split by ``train_test_split(test_size=test_size, random_state=seed)``; the
    encoder (age quantiles included) is fitted on the training rows only.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"compas_split(seed=...) takes a non-negative int; got {seed!r}")
    if isinstance(test_size, bool) or not isinstance(test_size, (float, int)):
        raise ValueError(f"compas_split(test_size=...) takes a float in (0, 1); got {test_size!r}")
    if not 0.0 < float(test_size) < 1.0:
        raise ValueError(f"compas_split(test_size=...) must lie in (0, 1); got {test_size!r}")
    frame = _filtered(path)
    train_rows, test_rows = train_test_split(
        np.arange(len(frame)), test_size=float(test_size), random_state=int(seed)
    )
    raw = _raw_features(frame)
    encoder = _encoder()
    x_train = encoder.fit_transform(raw.iloc[train_rows]).astype(np.float32)
    x_test = encoder.transform(raw.iloc[test_rows]).astype(np.float32)
    age_edges = np.asarray(encoder.named_transformers_["age"].bin_edges_[0], dtype=np.float64)
    names = [str(name) for name in encoder.get_feature_names_out()]
    names = names[: -(len(age_edges) - 1)] + _age_names(age_edges)
    labels = frame["two_year_recid"].to_numpy(dtype=np.int64)
    codes = frame["group"].cat.codes.to_numpy().astype(np.int64)
    return CompasSplit(
        x_train=x_train,
        y_train=labels[train_rows],
        g_train=codes[train_rows],
        x_test=x_test,
        y_test=labels[test_rows],
        g_test=codes[test_rows],
        feature_names=names,
        groups=GROUPS,
        seed=int(seed),
        train_rows=np.asarray(train_rows, dtype=np.int64),
        test_rows=np.asarray(test_rows, dtype=np.int64),
        age_bin_edges=age_edges,
    )
