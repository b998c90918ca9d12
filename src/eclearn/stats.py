"""Correlation statistics with bootstrap confidence intervals (numpy only).

Used to relate per-constraint quantities across runs or classes, e.g. the paper's check that
a class's final multiplier predicts its test error. Degenerate inputs (a constant sample)
give NaN, as correlation is undefined there, rather than an exception.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["bootstrap_ci", "correlation_report", "pearson", "rankdata", "spearman"]

Statistic = Callable[[np.ndarray, np.ndarray], float]


def _pair(x: ArrayLike, y: ArrayLike, where: str) -> tuple[np.ndarray, np.ndarray]:
    xa = np.asarray(x, dtype=np.float64)
    ya = np.asarray(y, dtype=np.float64)
    if xa.ndim != 1 or ya.ndim != 1 or xa.shape != ya.shape:
        raise ValueError(
            f"{where}: x and y must be 1-D of equal length, got shapes {xa.shape} and {ya.shape}"
        )
    if xa.size < 2:
        raise ValueError(f"{where}: needs at least 2 paired values, got {xa.size}")
    if not (np.isfinite(xa).all() and np.isfinite(ya).all()):
        raise ValueError(f"{where}: x and y must be finite (drop or impute NaN/Inf values first)")
    return xa, ya


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if np.ptp(x) == 0.0 or np.ptp(y) == 0.0:
        return math.nan
    dx, dy = x - x.mean(), y - y.mean()
    nx, ny = math.sqrt(float(dx @ dx)), math.sqrt(float(dy @ dy))
    if nx == 0.0 or ny == 0.0:
        return math.nan
    return float(np.clip((dx @ dy) / (nx * ny), -1.0, 1.0))


def rankdata(a: ArrayLike) -> np.ndarray:
    """Ranks 1..n of a 1-D sample; ties get the average of the ranks they span."""
    values = np.asarray(a)
    if values.ndim != 1:
        raise ValueError(f"rankdata: expected a 1-D sample, got shape {values.shape}")
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)
    average = upper - (counts - 1) / 2.0
    return average[inverse.reshape(-1)].astype(np.float64)


def pearson(x: ArrayLike, y: ArrayLike) -> float:
    """Pearson correlation coefficient; NaN when x or y is constant."""
    return _pearson(*_pair(x, y, "pearson"))


def spearman(x: ArrayLike, y: ArrayLike) -> float:
    """Spearman rank correlation (Pearson on average ranks); NaN when x or y is constant."""
    xa, ya = _pair(x, y, "spearman")
    return _pearson(rankdata(xa), rankdata(ya))


def bootstrap_ci(
    x: ArrayLike,
    y: ArrayLike,
    statistic: Statistic,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(x, y)`` under paired resampling.

    Pairs ``(x_i, y_i)`` are drawn with replacement; resamples where x or y is constant (the
    statistic is undefined) or the statistic is not finite are skipped. Returns
    ``(nan, nan)`` when no resample is usable. Deterministic given ``seed``.
    """
    xa, ya = _pair(x, y, "bootstrap_ci")
    if not isinstance(n_resamples, int) or n_resamples < 1:
        raise ValueError(f"bootstrap_ci: n_resamples must be a positive int, got {n_resamples!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"bootstrap_ci: confidence must lie in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, xa.size, size=(n_resamples, xa.size))
    xs_all, ys_all = xa[rows], ya[rows]
    usable = (np.ptp(xs_all, axis=1) > 0.0) & (np.ptp(ys_all, axis=1) > 0.0)
    values = []
    for xs, ys in zip(xs_all[usable], ys_all[usable], strict=True):
        value = float(statistic(xs, ys))
        if math.isfinite(value):
            values.append(value)
    if not values:
        return math.nan, math.nan
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(np.asarray(values), [alpha, 1.0 - alpha])
    return float(low), float(high)


def correlation_report(
    x: ArrayLike,
    y: ArrayLike,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float | int]:
    """Pearson and Spearman correlations with bootstrap intervals, as a flat JSON-ready dict.

    Keys: ``n``, ``pearson_r``, ``pearson_r_low``, ``pearson_r_high``, ``spearman_rho``,
    ``spearman_rho_low``, ``spearman_rho_high``, ``confidence``, ``n_resamples``.
    """
    xa, ya = _pair(x, y, "correlation_report")
    report: dict[str, float | int] = {"n": int(xa.size)}
    for key, fn in (("pearson_r", pearson), ("spearman_rho", spearman)):
        low, high = bootstrap_ci(xa, ya, fn, n_resamples, confidence, seed)
        report |= {key: fn(xa, ya), f"{key}_low": low, f"{key}_high": high}
    report |= {"confidence": float(confidence), "n_resamples": int(n_resamples)}
    return report
