"""Run directories: plan the runs of an experiment/preset (seeds × sweep), execute each one
(seeded, checkpointed, resumable bit for bit), and read them back for reports.

A run directory ``DIR[/<label>]/seed-<n>/`` holds ``config.json`` (written first),
``log.txt``, ``checkpoint.pt`` (every ``checkpoint_every`` steps and at the end),
``history.csv``, ``multipliers.pt``, ``figures/*.png`` and — written last, atomically —
``metrics.json``. A directory without ``metrics.json`` is an incomplete run: ``eclearn run
--resume DIR`` continues it from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import Tensor

from eclearn import __version__
from eclearn import selection as select
from eclearn._io import CheckpointError, atomic_write_text, load_checkpoint, save_checkpoint
from eclearn._rng import seed_everything
from eclearn.certify import certify
from eclearn.datafiles import DataNotFoundError
from eclearn.diagnostics import diagnose
from eclearn.distributed import ShardedBatches
from eclearn.experiments import registry
from eclearn.experiments.base import Experiment, ExperimentConfig, RunContext, RunRecord, Setup
from eclearn.experiments.config import (
    ConfigError,
    Layer,
    RunnerError,
    build_config,
    changed_keys,
    check_seeds,
    flatten,
    parse_override,
    read_run_file,
    sweep_combinations,
    sweep_label,
)
from eclearn.solver import Callback, FitResult, Patience, PrimalDual

__all__ = [
    "CHECKPOINT_FILE",
    "CONFIG_FILE",
    "FIGURE_DIR",
    "HISTORY_FILE",
    "INTERRUPT_ENV",
    "LOG_FILE",
    "METRICS_FILE",
    "MULTIPLIERS_FILE",
    "Plan",
    "RunInterrupted",
    "RunLog",
    "RunSpec",
    "check_run_dirs",
    "execute",
    "find_runs",
    "plan_resume",
    "plan_runs",
    "read_run",
    "stderr_echo",
    "violation_columns",
    "worst_violation",
]

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
CERTIFICATE_FILE = "certificate.json"
HISTORY_FILE = "history.csv"
CHECKPOINT_FILE = "checkpoint.pt"
MULTIPLIERS_FILE = "multipliers.pt"
LOG_FILE = "log.txt"
FIGURE_DIR = "figures"
RUN_FILES = (CONFIG_FILE, HISTORY_FILE, CHECKPOINT_FILE, MULTIPLIERS_FILE, LOG_FILE)
INTERRUPT_ENV = "ECLEARN_INTERRUPT_AT_STEP"
"""Test hook: raise KeyboardInterrupt right after the checkpoint of this step."""


class RunInterrupted(Exception):
    """A run stopped by Ctrl-C (or the test hook); its last checkpoint is on disk."""

    def __init__(self, run_dir: Path, step: int) -> None:
        self.run_dir, self.step = run_dir, step
        super().__init__(
            f"interrupted at step {step}; {run_dir} is incomplete — continue it with "
            f"`eclearn run --resume {run_dir}` (from its last checkpoint)"
        )


@dataclass
class RunSpec:
    """One run to execute: experiment, validated config, seed and directory."""

    experiment: str
    config: ExperimentConfig
    seed: int
    run_dir: Path
    label: str = ""
    preset: str | None = None
    sweep: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    data_path: str | None = None
    sweep_index: int = 0


@dataclass
class Plan:
    """The runs of one ``eclearn run`` command, all under ``out``."""

    name: str
    out: Path
    runs: list[RunSpec]


# ---------------------------------------------------------------------------- planning
def plan_runs(
    target: str | None,
    *,
    config_file: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    seeds: Sequence[int] | None = None,
    out: str | os.PathLike[str] | None = None,
    device: str | None = None,
    data: str | None = None,
) -> Plan:
    """Resolve ``target`` (preset or experiment), merge preset, ``--config`` file, sweep and
    ``--set`` values, validate every combination and lay out the run directories."""
    user = read_run_file(config_file) if config_file is not None else None
    if target is None:
        if user is None or user.experiment is None:
            raise RunnerError(
                "name an experiment or preset (e.g. `eclearn run toy`; `eclearn list` shows "
                'them), or pass --config FILE with a top-level experiment = "<name>"'
            )
        experiment, preset = user.experiment, None
        name = Path(config_file).stem  # type: ignore[arg-type]
    else:
        experiment, preset = registry.resolve(target)
        name = target
        if user is not None and user.experiment not in (None, experiment):
            raise ConfigError(
                f"{config_file}: experiment = {user.experiment!r}, but {target!r} runs "
                f"experiment {experiment!r}; drop one of the two"
            )
    cls = registry.experiment_class(experiment)
    layers: list[Layer] = []
    sweep: dict[str, list[Any]] = {}
    if preset is not None:
        layers.append(Layer(f"preset {preset.name!r}", preset.file.config))
        sweep.update(preset.file.sweep)
    if user is not None:
        layers.append(Layer(f"--config {config_file}", user.config))
        sweep.update(user.sweep)
    set_layers = [Layer(f"--set {text}", dict([parse_override(text)])) for text in overrides]
    fixed = {key for layer in set_layers for key in layer.values}
    fixed |= set(user.config) if user is not None else set()
    sweep = {key: values for key, values in sweep.items() if key not in fixed}
    if seeds:
        seed_list = check_seeds(list(seeds), "--seed")
    elif user is not None and user.seeds:
        seed_list = user.seeds
    elif preset is not None and preset.file.seeds:
        seed_list = preset.file.seeds
    else:
        seed_list = [0]
    device = _check_device(device or "cpu")
    out_dir = Path(out) if out is not None else Path("runs") / name
    runs: list[RunSpec] = []
    problems: list[str] = []
    for index, combo in enumerate(sweep_combinations(sweep)):
        label = sweep_label(combo)
        combo_layers = [Layer(f"[sweep] {sweep_label({k: v})}", {k: v}) for k, v in combo.items()]
        try:
            config = build_config(cls.Config, [*layers, *combo_layers, *set_layers])
        except ConfigError as err:
            problems += [line for line in err.lines if line not in problems]
            continue
        base = out_dir / label if label else out_dir
        for seed in seed_list:
            runs.append(
                RunSpec(
                    experiment,
                    config,  # type: ignore[arg-type]
                    seed,
                    base / f"seed-{seed}",
                    label,
                    preset.name if preset else None,
                    combo,
                    device,
                    data,
                    index,
                )
            )
    if problems:
        raise ConfigError(problems)
    return Plan(name, out_dir, runs)


def plan_resume(
    run_dir: str | os.PathLike[str],
    *,
    target: str | None = None,
    config_file: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    seeds: Sequence[int] | None = None,
    out: str | os.PathLike[str] | None = None,
    device: str | None = None,
    data: str | None = None,
) -> RunSpec:
    """The spec that continues the incomplete run in ``run_dir``: its stored config, where
    ``--config``/``--set`` may change only the budget (the experiment's ``budget_keys``)."""
    run_dir = Path(run_dir)
    record = read_run(run_dir)
    if record.complete:
        raise RunnerError(
            f"{run_dir} is complete ({METRICS_FILE} exists): nothing to resume; start a new run "
            "with another --out, or rerun it with --overwrite"
        )
    if out is not None:
        raise RunnerError(
            "--out cannot be combined with --resume: a resumed run stays in its directory"
        )
    if target is not None and registry.resolve(target)[0] != record.experiment:
        raise RunnerError(
            f"{run_dir} is a run of experiment {record.experiment!r}, not "
            f"{target!r}; drop the name or the --resume"
        )
    if seeds and list(seeds) != [record.seed]:
        raise RunnerError(
            f"{run_dir} is seed {record.seed}; --seed {' '.join(map(str, seeds))} "
            "cannot change it on --resume"
        )
    cls = registry.experiment_class(record.experiment)
    stored = Layer(f"{run_dir / CONFIG_FILE}", flatten(record.config))
    original = build_config(cls.Config, [stored])
    layers = [stored]
    if config_file is not None:
        user = read_run_file(config_file)
        if user.sweep:
            raise ConfigError(f"{config_file}: a [sweep] cannot be applied to --resume of one run")
        layers.append(Layer(f"--config {config_file}", user.config))
    layers += [Layer(f"--set {text}", dict([parse_override(text)])) for text in overrides]
    config = build_config(cls.Config, layers)
    assert isinstance(config, ExperimentConfig)
    changed = changed_keys(original.model_dump(mode="json"), config.model_dump(mode="json"))
    frozen = {k: v for k, v in changed.items() if k not in cls.budget_keys}
    if frozen:
        diff = "; ".join(f"{k}: {a!r} → {b!r}" for k, (a, b) in frozen.items())
        raise RunnerError(
            f"cannot resume {run_dir}: the config no longer matches its {CONFIG_FILE} ({diff}); "
            f"only {', '.join(sorted(cls.budget_keys))} may change on --resume — start a new "
            "run with another --out instead"
        )
    info = record.info
    return RunSpec(
        record.experiment,
        config,
        record.seed,
        run_dir,
        str(info.get("label") or ""),
        info.get("preset"),
        dict(info.get("sweep") or {}),
        _check_device(device or str(info.get("device") or "cpu")),
        data if data is not None else info.get("data"),
        int(info.get("sweep_index") or 0),
    )


def _check_device(device: str) -> str:
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise RunnerError(f"--device {device!r}: use cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RunnerError(
            f"--device {device}: CUDA is not available on this machine; use --device cpu"
        )
    return device


def check_run_dirs(
    runs: Sequence[RunSpec], *, overwrite: bool = False, continue_: bool = False
) -> dict[Path, str]:
    """What to do with each planned run directory: ``"start"``, or with ``continue_``
    ``"skip"`` (complete, same config) / ``"resume"`` (incomplete, same config).

    Existing run directories are refused unless ``overwrite`` (then cleared,
    ``metrics.json`` first, so a half-cleared directory never looks complete) or
    ``continue_`` (then their config must be the planned one).
    """
    if overwrite and continue_:
        raise RunnerError(
            "--overwrite and --continue exclude each other: replace the runs or "
            "keep and finish them"
        )
    actions: dict[Path, str] = {}
    problems = []
    for spec in runs:
        d = spec.run_dir
        actions[d] = "start"
        if not d.exists():
            continue
        if not d.is_dir():
            problems.append(f"{d} exists and is not a directory; choose another --out")
        elif (d / CONFIG_FILE).exists() or (d / METRICS_FILE).exists():
            complete = (d / METRICS_FILE).exists()
            if overwrite:
                continue
            if continue_:
                mismatch = _mismatch(spec, d)
                if mismatch:
                    problems.append(
                        f"{d} holds a run with another config ({mismatch}); --continue only "
                        "finishes runs of the same config — choose another --out or --overwrite"
                    )
                actions[d] = "skip" if complete else "resume"
            elif complete:
                problems.append(
                    f"{d} already holds a complete run; pass --overwrite to replace it, "
                    "--continue to keep it, or choose another --out"
                )
            else:
                problems.append(
                    f"{d} holds an incomplete run; continue it with `eclearn run --resume {d}` "
                    "(or the whole command with --continue), or pass --overwrite to start over"
                )
        elif any(d.iterdir()):
            problems.append(
                f"{d} exists and is not a run directory (no {CONFIG_FILE}); choose another --out"
            )
    if problems:
        raise RunnerError(problems)
    for spec in runs:
        if spec.run_dir.is_dir() and actions[spec.run_dir] != "skip":
            _check_not_in_use(spec.run_dir)
    if overwrite:
        for spec in runs:
            if spec.run_dir.is_dir():
                _clear(spec.run_dir)
    return actions


def _mismatch(spec: RunSpec, run_dir: Path) -> str:
    """How the run stored in ``run_dir`` differs from ``spec`` ("" when it does not)."""
    record = read_run(run_dir)
    if record.experiment != spec.experiment or record.seed != spec.seed:
        return f"experiment {record.experiment!r} seed {record.seed}"
    cls = registry.experiment_class(spec.experiment)
    try:
        stored = build_config(
            cls.Config, [Layer(str(run_dir / CONFIG_FILE), flatten(record.config))]
        )
    except ConfigError as err:
        return err.lines[0]
    changed = changed_keys(stored.model_dump(mode="json"), spec.config.model_dump(mode="json"))
    return "; ".join(f"{k}: {a!r} → {b!r}" for k, (a, b) in changed.items())


def _clear(run_dir: Path) -> None:
    with _writing(run_dir / METRICS_FILE, run_dir):
        (run_dir / METRICS_FILE).unlink(missing_ok=True)
        for name in RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)
        for leftover in run_dir.glob(".*.tmp"):
            leftover.unlink(missing_ok=True)
        figures = run_dir / FIGURE_DIR
        if figures.is_dir():
            for png in figures.glob("*.png"):
                png.unlink()


