"""Fairness helpers: COMPAS data (pandas, scikit-learn), group-conditional rates (torch), the
fair logistic regression engine (:mod:`~eclearn.fairness.training`) and its scikit-learn
estimators :class:`FairClassifier` and :class:`FairRegressor`. The ``eclearn run fairness`` experiment lives in
:mod:`eclearn.fairness.experiment` (imported by the runner, not here: it needs pydantic)."""

from eclearn.fairness._base import FairnessConvergenceWarning
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
from eclearn.fairness.estimator import (
    CONSTRAINTS,
    ClassifierStatistics,
    FairClassifier,
    SensitiveFeaturesError,
)
from eclearn.fairness.groups import MAX_GROUPS, MIN_GROUP_SIZE, GroupEncoder, UnseenGroupWarning
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
from eclearn.fairness.regressor import REGRESSION_CONSTRAINTS, FairRegressor, RegressorStatistics
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
    "MAX_GROUPS",
    "MIN_GROUP_SIZE",
    "PRIORS_EDGES",
    "REGRESSION_CONSTRAINTS",
    "SURROGATES",
    "ClassifierStatistics",
    "CompasSplit",
    "FairClassifier",
    "FairRegressor",
    "FairTraining",
    "FairnessConvergenceWarning",
    "FairnessEvaluate",
    "GroupEncoder",
    "RegressorStatistics",
    "SensitiveFeaturesError",
    "UnseenGroupWarning",
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
