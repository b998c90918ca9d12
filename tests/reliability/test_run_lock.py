"""One process per run directory: a live run holds an exclusive lock (``DIR/.lock``) that
the OS releases when the process dies (kill -9 included), so a second ``--resume`` or an
``--overwrite`` during a live run is refused with one line naming the holder's pid, and a
killed run never leaves a stale lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from eclearn.experiments.config import RunnerError
from eclearn.experiments.runner import RunLock

HOLD = """
import sys, time
from pathlib import Path
from eclearn.experiments.runner import RunLock
RunLock(Path(sys.argv[1])).acquire()
print("locked", flush=True)
time.sleep(60)
"""


def hold_in_subprocess(run_dir):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_holder_is_refused_with_the_pid(tmp_path):
    proc = hold_in_subprocess(tmp_path)
    try:
        with pytest.raises(
            RunnerError, match=f"in use by another eclearn process \\(pid {proc.pid}\\)"
        ):
            RunLock(tmp_path).acquire()
    finally:
        proc.kill()
        proc.wait()


def test_kill_9_releases_the_lock(tmp_path):
    proc = hold_in_subprocess(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 5
    while True:
        try:
            RunLock(tmp_path).acquire().release()
            break
        except RunnerError:
            assert time.monotonic() < deadline, "the lock outlived its process"
            time.sleep(0.05)
    assert (tmp_path / ".lock").exists()  # the file stays; only the lock is gone


def test_the_same_process_cannot_take_the_lock_twice(tmp_path):
    with RunLock(tmp_path), pytest.raises(RunnerError, match="in use"):
        RunLock(tmp_path).acquire()
    RunLock(tmp_path).acquire().release()
