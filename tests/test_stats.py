"""Correlations and bootstrap intervals against scipy (a test-only dependency here)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eclearn.stats import bootstrap_ci, correlation_report, pearson, rankdata, spearman

scipy_stats = pytest.importorskip("scipy.stats")

samples = st.integers(3, 30).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(-5, 5), min_size=n, max_size=n),
        st.lists(st.floats(-1e3, 1e3).map(lambda v: round(v, 3)), min_size=n, max_size=n),
    )
)


@settings(max_examples=60, deadline=None)
@given(samples)
def test_matches_scipy_including_ties(pair):
    x, y = np.array(pair[0], float), np.array(pair[1], float)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        assert math.isnan(pearson(x, y)) and math.isnan(spearman(x, y))
        return
    assert pearson(x, y) == pytest.approx(scipy_stats.pearsonr(x, y)[0], abs=1e-9)
    assert spearman(x, y) == pytest.approx(scipy_stats.spearmanr(x, y)[0], abs=1e-9)


def test_rankdata_averages_ties():
    ranks = rankdata([10, 20, 10, 30, 20, 20])
    np.testing.assert_array_equal(ranks, scipy_stats.rankdata([10, 20, 10, 30, 20, 20]))
    assert ranks.tolist() == [1.5, 4.0, 1.5, 6.0, 4.0, 4.0]


def test_bootstrap_interval_covers_estimate_and_is_reproducible():
    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    y = 0.6 * x + rng.normal(size=40)
    for statistic in (pearson, spearman):
        low, high = bootstrap_ci(x, y, statistic, n_resamples=500)
        assert -1 <= low < statistic(x, y) < high <= 1
        assert bootstrap_ci(x, y, statistic, n_resamples=500, seed=0) == (low, high)
        narrow = bootstrap_ci(x, y, statistic, n_resamples=500, confidence=0.5)
        assert low <= narrow[0] < narrow[1] <= high
    assert bootstrap_ci(x, y, pearson, 100, seed=1) != bootstrap_ci(x, y, pearson, 100, seed=0)


def test_bootstrap_skips_constant_resamples():
    x, y = [0.0, 0.0, 1.0], [1.0, 2.0, 4.0]
    low, high = bootstrap_ci(x, y, pearson, n_resamples=200)
    assert math.isfinite(low) and math.isfinite(high) and low <= high
    assert all(math.isnan(v) for v in bootstrap_ci([1, 1, 1], [1, 2, 3], pearson, 50))


def test_correlation_report():
    x = np.arange(10.0)
    y = x**2 + np.sin(x)
    report = correlation_report(x, y, n_resamples=300)
    assert report["n"] == 10 and report["n_resamples"] == 300 and report["confidence"] == 0.95
    assert report["pearson_r"] == pytest.approx(scipy_stats.pearsonr(x, y)[0])
    assert report["spearman_rho"] == pytest.approx(1.0)
    assert report["pearson_r_low"] <= report["pearson_r"] <= report["pearson_r_high"]
    assert report["spearman_rho_low"] <= report["spearman_rho"] <= report["spearman_rho_high"]


def test_inputs_are_validated():
    with pytest.raises(ValueError, match="equal length"):
        pearson([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="finite"):
        spearman([1, 2, np.nan], [1, 2, 3])
    with pytest.raises(ValueError, match="at least 2"):
        pearson([1], [2])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci([1, 2, 3], [3, 1, 2], pearson, confidence=1.5)
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_ci([1, 2, 3], [3, 1, 2], pearson, n_resamples=0)
