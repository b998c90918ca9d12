"""What the CLI tests share: running ``eclearn`` in this process with captured output, its
error lines, and the fixtures that isolate a test in a temporary folder and skip figures."""

from __future__ import annotations

import contextlib
import io

import pytest

from eclearn.cli import main
from eclearn.experiments.runner import INTERRUPT_ENV
from eclearn.experiments.toy import ToyExperiment


def run_cli(*args: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("eclearn: error: ")]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(INTERRUPT_ENV, raising=False)


@pytest.fixture
def no_figures(monkeypatch):
    """Skip figure rendering (the slow part) in tests that do not look at figures."""
    monkeypatch.setattr("eclearn.report.figures.run_figures", lambda *a, **k: [])
    monkeypatch.setattr(ToyExperiment, "figures", lambda self, *a, **k: [])
