"""A full disk at every write of a run: each failure is one line with exit 2 that names
the file and the fix, and following that advice after space is freed finishes the run
with the same results as a run that never failed."""

from __future__ import annotations

import errno
import os
from collections import Counter
from pathlib import Path

import pytest

import eclearn._io

from .conftest import SMALL, one_error_line, results_of, run_cli


class Disk:
    """``atomic_write`` that fails with ENOSPC from its ``fail_at``-th call on (the disk
    stays full until :meth:`free`)."""

    def __init__(self, real, fail_at: int) -> None:
        self.real, self.fail_at, self.calls, self.full = real, fail_at, 0, False

    def __call__(self, path, write):
        self.calls += 1
        if self.full or self.calls > self.fail_at:
            self.full = True
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return self.real(path, write)


def _writes_of_one_run(monkeypatch) -> int:
    counter = Disk(eclearn._io.atomic_write, 10**9)
    monkeypatch.setattr(eclearn._io, "atomic_write", counter)
    assert run_cli("run", "toy", "--out", "count", *SMALL)[0] == 0
    monkeypatch.setattr(eclearn._io, "atomic_write", counter.real)
    return counter.calls


def _follow(line: str, out: str) -> None:
    if "--resume" in line:
        run_dir = line.split("eclearn run --resume ")[1].split("`")[0]
        code, _, err = run_cli("run", "--resume", run_dir, "--no-progress")
    else:
        assert "run it again" in line, line
        code, _, err = run_cli("run", "toy", "--out", out, *SMALL)
    assert code == 0, err


def test_disk_full_at_every_write_then_the_advice_finishes_the_run(monkeypatch, no_figures):
    real = eclearn._io.atomic_write
    writes = _writes_of_one_run(monkeypatch)
    expected = results_of(Path("count/seed-0"))
    assert writes > 10
    advice: list[str] = []
    for k in range(writes):
        out = f"full-{k}"
        disk = Disk(real, k)
        monkeypatch.setattr(eclearn._io, "atomic_write", disk)
        code, _, err = run_cli("run", "toy", "--out", out, *SMALL)
        line = one_error_line(code, err)
        assert "No space left on device" in line and "free disk space" in line
        assert not list(Path(out).rglob(".*.tmp")), "a temporary file was left behind"
        monkeypatch.setattr(eclearn._io, "atomic_write", real)  # space freed
        _follow(line, out)
        assert results_of(Path(out) / "seed-0") == expected, f"failure at write {k}: {line}"
        advice.append("--resume" if "--resume" in line else "run it again")
    print(f"disk full at each of {writes} writes: {dict(Counter(advice))}")


@pytest.mark.parametrize("name", ["log.txt"])
def test_a_log_that_cannot_be_written_never_stops_a_run(monkeypatch, no_figures, name):
    """log.txt is appended directly (not atomically); failing appends are skipped."""
    import builtins

    real_open = builtins.open

    def failing_open(file, mode="r", *args, **kwargs):
        if str(file).endswith(name) and "a" in mode:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", failing_open)
    code, _, err = run_cli("run", "toy", "--out", "nolog", *SMALL)
    assert code == 0, err
