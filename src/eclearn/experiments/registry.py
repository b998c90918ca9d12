"""Experiment registry and presets.

Experiments are registered as ``"module:Class"`` strings and imported only when a run or
a report needs them, so ``eclearn list`` never imports an application's dependencies
(pandas, scikit-learn). Adding an experiment is one line at the bottom of this file::

    register("fairness", "eclearn.fairness.experiment:FairnessExperiment", "COMPAS ...")

Presets are the TOML run files shipped in ``eclearn/configs/`` (file stem = preset name).
A name that is both a preset and an experiment (``toy``) means the preset.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from eclearn.experiments.base import Experiment
from eclearn.experiments.config import ConfigError, RunFile, RunnerError, read_run_file

__all__ = [
    "Preset",
    "experiment_class",
    "experiment_description",
    "experiment_names",
    "presets",
    "register",
    "resolve",
]

_EXPERIMENTS: dict[str, tuple[str, str]] = {}


def register(name: str, target: str, description: str = "") -> None:
    """Register experiment ``name`` as ``"package.module:Class"`` (imported lazily);
    ``description`` is what ``eclearn list`` shows without importing it."""
    module, sep, attr = target.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"register({name!r}, {target!r}): target must be 'module:Class'")
    _EXPERIMENTS[name] = (target, description)


def experiment_names() -> list[str]:
    return sorted(_EXPERIMENTS)


def experiment_description(name: str) -> str:
    return _EXPERIMENTS[name][1]


def experiment_class(name: str) -> type[Experiment]:
    """Import and return the experiment class registered as ``name``."""
    if name not in _EXPERIMENTS:
        raise RunnerError(
            f"unknown experiment {name!r}{_close(name, experiment_names())}; see `eclearn list`"
        )
    target = _EXPERIMENTS[name][0]
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise RunnerError(
            f"experiment {name!r} cannot be loaded: {err}; install its optional dependencies "
            "(pip install 'eclearn[all]')"
        ) from None
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Experiment)):
        raise RunnerError(f"experiment {name!r}: {target} is not an eclearn Experiment class")
    return cls


@dataclass(frozen=True)
class Preset:
    name: str
    path: Path
    file: RunFile

    @property
    def experiment(self) -> str:
        assert self.file.experiment is not None
        return self.file.experiment

    @property
    def description(self) -> str:
        return self.file.description


def preset_dir() -> Path:
    return Path(str(resources.files("eclearn") / "configs"))


def presets() -> dict[str, Preset]:
    """The presets shipped in ``eclearn/configs/``, by name."""
    found: dict[str, Preset] = {}
    folder = preset_dir()
    if folder.is_dir():
        for path in sorted(folder.glob("*.toml"), key=lambda p: p.stem):
            found[path.stem] = Preset(path.stem, path, read_run_file(path, preset=True))
    return found


def resolve(name: str) -> tuple[str, Preset | None]:
    """``name`` → (experiment name, preset or None). Presets win over experiment names."""
    try:
        known = presets()
    except ConfigError as err:
        raise ConfigError([f"broken preset file: {line}" for line in err.lines]) from None
    if name in known:
        preset = known[name]
        if preset.experiment not in _EXPERIMENTS:
            raise RunnerError(
                f"preset {name!r} ({preset.path}) names experiment {preset.experiment!r}, "
                f"which is not registered{_close(preset.experiment, experiment_names())}"
            )
        return preset.experiment, preset
    if name in _EXPERIMENTS:
        return name, None
    raise RunnerError(
        f"unknown experiment or preset {name!r}{_close(name, [*known, *_EXPERIMENTS])}; "
        "`eclearn list` shows them all"
    )


def _close(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, sorted(set(choices)), n=3, cutoff=0.5)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"


register(
    "toy",
    "eclearn.experiments.toy:ToyExperiment",
    "constrained least squares with a closed-form KKT solution (no data)",
)
register(
    "fairness",
    "eclearn.fairness.experiment:FairnessExperiment",
    "fair logistic regression on COMPAS: demographic parity as an equality, tolerances, "
    "prescribed rates, equalized odds",
)
register(
    "convection",
    "eclearn.pde.experiment:ConvectionExperiment",
    "convection equation: IC/BC/PDE residuals as equality constraints vs the penalty PINN",
)
register(
    "interpolation",
    "eclearn.vision.experiment:InterpolationExperiment",
    "interpolating classifiers on CIFAR: per-class / per-sample zero loss as equalities",
)
