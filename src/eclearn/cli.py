"""``eclearn`` command line: ``list``, ``run``, ``report`` (thin: it parses arguments and
calls :mod:`eclearn.experiments` and :mod:`eclearn.report`).

Exit status: 0 success; 1 a run failed inside the experiment (invalid problem, diverged
training); 2 bad input (unknown name, invalid config, missing data, not a run directory,
write error); 130 interrupted (the run can be resumed).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["build_parser", "main"]

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    from eclearn import __version__

    parser = argparse.ArgumentParser(
        prog="eclearn",
        description="Learning with statistical equality constraints: run experiments and "
        "report their results.",
    )
    parser.add_argument("--version", action="version", version=f"eclearn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    sub.add_parser(
        "list",
        help="list the registered experiments and presets",
        description="List the registered experiments and the shipped presets.",
    )

    run = sub.add_parser(
        "run",
        help="run an experiment or preset (one run directory per seed)",
        description="Run an experiment or preset: one run directory per seed (and per sweep "
        "combination), then print the result table.",
    )
    run.add_argument(
        "target",
        nargs="?",
        metavar="EXPERIMENT_OR_PRESET",
        help="a preset or experiment name (see `eclearn list`)",
    )
    run.add_argument(
        "--config",
        metavar="FILE",
        help="a TOML run file ([config], [sweep], seeds) applied over the preset",
    )
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value (TOML literal, else a string); repeatable",
    )
    run.add_argument("--out", metavar="DIR", help="output folder (default: runs/<name>)")
    run.add_argument(
        "--seed",
        dest="seeds",
        type=int,
        nargs="+",
        metavar="N",
        help="seeds to run (default: the preset's, else 0)",
    )
    run.add_argument("--device", metavar="DEVICE", help="cpu (default) or cuda")
    run.add_argument("--data", metavar="PATH", help="data file or folder (default: $ECLEARN_DATA)")
    run.add_argument(
        "--resume", metavar="RUN_DIR", help="continue an incomplete run from its last checkpoint"
    )
    run.add_argument(
        "--continue",
        dest="continue_",
        action="store_true",
        help="keep complete runs of the same config, resume incomplete ones, start the rest",
    )
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing run directories instead of refusing",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument(
        "--select",
        choices=["last", "average", "best", "mixture"],
        help="which model to report (same as --set select=RULE): the last iterate, the "
        "Polyak average, the best feasible candidate on validation data, or an LP mixture",
    )
    run.add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help="train on N local processes (torch.distributed; launched with torchrun)",
    )

    report = sub.add_parser(
        "report",
        help="aggregate run directories into tables, report.md and report.html",
        description="Aggregate run directories (mean ± std over seeds), print the table and "
        "write report.md and a self-contained report.html.",
    )
    report.add_argument(
        "paths",
        nargs="+",
        metavar="RUN_DIR",
        help="run directories or folders holding them (searched recursively)",
    )
    report.add_argument(
        "--out", metavar="DIR", help="where to write the report (default: the runs' common parent)"
    )
    return parser


def _printable(text: str) -> str:
    """Escape control characters (from ``--set`` values, file names) so that an error is
    one line and cannot drive the terminal."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _error(lines: Sequence[str] | str) -> None:
    for line in [lines] if isinstance(lines, str) else lines:
        print(f"eclearn: error: {_printable(line)}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``eclearn`` console script and ``python -m eclearn``."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:
        return int(stop.code or 0)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE

    from eclearn.datafiles import DataNotFoundError
    from eclearn.experiments.config import RunnerError
    from eclearn.problem import ProblemError

    try:
        if args.command == "list":
            return _list()
        if args.command == "run":
            return _run(args)
        return _report(args)
    except RunnerError as err:
        _error(err.lines)
        return EXIT_USAGE
    except DataNotFoundError as err:
        _error(str(err))
        return EXIT_USAGE
    except ProblemError as err:
        _error(f"the run failed: {err} (its run directory stays incomplete)")
        return EXIT_FAILED
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_INTERRUPTED
    except Exception as err:  # anything else: one line here, the traceback in log.txt
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        _error(
            f"{type(err).__name__}: {first} (unexpected; the traceback is in the run's log.txt "
            "when a run was started — please report it)"
        )
        return EXIT_USAGE


def _one_line(text: str, limit: int = 110) -> str:
    """The first sentence of a description, cut to ``limit`` characters."""
    text = " ".join(text.split())
    end = text.find(". ")
    if end > 0:
        text = text[: end + 1]
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _list() -> int:
    from eclearn.experiments import registry

    presets = registry.presets()
    names = registry.experiment_names()
    width = max([len(n) for n in [*presets, *names]] + [4])
    exp_width = max([len(p.experiment) for p in presets.values()] + [len(n) for n in names])
    print("presets (eclearn run NAME):")
    for name, preset in presets.items():
        print(
            f"  {name:<{width}}  {preset.experiment:<{exp_width}}  {_one_line(preset.description)}"
        )
    print("experiments (eclearn run NAME runs its defaults unless a preset has that name):")
    for name in names:
        print(
            f"  {name:<{width}}  {name:<{exp_width}}  "
            f"{_one_line(registry.experiment_description(name))}"
        )
    return 0


def _launch(args: argparse.Namespace) -> int:
    """Re-run this command on ``--nproc`` local processes with torch's launcher."""
    import subprocess

    if args.nproc < 1:
        _error(f"--nproc must be ≥ 1, got {args.nproc}")
        return EXIT_USAGE
    argv, skip = [], False
    for token in args.argv:
        if skip:
            skip = False
            continue
        if token == "--nproc":
            skip = True
            continue
        if token.startswith("--nproc="):
            continue
        argv.append(token)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={args.nproc}",
        "-m",
        "eclearn",
        *argv,
    ]
    return subprocess.call(command)