# ---------------------------------------------------------------------------- execution
LOCK_FILE = ".lock"


class RunLock:
    """An exclusive lock on a run directory for the life of the process that trains it.

    ``fcntl.flock`` on ``DIR/.lock``: the OS releases it when the process ends, however it
    ends (``kill -9`` included), so a stale lock never blocks a rerun. The holder writes its
    pid into the file, so a second process can say who holds it.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise RunnerError(
                f"{self.path.parent} is in use by another eclearn process (pid {holder}); wait "
                "for it to finish or stop it, then run again"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _check_not_in_use(run_dir: Path) -> None:
    """Raise if a live process holds ``run_dir``'s lock (before replacing its files)."""
    if (run_dir / LOCK_FILE).exists():
        RunLock(run_dir).acquire().release()


@contextmanager
def _writing(path: Path, run_dir: Path) -> Iterator[None]:
    """Turn an OSError while writing ``path`` into a one-line error with the fix."""
    try:
        yield
    except OSError as err:
        if isinstance(err, DataNotFoundError):
            raise
        reason = err.strerror or str(err)
        then = (
            "run it again"
            if path.name == CONFIG_FILE
            else f"continue with `eclearn run --resume {run_dir}`"
        )
        raise RunnerError(
            f"could not write {path}: {reason}; free disk space or fix the permissions, then "
            f"{then} (the run is incomplete: no {METRICS_FILE})"
        ) from err


