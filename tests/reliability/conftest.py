"""Shared pieces of the reliability suite: a small toy run through the real CLI (in this
process or as a subprocess that can be killed), and the comparison of two run
directories' results bit for bit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from eclearn.experiments.runner import INTERRUPT_ENV
from tests import cli_helpers
from tests.cli_helpers import errors, run_cli  # noqa: F401 (re-exported to the suite)

_isolated = cli_helpers._isolated  # autouse: each test in its own folder
no_figures = cli_helpers.no_figures

SMALL = [
    "--set",
    "n_train=512",
    "--set",
    "n_test=512",
    "--set",
    "batch_size=64",
    "--set",
    "epochs=6",
    "--set",
    "checkpoint_every=4",
    "--no-progress",
]


def trials(default: int) -> int:
    """How many random trials a reliability test runs: ``default`` in CI, more with
    ``ECLEARN_RELIABILITY_TRIALS=N`` (e.g. for docs/results/reliability.md)."""
    return int(os.environ.get("ECLEARN_RELIABILITY_TRIALS", default))


def one_error_line(code: int, stderr: str) -> str:
    """Assert the CLI failed with exit 2 and exactly one error line (no traceback)."""
    assert code == 2, stderr
    lines = errors(stderr)
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr, stderr
    assert all(ch == "\t" or ch >= " " for ch in lines[0]), repr(lines[0])
    return lines[0]


def cli_subprocess(*args: object, cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(INTERRUPT_ENV, None)
    return subprocess.Popen(
        [sys.executable, "-m", "eclearn", *map(str, args)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def results_of(run_dir: Path) -> dict[str, object]:
    """What a finished run produced, minus wall times: metrics, history bytes, tensors."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics.pop("fit_seconds")
    multipliers = torch.load(run_dir / "multipliers.pt", weights_only=True)
    model = torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]
    return {
        "metrics": metrics,
        "history": (run_dir / "history.csv").read_bytes(),
        "multipliers": {k: v.tolist() for k, v in multipliers.items()},
        "model": {k: v.tolist() for k, v in model.items()},
    }