def _init_distributed(device: str | None) -> int:
    """Join the process group torchrun set up (WORLD_SIZE > 1); returns this rank."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        cuda = (device or "cpu").startswith("cuda")
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank()


def _shadow(spec, folder: Path, action: str):
    """A non-zero rank's private copy of a run directory: it reads the same checkpoint and
    config as rank 0 but writes nowhere that matters (rank 0 writes the run directory)."""
    import dataclasses
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    if action == "resume":
        for name in ("checkpoint.pt", "config.json"):
            if (spec.run_dir / name).exists():
                shutil.copy2(spec.run_dir / name, folder / name)
    return dataclasses.replace(spec, run_dir=folder)


def _run(args: argparse.Namespace) -> int:
    from eclearn.experiments import runner
    from eclearn.report.tables import build_tables, group_runs, render_text

    if args.nproc != 1 and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return _launch(args)
    if args.select:
        args.overrides = [*args.overrides, f"select={args.select}"]
    rank = _init_distributed(args.device)

    if args.resume:
        specs = [
            runner.plan_resume(
                args.resume,
                target=args.target,
                config_file=args.config,
                overrides=args.overrides,
                seeds=args.seeds,
                out=args.out,
                device=args.device,
                data=args.data,
            )
        ]
        out = specs[0].run_dir
        actions = {out: "resume"}
    else:
        plan = runner.plan_runs(
            args.target,
            config_file=args.config,
            overrides=args.overrides,
            seeds=args.seeds,
            out=args.out,
            device=args.device,
            data=args.data,
        )
        actions = runner.check_run_dirs(
            plan.runs, overwrite=args.overwrite, continue_=args.continue_
        )
        specs, out = plan.runs, plan.out
    if rank is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        dist.barrier()  # every rank has checked the run directories before rank 0 writes
    for i, spec in enumerate(specs, 1):
        action = actions[spec.run_dir]
        if len(specs) > 1:
            done = " (complete: kept)" if action == "skip" else ""
            runner.stderr_echo(f"[{i}/{len(specs)}] {spec.run_dir}{done}")
        if action == "skip":
            continue
        if rank != 0:
            import tempfile

            shadow_root = Path(tempfile.mkdtemp(prefix=f"eclearn-rank{rank}-"))
            spec = _shadow(spec, shadow_root / str(i), action)
        try:
            runner.execute(
                spec,
                resume=action == "resume",
                progress=not args.no_progress and rank == 0,
                echo=runner.stderr_echo if rank == 0 else None,
            )
        except runner.RunInterrupted as stop:
            _error(str(stop))
            if len(specs) > 1:
                _error("to finish all runs of this command, repeat it with --continue")
            return EXIT_INTERRUPTED
    if rank != 0:
        return 0
    records = [runner.read_run(spec.run_dir) for spec in specs]
    print(render_text(build_tables(group_runs(records), compact=True)))
    print(f"\nrun directories: {out}\nfull report:     eclearn report {out}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from eclearn.experiments import runner
    from eclearn.experiments.config import RunnerError
    from eclearn.report import build_tables, default_out_dir, group_runs, render_text, write_report

    records = runner.find_runs(args.paths)
    complete = [r for r in records if r.complete]
    for r in records:
        if not r.complete:
            print(
                f"eclearn: warning: {r.path} is incomplete (no metrics.json); resume it with "
                f"`eclearn run --resume {r.path}`",
                file=sys.stderr,
            )
    if not complete:
        raise RunnerError(
            "none of the given runs is complete (no metrics.json); finish them "
            "with `eclearn run --resume RUN_DIR`"
        )
    out = Path(args.out) if args.out else default_out_dir(complete)
    print(render_text(build_tables(group_runs(complete), compact=True)))
    try:
        files = write_report(records, out)
    except OSError as err:
        raise RunnerError(
            f"could not write the report in {out}: {err.strerror or err}; free "
            "disk space or choose another --out"
        ) from None
    print(f"\nwrote {files.markdown} and {files.html}")
    return 0
