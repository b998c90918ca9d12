"""Fairness helpers: COMPAS data (pandas, scikit-learn) and group-conditional rates (torch)."""

from eclearn.fairness.data import (
    COMPAS_FILE,
    COMPAS_SHA256,
    GROUPS,
    JUVENILE_EDGES,
    PRIORS_EDGES,
    CompasSplit,
    compas_split,
    load_compas,
)
from eclearn.fairness.rates import (
    SURROGATES,
    demographic_parity_gap,
    disparity,
    equalized_odds_gap,
    false_positive_rate,
    group_mean,
    indicator,
    overall_positive_rate,
    positive_rate,
    true_positive_rate,
)

__all__ = [
    "COMPAS_FILE",
    "COMPAS_SHA256",
    "GROUPS",
    "JUVENILE_EDGES",
    "PRIORS_EDGES",
    "SURROGATES",
    "CompasSplit",
    "compas_split",
    "demographic_parity_gap",
    "disparity",
    "equalized_odds_gap",
    "false_positive_rate",
    "group_mean",
    "indicator",
    "load_compas",
    "overall_positive_rate",
    "positive_rate",
    "true_positive_rate",
]
