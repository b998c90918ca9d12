"""Files that do not belong to a run: a checkpoint of another run (other learning rate,
seed, optimizer, formulation), a damaged one, and a user's own files in a run directory or
a report folder. Each is refused with one line naming the file and what differs; nothing
of the user's is replaced or deleted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from eclearn.experiments.runner import INTERRUPT_ENV

from .conftest import SMALL, one_error_line, run_cli


def _interrupted(out: str, monkeypatch, *extra: str) -> Path:
    monkeypatch.setenv(INTERRUPT_ENV, "12")
    code, _, err = run_cli("run", "toy", "--out", out, *SMALL, *extra)
    monkeypatch.delenv(INTERRUPT_ENV)
    assert code == 130, err
    return Path(out) / "seed-0"


@pytest.mark.parametrize(
    ("extra", "differs"),
    [
        (["--set", "lr=0.05"], "lr: 0.05 → 0.1"),
        (["--seed", "3"], "seed: 3 → 0"),
        (["--set", "optimizer=adam"], "optimizer: 'adam' → 'sgd'"),
        (["--set", "formulation=augmented"], "formulation: 'augmented' → 'lagrangian'"),
        (["--set", "dual_optimizer=nupi"], "dual_optimizer: 'nupi' → 'sgd'"),
        (["--set", "tolerance=0.01"], "tolerance: 0.01 → 0.05"),
    ],
)
def test_a_checkpoint_of_another_run_is_refused_naming_the_keys(
    monkeypatch, no_figures, extra, differs
):
    mine = _interrupted("mine", monkeypatch)
    _interrupted("other", monkeypatch, *extra)
    other_ckpt = next(Path("other").rglob("checkpoint.pt"))
    before = other_ckpt.read_bytes()
    shutil.copy(other_ckpt, mine / "checkpoint.pt")
    code, _, err = run_cli("run", "--resume", mine, "--no-progress")
    line = one_error_line(code, err)
    assert f"{mine / 'checkpoint.pt'} belongs to another run" in line, line
    assert differs in line, line
    assert "delete it to start" in line
    assert not (mine / "metrics.json").exists()
    assert other_ckpt.read_bytes() == before  # the other run's own file is untouched


def test_resume_with_a_changed_config_names_the_keys(monkeypatch, no_figures):
    mine = _interrupted("mine", monkeypatch)
    config = json.loads((mine / "config.json").read_text())
    config["config"]["lr"] = 0.3  # edited by hand after the checkpoint was written
    (mine / "config.json").write_text(json.dumps(config))
    code, _, err = run_cli("run", "--resume", mine, "--no-progress")
    line = one_error_line(code, err)
    assert "belongs to another run (lr: 0.1 → 0.3)" in line, line


def test_a_flipped_byte_in_the_run_checkpoint_is_refused(monkeypatch, no_figures):
    mine = _interrupted("mine", monkeypatch)
    data = bytearray((mine / "checkpoint.pt").read_bytes())
    payload = data.index(b"PK\x03\x04", 100)  # inside a later record, past its header
    data[payload + 40] ^= 0xFF
    (mine / "checkpoint.pt").write_bytes(bytes(data))
    code, _, err = run_cli("run", "--resume", mine, "--no-progress")
    line = one_error_line(code, err)
    assert "checkpoint.pt" in line and ("damaged" in line or "not an eclearn" in line), line
    assert "weights_only" not in err


def test_overwrite_never_deletes_a_users_file(monkeypatch, no_figures):
    assert run_cli("run", "toy", "--out", "r", *SMALL)[0] == 0
    mine = Path("r/seed-0/my-notes.md")
    mine.write_text("my own notes\n")
    (Path("r/seed-0/figures")).mkdir(exist_ok=True)
    (Path("r/seed-0/figures/mine.png")).write_bytes(b"not eclearn's")
    code, _, err = run_cli("run", "toy", "--out", "r", *SMALL, "--overwrite")
    line = one_error_line(code, err)
    assert "my-notes.md" in line and "did not write" in line, line
    assert mine.read_text() == "my own notes\n"
    assert Path("r/seed-0/metrics.json").exists(), "the run was damaged before the refusal"
    mine.unlink()
    Path("r/seed-0/figures/mine.png").unlink()
    code, _, err = run_cli("run", "toy", "--out", "r", *SMALL, "--overwrite")
    assert code == 0, err


def test_a_run_never_replaces_a_users_file_of_a_run_files_name(monkeypatch, no_figures):
    Path("u/seed-0").mkdir(parents=True)
    Path("u/seed-0/history.csv").write_text("user data\n")
    code, _, err = run_cli("run", "toy", "--out", "u", *SMALL)
    line = one_error_line(code, err)
    assert "u/seed-0" in line and "not a run directory" in line, line
    assert Path("u/seed-0/history.csv").read_text() == "user data\n"


def test_report_out_never_replaces_a_users_report(monkeypatch):
    assert run_cli("run", "toy", "--out", "r", *SMALL)[0] == 0
    Path("mine").mkdir()
    Path("mine/report.md").write_text("# my paper's report\n")
    code, _, err = run_cli("report", "r", "--out", "mine")
    line = one_error_line(code, err)
    assert "mine/report.md exists and was not written by eclearn" in line, line
    assert Path("mine/report.md").read_text() == "# my paper's report\n"
    assert not Path("mine/report.html").exists()

    # figures too: a user's PNG of a report figure's name stays untouched
    Path("mine/report.md").unlink()
    Path("mine/figures").mkdir()
    Path("mine/figures/toy-training.png").write_bytes(b"user figure")
    code, _, err = run_cli("report", "r", "--out", "mine")
    line = one_error_line(code, err)
    assert "toy-training.png exists and was not written by eclearn" in line, line
    assert Path("mine/figures/toy-training.png").read_bytes() == b"user figure"

    # and a folder eclearn wrote itself is rewritten freely
    Path("mine/figures/toy-training.png").unlink()
    assert run_cli("report", "r", "--out", "mine")[0] == 0
    assert run_cli("report", "r", "--out", "mine")[0] == 0


def test_a_run_killed_before_its_config_reruns_in_place(monkeypatch, no_figures):
    """What a kill between the lock and config.json leaves: only eclearn's bookkeeping."""
    d = Path("k/seed-0")
    d.mkdir(parents=True)
    (d / ".lock").write_text("12345\n")
    (d / ".eclearn-files.json").write_text('["log.txt"]\n')
    (d / "log.txt").write_text("")
    (d / ".config.json.abc.tmp").write_text("{")
    code, _, err = run_cli("run", "toy", "--out", "k", *SMALL)
    assert code == 0, err
    assert not list(d.glob(".*.tmp"))


@pytest.mark.parametrize("content", ["{not json", '{"a": 1}', "[1, 2]"])
def test_a_damaged_manifest_is_one_line_and_nothing_is_removed(monkeypatch, no_figures, content):
    assert run_cli("run", "toy", "--out", "r", *SMALL)[0] == 0
    (Path("r/seed-0") / ".eclearn-files.json").write_text(content)
    code, _, err = run_cli("run", "toy", "--out", "r", *SMALL, "--overwrite")
    line = one_error_line(code, err)
    assert ".eclearn-files.json is damaged" in line, line
    assert Path("r/seed-0/metrics.json").exists()
