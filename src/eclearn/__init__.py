"""eclearn — learning with statistical equality constraints (Barthakur & Chamon, NeurIPS 2025).

Declare a :class:`Problem` from one ``evaluate(model, batch)`` function and its
:class:`Equality` / :class:`Inequality` constraints, train it with :class:`PrimalDual`
(dual ascent on the empirical Lagrangian), pick the model to ship with ``ecl.select``, and
judge held-out data with :func:`evaluate` and :func:`certify`.
"""

from eclearn import dual, measures
from eclearn import selection as select
from eclearn._io import CheckpointError, load_checkpoint, save_checkpoint
from eclearn._rng import seed_everything
from eclearn.batches import Batches
from eclearn.certify import Certificate, certify, check_sensitivity, duality_gap
from eclearn.diagnostics import Diagnostic, DiagnosticWarning
from eclearn.eager import eager_optimizer
from eclearn.evaluation import ConstraintReport, EvaluationReport, evaluate
from eclearn.formulations import AugmentedLagrangian, Formulation, Lagrangian, Penalty
from eclearn.history import Columns, History
from eclearn.problem import Constraint, Equality, Evaluation, Inequality, Problem, ProblemError
from eclearn.recovery import CandidateRecorder, MixtureModel, Recovered, recover
from eclearn.solver import (
    Callback,
    CheckpointMismatch,
    FitResult,
    ObjectiveWarmStart,
    Patience,
    Phases,
    PrimalDual,
    StepRecord,
    StoppingRule,
)
from eclearn.statistics import Proxy, Ratio

__version__ = "0.2.0"  # the one place the version is set (pyproject.toml reads it)

__all__ = [
    "AugmentedLagrangian",
    "Batches",
    "Callback",
    "CandidateRecorder",
    "Certificate",
    "CheckpointError",
    "CheckpointMismatch",
    "Columns",
    "Constraint",
    "ConstraintReport",
    "Diagnostic",
    "DiagnosticWarning",
    "Equality",
    "Evaluation",
    "EvaluationReport",
    "FitResult",
    "Formulation",
    "History",
    "Inequality",
    "Lagrangian",
    "MixtureModel",
    "ObjectiveWarmStart",
    "Patience",
    "Penalty",
    "Phases",
    "PrimalDual",
    "Problem",
    "ProblemError",
    "Proxy",
    "Ratio",
    "Recovered",
    "StepRecord",
    "StoppingRule",
    "__version__",
    "certify",
    "check_sensitivity",
    "dual",
    "duality_gap",
    "eager_optimizer",
    "evaluate",
    "load_checkpoint",
    "measures",
    "recover",
    "save_checkpoint",
    "seed_everything",
    "select",
]
