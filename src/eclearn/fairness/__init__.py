"""Fairness helpers: COMPAS data (pandas, scikit-learn), group-conditional rates (torch), the
fair logistic regression engine (:mod:`~eclearn.fairness.training`) and its scikit-learn
estimator :class:`FairClassifier`. The ``eclearn run fairness`` experiment lives in
:mod:`eclearn.fairness.experiment` (imported by the runner, not here: it needs pydantic)."""

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
from eclearn.fairness.estimator import CONSTRAINTS, FairClassifier, SensitiveFeaturesError
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
from eclearn.fairness.training import (
    FORMULATIONS,
    FairnessEvaluate,
    FairTraining,
    build_constraints,
    fair_solver,
)

__all__ = [
    "COMPAS_FILE",
    "COMPAS_SHA256",
    "CONSTRAINTS",
    "FORMULATIONS",
    "GROUPS",
    "JUVENILE_EDGES",
    "PRIORS_EDGES",
    "SURROGATES",
    "CompasSplit",
    "FairClassifier",
    "FairTraining",
    "FairnessEvaluate",
    "SensitiveFeaturesError",
    "build_constraints",
    "compas_split",
    "demographic_parity_gap",
    "disparity",
    "equalized_odds_gap",
    "fair_solver",
    "false_positive_rate",
    "group_mean",
    "indicator",
    "load_compas",
    "overall_positive_rate",
    "positive_rate",
    "true_positive_rate",
]
