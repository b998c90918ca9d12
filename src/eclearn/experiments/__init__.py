"""Experiments and the runner behind ``eclearn run``.

An application adds one module with an :class:`Experiment` subclass (see
:mod:`eclearn.experiments.base` for the contract), one ``register(...)`` line in
:mod:`eclearn.experiments.registry`, and preset TOML files in ``eclearn/configs/``.
The runner (:mod:`eclearn.experiments.runner`) owns seeds, run directories, progress,
checkpoints, resume, metrics and figures; :mod:`eclearn.report` aggregates the results.
"""

from eclearn.experiments.base import Experiment, ExperimentConfig, RunContext, RunRecord, Setup
from eclearn.experiments.config import ConfigError, RunnerError
from eclearn.experiments.registry import register

__all__ = [
    "ConfigError",
    "Experiment",
    "ExperimentConfig",
    "RunContext",
    "RunRecord",
    "RunnerError",
    "Setup",
    "register",
]
