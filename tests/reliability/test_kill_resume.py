"""``kill -9`` at random moments of a run, then the advised command: the finished run is
bit-identical to one that was never interrupted (history, multipliers, model, metrics).

A kill can land anywhere: during the imports, before ``config.json`` (then a plain rerun
starts over in the same folder), mid-training or mid-checkpoint (``--resume``), while
figures or ``metrics.json`` are written. Three trials in CI; ``ECLEARN_RELIABILITY_TRIALS``
runs more (see docs/results/reliability.md).
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest

from .conftest import SMALL, cli_subprocess, results_of, run_cli, trials

LONGER = [*SMALL, "--set", "epochs=30"]


def _finish(run_dir: Path) -> str:
    """Bring a killed run to completion the way its messages advise; returns the path taken."""
    if (run_dir / "metrics.json").exists():
        return "complete"
    if (run_dir / "config.json").exists():
        code, _, err = run_cli("run", "--resume", run_dir, "--no-progress")
        assert code == 0, err
        return "resumed"
    code, _, err = run_cli("run", "toy", "--out", run_dir.parent, *LONGER)
    assert code == 0, err
    return "rerun"


@pytest.mark.reliability
def test_kill_9_at_random_moments_then_resume_is_bitwise(tmp_path, no_figures):
    began = time.perf_counter()
    reference = cli_subprocess("run", "toy", "--out", "reference", *LONGER, cwd=tmp_path)
    _, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err
    duration = time.perf_counter() - began
    expected = results_of(tmp_path / "reference" / "seed-0")

    rng = random.Random(0)
    paths = []
    for trial in range(trials(3)):
        out = tmp_path / f"killed-{trial}"
        proc = cli_subprocess("run", "toy", "--out", out, *LONGER, cwd=tmp_path)
        time.sleep(rng.uniform(0.2, 1.1) * duration)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        paths.append(_finish(out / "seed-0"))
        assert results_of(out / "seed-0") == expected, f"trial {trial} ({paths[-1]})"
    print("paths taken:", {p: paths.count(p) for p in set(paths)})
