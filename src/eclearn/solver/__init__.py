"""The primal-dual solver, one concept per module:

- :mod:`.loop` — :class:`PrimalDual`: wiring, ``fit`` and the public ``train_step``;
- :mod:`.lagrangian` — the Lagrangian and the dual update as functions, local and distributed;
- :mod:`.stream` — the resumable batch stream (epochs, RNG replay, tuple batches);
- :mod:`.state` — the checkpoint format;
- :mod:`.callbacks` — the callback protocol, progress bar, warm start;
- :mod:`.stopping` — stopping criteria;
- :mod:`.phases` — primal optimizers in phases (Adam, then L-BFGS).
"""

from eclearn.solver.callbacks import Callback, ObjectiveWarmStart, ProgressBar, SolverView
from eclearn.solver.loop import FitResult, PrimalDual, StepRecord, default_dual_optimizer
from eclearn.solver.phases import Phases
from eclearn.solver.state import CheckpointMismatch
from eclearn.solver.stopping import Patience, StoppingRule

__all__ = [
    "Callback",
    "CheckpointMismatch",
    "FitResult",
    "ObjectiveWarmStart",
    "Patience",
    "Phases",
    "PrimalDual",
    "ProgressBar",
    "SolverView",
    "StepRecord",
    "StoppingRule",
    "default_dual_optimizer",
]
