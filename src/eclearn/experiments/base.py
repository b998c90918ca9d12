"""The experiment plug-in contract the runner (``eclearn run``) drives.

An experiment is a class with a pydantic ``Config`` and three methods. The runner owns
everything generic — config validation, seeds, run directories, progress, checkpoints and
resume, history export, generic figures, reports — so an application adds one module:

- ``setup(config, context) -> Setup``: build data, model, problem and the
  :class:`~eclearn.PrimalDual` solver, and say how long to train. It must be
  deterministic given ``context.seed`` (the runner seeds all generators before calling it)
  and must not train: the runner calls ``solver.fit`` (possibly after loading a checkpoint).
- ``metrics(setup, result, context) -> dict``: final held-out results, a flat JSON object
  with snake_case keys (numbers, strings, lists) — written to ``metrics.json``. The runner
  adds ``experiment``, ``formulation``, ``seed`` and ``fit_seconds``.
- ``figures(setup, result, figure_dir) -> list[Path]`` (optional): experiment-specific
  figures; the runner already draws objective/Lagrangian, violations and multipliers.
- ``report_figures(runs, out_dir) -> list[Path]`` (optional class method): cross-run
  figures for ``eclearn report`` (e.g. one metric against a swept value), given the
  complete :class:`RunRecord` s of this experiment.

Optional class attributes: ``table_metrics`` (the metrics the terminal table shows, in that
order; default all) and ``budget_keys`` (config keys a resumed run may change).

Configs subclass :class:`ExperimentConfig` (unknown keys are rejected). Presets are TOML
files in ``eclearn/configs/`` naming their experiment (see ``eclearn.experiments.registry``).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from eclearn.history import History
from eclearn.solver import Callback, FitResult, PrimalDual, StoppingRule

__all__ = ["Experiment", "ExperimentConfig", "RunContext", "RunRecord", "Setup"]


def _scalar_types(annotation: Any) -> set[Any]:
    """The plain types an annotation admits (``int | None`` → {int, NoneType}; a Literal
    counts as ``str``-like: its values are checked by pydantic itself)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return {typing.Literal}
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_scalar_types(a) for a in typing.get_args(annotation)))
    return {annotation if origin is None else origin}


class ExperimentConfig(BaseModel):
    """Base of every experiment's config: strict — unknown keys rejected, no NaN or infinity
    in any number, and no silent coercion of a number's type (``true`` is not 1, ``"3"`` is
    not 3, ``3.5`` is not an integer); containers from TOML/JSON lists still validate."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_silent_coercion(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if field is None:
            return value
        kinds = _scalar_types(field.annotation)
        if not kinds & {int, float} or kinds & {bool, typing.Literal, Any, str}:
            return value
        if isinstance(value, bool):
            raise ValueError("a boolean is not a number")
        if isinstance(value, str):
            raise ValueError("a string is not a number (write it unquoted)")
        if isinstance(value, float) and float not in kinds:
            raise ValueError("must be an integer (no fractional or float value)")
        return value

    formulation: str = Field("lagrangian", description="which formulation this run trains")
    checkpoint_every: int = Field(500, ge=1, description="steps between checkpoints")
    select: Literal["last", "best", "best-steps", "average", "mixture"] = Field(
        "last",
        description=(
            "which model to report (an ecl.select rule): best/average/mixture are judged on "
            "the validation split, best-steps on the training steps' own exact values"
        ),
    )
    patience: int = Field(
        0, ge=0, description="stop once the best-feasible selection has not improved (0: never)"
    )
    min_delta: float = Field(1e-4, ge=0, description="improvement that resets the patience")
    candidates: int = Field(20, ge=2, description="validation checks / candidates for select")
    validation_fraction: float | None = Field(
        None,
        ge=0,
        lt=1,
        description=(
            "share of the training data held out to select the model (None: 0.2 when select "
            "is not 'last', else 0); never the test split"
        ),
    )

    def validation_share(self) -> float:
        """The resolved validation fraction (see ``validation_fraction``)."""
        if self.validation_fraction is not None:
            return float(self.validation_fraction)
        return 0.0 if self.select in ("last", "best-steps") else 0.2

    certify: bool = Field(True, description="write certificate.json (needs held-out data)")
    confidence: float = Field(0.95, gt=0, lt=1, description="certificate confidence level")


@dataclass
class RunContext:
    """What the runner hands an experiment."""

    seed: int
    device: str
    run_dir: Path
    data_path: str | None = None
    log: Any = print


@dataclass
class Setup:
    """A ready-to-train run: the solver, its batches and its budget."""

    solver: PrimalDual
    train_batches: Iterable[Any]
    epochs: int | None = None
    max_steps: int | None = None
    stopping: StoppingRule | None = None
    callbacks: Sequence[Callback] = ()
    state: dict[str, Any] = field(default_factory=dict)
    heldout_batches: Iterable[Any] | None = None
    """Held-out data for ``certificate.json`` (small batches give a finer bootstrap)."""
    certify_train_batches: Iterable[Any] | None = None
    """Training data for the certificate's training values (default: ``train_batches``
    when it is finite)."""
    validation_batches: Iterable[Any] | None = None
    """Data the ``select`` rule judges candidates on: a split of the *training* data
    (``validation_share()``), never the test data; required when ``select`` is not 'last'."""
    validation_description: str = "validation split"
    """What ``validation_batches`` is, in words (reported with the selection)."""
    inference: bool = True
    """False when statistics need autograd at evaluation (e.g. PDE residuals)."""


@dataclass
class RunRecord:
    """One run directory as the report reads it: ``config.json`` and ``metrics.json``
    (None while the run is incomplete); ``label`` names the run's group in tables."""

    path: Path
    experiment: str
    seed: int
    label: str
    config: dict[str, Any]
    metrics: dict[str, Any] | None
    info: dict[str, Any] = field(default_factory=dict)
    """The rest of ``config.json`` (preset, sweep values, constraint declarations, version)."""

    @property
    def complete(self) -> bool:
        return self.metrics is not None

    def history(self) -> History:
        """The run's ``history.csv`` (the solver's per-step records)."""
        return History.read_csv(self.path / "history.csv")

    def figure_paths(self) -> list[Path]:
        return sorted((self.path / "figures").glob("*.png"))


class Experiment:
    """Base class; see the module docstring for the contract."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Config: ClassVar[type[ExperimentConfig]] = ExperimentConfig
    table_metrics: ClassVar[tuple[str, ...]] = ()
    budget_keys: ClassVar[frozenset[str]] = frozenset({"max_steps", "epochs"})

    def setup(self, config: ExperimentConfig, context: RunContext) -> Setup:
        raise NotImplementedError

    def metrics(self, setup: Setup, result: FitResult, context: RunContext) -> dict[str, Any]:
        raise NotImplementedError

    def figures(self, setup: Setup, result: FitResult, figure_dir: Path) -> list[Path]:
        return []

    @classmethod
    def report_figures(cls, runs: Sequence[RunRecord], out_dir: Path) -> list[Path]:
        return []

    @classmethod
    def memory_estimate(cls, config: ExperimentConfig) -> dict[str, float]:
        """Rough bytes of memory each size-like config key makes the run hold at once
        (``{"heldout_points": 1.2e9}``): the runner refuses, before training, a config whose
        sizes cannot fit the machine's memory, naming the keys. Default: no estimate."""
        return {}
