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
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import Tensor

from eclearn import __version__
from eclearn import selection as select
from eclearn._io import CheckpointError, atomic_write_text, load_checkpoint
from eclearn._rng import seed_everything
from eclearn.certify import certify
from eclearn.datafiles import DataNotFoundError
from eclearn.distributed import ShardedBatches
from eclearn.experiments import registry
from eclearn.experiments.base import Experiment, ExperimentConfig, RunContext, Setup
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
from eclearn.experiments.rundir import (
    CERTIFICATE_FILE,
    CHECKPOINT_FILE,
    CONFIG_FILE,
    FIGURE_DIR,
    HISTORY_FILE,
    LOCK_FILE,
    LOG_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    MULTIPLIERS_FILE,
    OwnedFiles,
    RunLock,
    check_not_in_use,
    find_runs,
    guarded,
    read_run,
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
]

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
        assert isinstance(config, ExperimentConfig)
        memory = memory_problem(cls, config, label)
        if memory and memory not in problems:
            problems.append(memory)
            continue
        base = out_dir / label if label else out_dir
        for seed in seed_list:
            runs.append(
                RunSpec(
                    experiment,
                    config,
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
    memory = memory_problem(cls, config, "")
    if memory:
        raise ConfigError(memory)
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


MEMORY_SHARE = 0.8
"""The share of the memory available now that a run's estimated sizes may claim."""


def available_memory() -> float:
    """Bytes of memory available to a new process now (``MemAvailable`` on Linux, else
    the physical memory)."""
    with suppress(OSError, ValueError), open("/proc/meminfo", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    with suppress(OSError, ValueError, AttributeError):
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    return math.inf


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} PB"


def memory_problem(cls: type[Experiment], config: ExperimentConfig, label: str) -> str:
    """'' when the experiment's :meth:`~Experiment.memory_estimate` fits in
    :data:`MEMORY_SHARE` of the available memory; otherwise one line naming the keys."""
    estimate = {k: float(v) for k, v in cls.memory_estimate(config).items() if v > 0}
    total = sum(estimate.values())
    limit = MEMORY_SHARE * available_memory()
    if not estimate or total <= limit:
        return ""
    top = sorted(estimate.items(), key=lambda kv: -kv[1])
    named = ", ".join(f"{k}={getattr(config, k, '?')!r} (~{_bytes(v)})" for k, v in top[:3])
    where = f" [{label}]" if label else ""
    return (
        f"{cls.name}{where}: the sizes need about {_bytes(total)} of memory ({named}) but "
        f"{_bytes(limit / MEMORY_SHARE)} is available; lower {top[0][0]} (checked before "
        "training, so no time is lost)"
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
            if run_files(d).foreign():
                problems.append(
                    f"{d} exists and is not a run directory (no {CONFIG_FILE}); choose another "
                    "--out"
                )
            else:  # a run killed before its config.json: only eclearn's bookkeeping is left
                actions[d] = "restart"
    if problems:
        raise RunnerError(problems)
    for spec in runs:
        if spec.run_dir.is_dir() and actions[spec.run_dir] != "skip":
            check_not_in_use(spec.run_dir)
    for spec in runs:
        if spec.run_dir.is_dir() and (overwrite or actions[spec.run_dir] == "restart"):
            _clear(spec.run_dir)
        if actions[spec.run_dir] == "restart":
            actions[spec.run_dir] = "start"
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


def run_files(run_dir: Path) -> OwnedFiles:
    """The manifest of the files a run created in ``run_dir``."""
    return OwnedFiles(
        run_dir,
        what="run directory",
        then=f"continue with `eclearn run --resume {run_dir}` (the run is incomplete: no "
        f"{METRICS_FILE})",
    )


def _clear(run_dir: Path) -> None:
    """Remove the files a run created (``metrics.json`` first, so a half-cleared directory
    never looks complete); refuses when the directory holds anyone else's files."""
    run_files(run_dir).clear(first=[METRICS_FILE])


# ---------------------------------------------------------------------------- execution
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
    with guarded(run_dir, "run it again"):
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = RunLock(run_dir).acquire()
    try:
        files = run_files(run_dir)
        return _execute_locked(
            experiment, spec, resume, progress, echo, progress_file, created, files
        )
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
    files: OwnedFiles,
) -> dict[str, Any]:
    run_dir = spec.run_dir
    fresh = set() if resume else {LOG_FILE, CONFIG_FILE} - files.owned
    advice = files.then
    if not resume:
        files.then = "run it again"  # nothing to resume until config.json exists
    log = RunLog(run_dir / LOG_FILE, echo)
    holder: list[PrimalDual] = []
    try:
        files.claim(run_dir / LOG_FILE)
        if not resume:
            _write_config(spec, None, files, "run it again")
            files.then = advice
        return _run(experiment, spec, log, resume, progress, progress_file, holder, files)
    except (DataNotFoundError, RunnerError) as err:
        undo = isinstance(err, DataNotFoundError) or not (run_dir / CONFIG_FILE).is_file()
        if not resume and undo:
            log.close()
            _remove_fresh(run_dir, created, files, fresh)
        else:
            log.write(f"FAILED: {type(err).__name__}: {err}")
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


def _remove_fresh(run_dir: Path, created: list[Path], files: OwnedFiles, fresh: set[str]) -> None:
    """Undo a fresh run that failed before training (missing data): remove the files it
    created and the folders this run created, leaving nothing behind."""
    for name in fresh:
        (run_dir / name).unlink(missing_ok=True)
    if not files.owned - fresh:
        (run_dir / MANIFEST_FILE).unlink(missing_ok=True)
        (run_dir / LOCK_FILE).unlink(missing_ok=True)
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
    files: OwnedFiles,
) -> dict[str, Any]:
    run_dir = spec.run_dir
    present_at_start = files.snapshot()
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
    constraints = [
        {**c, "tolerance": solver.problem.by_name[c["name"]].tolerance}
        for c in solver.problem.fingerprint()
    ]
    _write_config(spec, constraints, files, files.then)
    checkpoint = run_dir / CHECKPOINT_FILE
    identity = run_identity(spec)
    runner_state: dict[str, Any] = {}
    if resume and checkpoint.exists():
        runner_state = _load(solver, checkpoint, identity)
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
        files,
        getattr(spec.config, "checkpoint_every", 500),
        previous,
        int(interrupt) if interrupt.isdigit() else None,
        identity,
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
    diagnostics = solver.diagnose(start=0)
    result = dataclasses.replace(
        result, diagnostics=diagnostics, seconds=seconds, stop_reason=reason
    )
    saver.save(solver, seconds=seconds, stop_reason=reason)
    log(result.summary())
    files.save_checkpoint(
        {k: v.detach().cpu() for k, v in result.multipliers.items()}, run_dir / MULTIPLIERS_FILE
    )
    files.claim(run_dir / HISTORY_FILE)
    with guarded(run_dir / HISTORY_FILE, files.then):
        solver.history.to_csv(run_dir / HISTORY_FILE)
    _write_figures(experiment, setup, result, files)
    selection = _apply_selection(setup, result, log)
    certificate = _certify(spec, setup, result, files, log)
    with guarded(run_dir, files.then):  # experiments may write artifacts of their own
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
    # what the experiment wrote into the run directory itself (its own artifacts)
    files.adopt(sorted(files.snapshot() - present_at_start))
    files.write_text(run_dir / METRICS_FILE, text)
    log(f"complete: {run_dir / METRICS_FILE}")
    return record


def _write_figures(
    experiment: Experiment, setup: Setup, result: FitResult, files: OwnedFiles
) -> None:
    """The training figures and the experiment's own, drawn in a staging folder and then
    moved into ``figures/`` (a user's file of the same name is never replaced)."""
    from eclearn.report.figures import run_figures

    solver = setup.solver
    figure_dir = files.mkdir(files.folder / FIGURE_DIR)
    with files.staging() as staging, guarded(figure_dir, files.then):
        run_figures(solver.history, solver.problem.fingerprint(), staging)
        experiment.figures(setup, result, staging)
        made = sorted(p for p in staging.rglob("*") if p.is_file())
        files.install(made, staging, figure_dir)
    if not any(figure_dir.iterdir()):
        figure_dir.rmdir()


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
    spec: RunSpec, setup: Setup, result: FitResult, files: OwnedFiles, log: RunLog
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
    files.write_text(files.folder / CERTIFICATE_FILE, text)
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


CHECKPOINT_FORMAT = 1
"""Version of the runner's part of ``checkpoint.pt`` (``state["runner"]``)."""


def run_identity(spec: RunSpec) -> dict[str, Any]:
    """What a checkpoint belongs to: the experiment, the seed, and the resolved config
    without the budget keys a resume may change (with its SHA-256, for a quick compare)."""
    import hashlib

    cls = registry.experiment_class(spec.experiment)
    config = {
        k: v for k, v in spec.config.model_dump(mode="json").items() if k not in cls.budget_keys
    }
    text = json.dumps(
        {"experiment": spec.experiment, "seed": spec.seed, "config": config}, sort_keys=True
    )
    return {
        "format": CHECKPOINT_FORMAT,
        "experiment": spec.experiment,
        "seed": spec.seed,
        "config": json.dumps(config, sort_keys=True),
        "config_sha256": hashlib.sha256(text.encode()).hexdigest(),
    }


def _identity_mismatch(stored: Mapping[str, Any], identity: Mapping[str, Any]) -> str:
    """'' when a checkpoint's identity is this run's; else the differing keys, in words."""
    if stored.get("config_sha256") == identity["config_sha256"]:
        return ""
    if stored.get("format") != identity["format"]:
        return (
            f"checkpoint format {stored.get('format')!r}; this eclearn writes {CHECKPOINT_FORMAT}"
        )
    diffs = [
        f"{key}: {stored.get(key)!r} → {identity[key]!r}"
        for key in ("experiment", "seed")
        if stored.get(key) != identity[key]
    ]
    try:
        theirs = json.loads(str(stored.get("config")))
    except ValueError:
        theirs = {}
    if not isinstance(theirs, dict):
        theirs = {}
    for key, (a, b) in changed_keys(theirs, json.loads(identity["config"])).items():
        diffs.append(f"{key}: {a!r} → {b!r}")
    return "; ".join(diffs) or "the config hash differs"


def _load(solver: PrimalDual, path: Path, identity: Mapping[str, Any]) -> dict[str, Any]:
    """Load ``checkpoint.pt`` into ``solver`` after checking it is this run's (config,
    seed, format); returns the runner's own state (time trained, stop reason)."""
    try:
        state = load_checkpoint(path, map_location=solver.device)
    except CheckpointError as err:
        raise RunnerError(
            f"{err}; then `eclearn run --resume {path.parent}` starts the run over"
        ) from None
    if not isinstance(state, dict) or not isinstance(state.get("runner"), dict):
        raise RunnerError(
            f"{path} is not an eclearn run checkpoint (no runner state in it); delete it to "
            f"start the run over with `eclearn run --resume {path.parent}`"
        )
    runner_state = dict(state.pop("runner"))
    stored = runner_state.get("identity")
    if isinstance(stored, dict):
        mismatch = _identity_mismatch(stored, identity)
        if mismatch:
            raise RunnerError(
                f"{path} belongs to another run ({mismatch}); it cannot continue this one: "
                f"move it back to its own run directory, or delete it to start {path.parent} "
                "over"
            )
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


def _write_config(
    spec: RunSpec, constraints: list[dict[str, Any]] | None, files: OwnedFiles, then: str
) -> None:
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
    path = spec.run_dir / CONFIG_FILE
    files.claim(path)
    with guarded(path, then):
        atomic_write_text(path, json.dumps(info, indent=2) + "\n")


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
    """``checkpoint.pt`` every ``every`` steps (and the :data:`INTERRUPT_ENV` test hook),
    stamped with the run's identity (:func:`run_identity`)."""

    def __init__(
        self,
        path: Path,
        files: OwnedFiles,
        every: int,
        previous_seconds: float,
        interrupt_at: int | None,
        identity: Mapping[str, Any],
    ) -> None:
        self.path, self.files, self.every = path, files, max(1, int(every))
        self.identity = dict(identity)
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
        state["runner"] = {
            "fit_seconds": float(seconds),
            "stop_reason": stop_reason,
            "identity": self.identity,
        }
        self.files.save_checkpoint(state, self.path)


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
        return row.get("objective", math.nan), solver.history.schema.worst_of(row)

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