class RunLog:
    """``log.txt`` of a run, echoed to stderr (through tqdm, so progress bars survive)."""

    def __init__(self, path: Path, echo: Callable[[str], None] | None) -> None:
        self.path = path
        self.echo = echo
        self.handle: IO[str] | None = None

    def __call__(self, message: str) -> None:
        self.write(message)
        if self.echo is not None:
            self.echo(message)

    def write(self, message: str) -> None:
        """Only to ``log.txt`` (a failing log write never stops a run)."""
        try:
            if self.handle is None:
                self.handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            for line in str(message).splitlines() or [""]:
                self.handle.write(f"{stamp}  {line}\n")
            self.handle.flush()
        except OSError:
            pass

    def close(self) -> None:
        if self.handle is not None:
            with suppress(OSError):
                self.handle.close()
            self.handle = None


def stderr_echo(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(str(message), file=sys.stderr)


def execute(
    spec: RunSpec,
    *,
    resume: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] | None = stderr_echo,
    progress_file: IO[str] | None = None,
) -> dict[str, Any]:
    """Run (or with ``resume=True`` continue) one run directory; returns its metrics.

    ``progress``: a tqdm bar on stderr (only when it is a terminal, unless ``progress_file``
    is given). Raises :class:`RunnerError` (bad input, write errors),
    :class:`RunInterrupted`, or the experiment's own exceptions.
    """
    experiment = registry.experiment_class(spec.experiment)()
    run_dir = spec.run_dir
    created = [d for d in [run_dir, *run_dir.parents] if not d.exists()]
    with _writing(run_dir, run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = RunLock(run_dir).acquire()
    try:
        return _execute_locked(experiment, spec, resume, progress, echo, progress_file, created)
    finally:
        lock.release()


def _execute_locked(
    experiment: Experiment,
    spec: RunSpec,
    resume: bool,
    progress: bool,
    echo: Callable[[str], None] | None,
    progress_file: IO[str] | None,
    created: list[Path],
) -> dict[str, Any]:
    run_dir = spec.run_dir
    log = RunLog(run_dir / LOG_FILE, echo)
    holder: list[PrimalDual] = []
    try:
        with _writing(run_dir / CONFIG_FILE, run_dir):
            if not resume:
                _write_config(spec, None)
        return _run(experiment, spec, log, resume, progress, progress_file, holder)
    except DataNotFoundError:
        log.close()
        if not resume:
            _remove_fresh(run_dir, created)
        raise
    except KeyboardInterrupt:
        step = holder[0].step if holder else 0
        log.write(f"interrupted at step {step}")
        raise RunInterrupted(run_dir, step) from None
    except BaseException as err:
        import traceback

        log.write(f"FAILED: {type(err).__name__}: {err}")
        if not isinstance(err, RunnerError):
            log.write(traceback.format_exc().rstrip())
        raise
    finally:
        log.close()


def _remove_fresh(run_dir: Path, created: list[Path]) -> None:
    """Undo a fresh run that failed before training (missing data): remove its files and
    the folders this run created, leaving nothing behind."""
    for name in (CONFIG_FILE, LOG_FILE, LOCK_FILE):
        (run_dir / name).unlink(missing_ok=True)
    for folder in created:  # deepest first
        with suppress(OSError):
            folder.rmdir()


def _run(
    experiment: Experiment,
    spec: RunSpec,
    log: RunLog,
    resume: bool,
    progress: bool,
    progress_file: IO[str] | None,
    holder: list[PrimalDual],
) -> dict[str, Any]:
    run_dir = spec.run_dir
    what = f"{spec.experiment}" + (f" [{spec.label}]" if spec.label else "")
    log(
        f"{'resuming' if resume else 'starting'} {what} seed {spec.seed} in {run_dir} "
        f"(eclearn {__version__}, device {spec.device})"
    )
    context = RunContext(
        seed=spec.seed, device=spec.device, run_dir=run_dir, data_path=spec.data_path, log=log
    )
    seed_everything(spec.seed)
    setup = experiment.setup(spec.config, context)
    _check_setup(setup, spec.experiment)
    solver = setup.solver
    if solver.comm is not None:  # --nproc: every rank trains on its shard of each batch
        setup.train_batches = ShardedBatches(
            setup.train_batches, solver.comm.rank, solver.comm.world_size
        )
    holder.append(solver)
    with _writing(run_dir / CONFIG_FILE, run_dir):
        _write_config(
            spec,
            [
                {**c, "tolerance": solver.problem.by_name[c["name"]].tolerance}
                for c in solver.problem.fingerprint()
            ],
        )
    checkpoint = run_dir / CHECKPOINT_FILE
    runner_state: dict[str, Any] = {}
    if resume and checkpoint.exists():
        runner_state = _load(solver, checkpoint)
        log(f"loaded {checkpoint} at step {solver.step} (epoch {solver.epoch})")
    elif resume:
        log(f"no {CHECKPOINT_FILE} yet: starting from step 0")
    previous = float(runner_state.get("fit_seconds") or 0.0)
    finished = runner_state.get("stop_reason")
    budget = _remaining(setup, solver)
    if finished in ("max_steps", "epochs") and min(budget.values()) > 0:
        finished = None  # the budget was raised on --resume: train on
    stopping = setup.stopping
    if stopping is not None and solver.step:
        stopping = dataclasses.replace(stopping, min_steps=max(0, stopping.min_steps - solver.step))
    interrupt = os.environ.get(INTERRUPT_ENV, "").strip()
    selector = _selector(spec, setup)
    criteria: list[Any] = [] if stopping is None else [stopping]
    patience = int(getattr(spec.config, "patience", 0))
    if patience and isinstance(selector, select.BestFeasible):
        criteria.append(Patience(selector, patience))
    saver = _Checkpointer(
        checkpoint,
        run_dir,
        getattr(spec.config, "checkpoint_every", 500),
        previous,
        int(interrupt) if interrupt.isdigit() else None,
    )
    total = _total_steps(setup)
    show = progress and (progress_file is not None or sys.stderr.isatty())
    bar = _Progress(
        total, show, f"{spec.label or spec.experiment} seed {spec.seed}", log, solver, progress_file
    )
    if finished:
        log(f"training had finished ({finished}); writing the results")
        result = solver.fit(
            setup.train_batches, max_steps=0, warn=False, callbacks=setup.callbacks, select=selector
        )
    else:
        log(f"training: {_describe_budget(budget, total, solver.step)}")
        result = solver.fit(
            setup.train_batches,
            **budget,  # type: ignore[arg-type]  # max_steps/epochs: ints
            stopping=criteria,
            warn=False,
            callbacks=[*setup.callbacks, saver, bar],
            select=selector,
        )
    seconds = previous + result.seconds
    reason = finished or result.stop_reason
    diagnostics = diagnose(
        solver.history,
        solver.problem,
        start=0,
        updates_multipliers=solver.formulation.updates_multipliers,
    )
    result = dataclasses.replace(
        result, diagnostics=diagnostics, seconds=seconds, stop_reason=reason
    )
    saver.save(solver, seconds=seconds, stop_reason=reason)
    log(result.summary())
    with _writing(run_dir / MULTIPLIERS_FILE, run_dir):
        save_checkpoint(
            {k: v.detach().cpu() for k, v in result.multipliers.items()}, run_dir / MULTIPLIERS_FILE
        )
    with _writing(run_dir / HISTORY_FILE, run_dir):
        solver.history.to_csv(run_dir / HISTORY_FILE)
    figure_dir = run_dir / FIGURE_DIR
    with _writing(figure_dir, run_dir):
        from eclearn.report.figures import run_figures

        figure_dir.mkdir(exist_ok=True)
        constraints = solver.problem.fingerprint()
        run_figures(solver.history, constraints, figure_dir)
        experiment.figures(setup, result, figure_dir)
    selection = _apply_selection(setup, result, log)
    certificate = _certify(spec, setup, result, run_dir, log)
    metrics = experiment.metrics(setup, result, context)
    if selection is not None:
        metrics = {**metrics, "selection": selection}
    if certificate is not None:
        metrics = {
            **metrics,
            "certificate_summary": certificate["summary"],
            "certificate_verdicts": {
                n: c["verdict"] for n, c in certificate["constraints"].items()
            },
        }
    if not isinstance(metrics, Mapping):
        raise RunnerError(
            f"experiment {spec.experiment!r}: metrics() must return a dict, got "
            f"{type(metrics).__name__}"
        )
    record = _final_metrics(spec, metrics, result, solver)
    text = json.dumps(record, indent=2, allow_nan=False) + "\n"
    with _writing(run_dir / METRICS_FILE, run_dir):
        atomic_write_text(run_dir / METRICS_FILE, text)
    log(f"complete: {run_dir / METRICS_FILE}")
    return record


def _selector(spec: RunSpec, setup: Setup) -> Any:
    """The ``select`` rule as an ``ecl.select`` selector (None for ``last``), judged on the
    experiment's validation split — never on its held-out test data."""
    rule = getattr(spec.config, "select", "last")
    if rule == "last":
        return None
    min_delta = float(getattr(spec.config, "min_delta", 1e-4))
    if rule == "best-steps":
        return select.BestFeasible(on="steps", min_delta=min_delta)
    data = setup.validation_batches
    if data is None:
        raise RunnerError(
            f"experiment {spec.experiment!r} provides no validation split, so select={rule!r} "
            "cannot judge candidates (the test data is never used to select); use "
            "select='last' or set validation_fraction > 0"
        )
    total = _total_steps(setup) or 1000
    count = int(getattr(spec.config, "candidates", 20))
    every = max(1, total // count)
    label = setup.validation_description
    if rule == "best":
        return select.BestFeasible(
            on=data,
            every=every,
            label=label,
            inference=setup.inference,
            min_delta=min_delta,
        )
    if rule == "average":
        return select.Average(int(0.75 * total), on=data, label=label, inference=setup.inference)
    return select.Mixture(
        on=data, every=every, keep=count, seed=spec.seed, label=label, inference=setup.inference
    )


def _apply_selection(setup: Setup, result: FitResult, log: RunLog) -> dict[str, Any] | None:
    """Put the selected model into the solver (for the metrics); its description."""
    chosen = result.selected
    if chosen is None:
        return None
    solver = setup.solver
    if chosen.state is None:
        solver.model = chosen.model
    else:
        chosen.load_into(solver.model)
    log(f"selected ({chosen.rule}, on the {chosen.data}): {chosen.description}")
    return chosen.to_dict()


def _certify(
    spec: RunSpec, setup: Setup, result: FitResult, run_dir: Path, log: RunLog
) -> dict[str, Any] | None:
    """Write ``certificate.json`` when the experiment provides held-out data."""
    if not getattr(spec.config, "certify", False) or setup.heldout_batches is None:
        return None
    train = setup.certify_train_batches
    if train is None and hasattr(setup.train_batches, "__len__"):
        train = setup.train_batches
    if train is None:
        log("certificate skipped: the experiment gives no finite training data to certify on")
        return None
    solver = setup.solver
    cert = certify(
        solver.problem,
        solver.model,
        result.multipliers,
        train,
        setup.heldout_batches,
        confidence=spec.config.confidence,
        seed=spec.seed,
        inference=setup.inference,
    ).to_dict()
    text = json.dumps(_jsonable(cert, "certificate"), indent=2) + "\n"
    with _writing(run_dir / CERTIFICATE_FILE, run_dir):
        atomic_write_text(run_dir / CERTIFICATE_FILE, text)
    log(f"certificate: {cert['summary']}")
    return cert


def _check_setup(setup: Any, name: str) -> None:
    if not isinstance(setup, Setup) or not isinstance(setup.solver, PrimalDual):
        raise RunnerError(
            f"experiment {name!r}: setup() must return an eclearn Setup holding a PrimalDual solver"
        )
    if setup.epochs is None and setup.max_steps is None:
        raise RunnerError(
            f"experiment {name!r}: setup() returned neither epochs nor max_steps; "
            "set the training budget on the Setup"
        )


def _load(solver: PrimalDual, path: Path) -> dict[str, Any]:
    try:
        state = load_checkpoint(path, map_location=solver.device)
    except CheckpointError as err:
        raise RunnerError(
            f"{err}; then `eclearn run --resume {path.parent}` starts the run over"
        ) from None
    if not isinstance(state, dict):
        raise RunnerError(f"{path} is not an eclearn run checkpoint (no solver state in it)")
    runner_state = dict(state.pop("runner", None) or {})
    try:
        solver.load_state_dict(state)
    except (ValueError, KeyError, RuntimeError, TypeError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RunnerError(
            f"{path} does not fit this run's solver ({first_line}); delete it and `eclearn "
            f"run --resume {path.parent}` starts the run over"
        ) from None
    return runner_state


def _remaining(setup: Setup, solver: PrimalDual) -> dict[str, int]:
    """The budget still to run: ``fit`` counts further steps/epochs."""
    budget = {}
    if setup.max_steps is not None:
        budget["max_steps"] = max(0, setup.max_steps - solver.step)
    if setup.epochs is not None:
        budget["epochs"] = max(0, setup.epochs - solver.epoch)
    return budget


def _total_steps(setup: Setup) -> int | None:
    totals = []
    if setup.max_steps is not None:
        totals.append(setup.max_steps)
    if setup.epochs is not None and hasattr(setup.train_batches, "__len__"):
        totals.append(setup.epochs * len(setup.train_batches))  # type: ignore[arg-type]
    return min(totals) if totals else None


def _describe_budget(budget: Mapping[str, int], total: int | None, step: int) -> str:
    parts = [f"{v} further {k.replace('max_', '')}" for k, v in budget.items()]
    text = " / ".join(parts)
    if total is not None:
        text += f" (step {step} → {total})"
    return text


def _write_config(spec: RunSpec, constraints: list[dict[str, Any]] | None) -> None:
    info = {
        "experiment": spec.experiment,
        "preset": spec.preset,
        "label": spec.label,
        "sweep": _jsonable(spec.sweep, "sweep"),
        "sweep_index": spec.sweep_index,
        "seed": spec.seed,
        "device": spec.device,
        "data": spec.data_path,
        "eclearn_version": __version__,
        "config": spec.config.model_dump(mode="json"),
        "constraints": constraints,
    }
    atomic_write_text(spec.run_dir / CONFIG_FILE, json.dumps(info, indent=2) + "\n")


def _final_metrics(
    spec: RunSpec, metrics: Mapping[str, Any], result: FitResult, solver: PrimalDual
) -> dict[str, Any]:
    head = {
        "experiment": spec.experiment,
        "formulation": getattr(spec.config, "formulation", ""),
        "label": spec.label,
        "seed": spec.seed,
    }
    body = {
        k: _jsonable(v, f"metrics[{k!r}]", spec.experiment)
        for k, v in metrics.items()
        if k not in head
    }
    tail = {
        "steps": solver.step,
        "epochs": solver.epoch,
        "stop_reason": result.stop_reason,
        "fit_seconds": round(result.seconds, 3),
        "diagnostics": [d.message for d in result.diagnostics],
    }
    return {**head, **{k: v for k, v in body.items() if k not in tail}, **tail}


def _jsonable(value: Any, where: str, experiment: str = "") -> Any:
    """Plain JSON values; tensors/arrays become lists, NaN/Inf become null."""
    if isinstance(value, Tensor):
        value = value.detach().cpu()
        value = value.item() if value.dim() == 0 else value.tolist()
    elif isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{where}[{k!r}]", experiment) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, where, experiment) for v in value]
    owner = f"experiment {experiment!r}: " if experiment else ""
    raise RunnerError(
        f"{owner}{where} is a {type(value).__name__}, which JSON cannot hold; "
        "return numbers, strings, booleans or lists"
    )


class _Checkpointer(Callback):
    """``checkpoint.pt`` every ``every`` steps (and the :data:`INTERRUPT_ENV` test hook)."""

    def __init__(
        self,
        path: Path,
        run_dir: Path,
        every: int,
        previous_seconds: float,
        interrupt_at: int | None,
        extra: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.path, self.run_dir, self.every = path, run_dir, max(1, int(every))
        self.extra = extra
        self.previous = previous_seconds
        self.interrupt_at = interrupt_at
        self.began = time.perf_counter()

    def on_fit_start(self, solver: Any) -> None:
        self.began = time.perf_counter()

    def on_step_end(self, solver: Any) -> None:
        if solver.step % self.every == 0 or solver.step == self.interrupt_at:
            self.save(solver, seconds=self.previous + time.perf_counter() - self.began)
        if solver.step == self.interrupt_at:
            raise KeyboardInterrupt(f"{INTERRUPT_ENV}={self.interrupt_at}")

    def save(self, solver: PrimalDual, *, seconds: float, stop_reason: str | None = None) -> None:
        state = solver.state_dict()
        state["runner"] = {"fit_seconds": float(seconds), "stop_reason": stop_reason}
        if self.extra is not None:
            state["runner"].update(self.extra())
        with _writing(self.path, self.run_dir):
            save_checkpoint(state, self.path)


def violation_columns(
    constraints: Sequence[Mapping[str, Any]] | None, columns: Sequence[str]
) -> list[tuple[str, bool]]:
    """(history column, is inequality) for the columns that measure constraint violation:
    average components (signed values) and pointwise ``max_abs``. ``constraints`` is
    ``Problem.fingerprint()`` (as stored in ``config.json``)."""
    kinds = {c["name"]: c["kind"] for c in constraints or []}
    found = []
    for col in columns:
        if not col.startswith("violation/") or col.endswith("/mean_abs"):
            continue
        name = col[len("violation/") :].split("/")[0].split("[")[0]
        found.append((col, kinds.get(name) == "inequality"))
    return found


def worst_violation(row: Mapping[str, float], columns: Sequence[tuple[str, bool]]) -> float:
    """max over components of |violation| (equalities) and [violation]₊ (inequalities)."""
    worst = 0.0
    for col, inequality in columns:
        v = row.get(col, math.nan)
        if math.isnan(v):
            continue
        worst = max(worst, max(v, 0.0) if inequality else abs(v))
    return worst


class _Progress(Callback):
    """tqdm bar (steps, objective, max violation, ETA) plus a line in ``log.txt`` every 10%."""

    def __init__(
        self,
        total: int | None,
        show: bool,
        desc: str,
        log: RunLog,
        solver: PrimalDual,
        file: IO[str] | None,
    ) -> None:
        self.total, self.show, self.desc, self.log, self.file = total, show, desc, log, file
        self.bar: Any = None
        self.columns = violation_columns(solver.problem.fingerprint(), solver.history.columns)
        self.every = max(1, (total or 1000) // 200)
        self.milestone = max(1, (total or 1000) // 10)
        self.began = time.perf_counter()

    def on_fit_start(self, solver: Any) -> None:
        self.began = time.perf_counter()
        if self.show:
            from tqdm import tqdm

            self.bar = tqdm(
                total=self.total,
                initial=solver.step,
                desc=self.desc,
                unit="step",
                file=self.file or sys.stderr,
                dynamic_ncols=True,
                leave=False,
            )

    def _status(self, solver: PrimalDual) -> tuple[float, float]:
        row = solver.latest()
        return row.get("objective", math.nan), worst_violation(row, self.columns)

    def on_step_end(self, solver: Any) -> None:
        step = solver.step
        if self.bar is not None:
            self.bar.update(1)
            if step % self.every == 0:
                objective, worst = self._status(solver)
                self.bar.set_postfix(
                    {"obj": f"{objective:.4g}", "max viol": f"{worst:.3g}"}, refresh=False
                )
        if step % self.milestone == 0:
            objective, worst = self._status(solver)
            of = f"/{self.total}" if self.total else ""
            self.log.write(
                f"step {step}{of}: objective {objective:.6g}, max violation "
                f"{worst:.3g}, {time.perf_counter() - self.began:.1f}s"
            )

    def on_fit_end(self, solver: Any, result: FitResult) -> None:
        if self.bar is not None:
            # A short run can end inside tqdm's refresh interval; draw the final state once.
            if solver.latest():
                objective, worst = self._status(solver)
                self.bar.set_postfix({"obj": f"{objective:.4g}", "max viol": f"{worst:.3g}"})
            self.bar.close()
            self.bar = None


# ---------------------------------------------------------------------------- reading
def read_run(path: str | os.PathLike[str]) -> RunRecord:
    """Read one run directory (``config.json``, and ``metrics.json`` when complete)."""
    path = Path(path)
    if not path.is_dir():
        raise RunnerError(f"{path}: no such directory")
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise RunnerError(
            f"{path} is not a run directory (no {CONFIG_FILE}); pass a directory "
            "written by `eclearn run` (DIR/seed-<n>) or a folder holding them"
        )
    info = _read_json(config_path)
    if not isinstance(info, dict) or not {"experiment", "seed", "config"} <= set(info):
        raise RunnerError(
            f"{config_path} is not an eclearn run config (needs experiment, seed and config)"
        )
    metrics = None
    if (path / METRICS_FILE).is_file():
        metrics = _read_json(path / METRICS_FILE)
        if not isinstance(metrics, dict):
            raise RunnerError(f"{path / METRICS_FILE} is not a JSON object")
    config = dict(info.pop("config"))
    label = str(info.get("label") or config.get("formulation") or info["experiment"])
    return RunRecord(
        path=path,
        experiment=str(info["experiment"]),
        seed=int(info["seed"]),
        label=label,
        config=config,
        metrics=metrics,
        info=info,
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise RunnerError(
            f"{path} is not valid JSON ({err}); the run directory is damaged"
        ) from None
    except OSError as err:
        raise RunnerError(f"{path}: cannot read ({err.strerror})") from None


def find_runs(paths: Sequence[str | os.PathLike[str]]) -> list[RunRecord]:
    """Run directories given directly or found (recursively) below the given folders."""
    found: dict[Path, RunRecord] = {}
    for given in paths:
        path = Path(given)
        if not path.exists():
            raise RunnerError(f"{path}: no such directory")
        if (path / CONFIG_FILE).is_file():
            dirs = [path]
        elif path.is_dir():
            dirs = sorted({p.parent for p in path.rglob(CONFIG_FILE)})
            if not dirs:
                raise RunnerError(
                    f"{path} holds no run directories (no {CONFIG_FILE} below it); "
                    "pass directories written by `eclearn run`"
                )
        else:
            raise RunnerError(
                f"{path} is not a run directory; pass a directory written by `eclearn run`"
            )
        for d in dirs:
            key = d.resolve()
            if key not in found:
                found[key] = read_run(d)
    return list(found.values())
