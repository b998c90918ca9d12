"""``eclearn`` end to end on the built-in toy experiment (in-process through ``cli.main``)."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import eclearn._io
from eclearn.experiments.runner import INTERRUPT_ENV
from eclearn.experiments.toy import ToyExperiment
from eclearn.report.tables import summarize
from tests import cli_helpers
from tests.cli_helpers import errors, run_cli

_isolated = cli_helpers._isolated  # autouse: each test in its own folder
no_figures = cli_helpers.no_figures

# 4 steps per epoch; converges to ~1% of the exact solution in 60 epochs.
CONVERGING = [
    "--set",
    "n_train=1024",
    "--set",
    "n_test=2048",
    "--set",
    "batch_size=256",
    "--set",
    "epochs=60",
    "--no-progress",
]
# 8 steps per epoch, 48 steps, checkpoints every 8 steps: for runner mechanics, not accuracy.
QUICK = [
    "--set",
    "n_train=512",
    "--set",
    "n_test=512",
    "--set",
    "batch_size=64",
    "--set",
    "epochs=6",
    "--set",
    "checkpoint_every=8",
    "--no-progress",
]
RUN_FILES = [
    "config.json",
    "history.csv",
    "metrics.json",
    "multipliers.pt",
    "checkpoint.pt",
    "log.txt",
]


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory) -> tuple[Path, str]:
    """Two seeds of the toy preset (with figures), shared by the read-only tests below."""
    out = tmp_path_factory.mktemp("toy") / "runs"
    code, stdout, stderr = run_cli("run", "toy", "--out", out, "--seed", "0", "1", *CONVERGING)
    assert code == 0, stderr
    return out, stdout


def metrics_of(path: Path) -> dict:
    return json.loads((path / "metrics.json").read_text())


# ---------------------------------------------------------------------------- list / help
def test_list_shows_presets_and_experiments():
    code, out, _ = run_cli("list")
    assert code == 0
    lines = out.splitlines()
    assert any(re.match(r"^\s+toy\s+toy\s+\S", line) for line in lines)
    assert any(re.match(r"^\s+toy-sweep\s+toy\s+\S", line) for line in lines)
    assert lines[0].startswith("presets") and any(ln.startswith("experiments") for ln in lines)


def test_no_command_and_help():
    code, _, err = run_cli()
    assert code == 2 and "usage: eclearn" in err
    code, out, _ = run_cli("run", "--help")
    assert code == 0 and "--resume RUN_DIR" in out


def test_python_m_eclearn_list_imports_no_application_dependencies():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "eclearn", "list"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "toy-sweep" in proc.stdout
    imported = {
        line.rsplit("|", 1)[-1].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:")
    }
    for heavy in ("pandas", "sklearn", "matplotlib", "eclearn.experiments.toy"):
        assert heavy not in imported, f"`eclearn list` imported {heavy}"


# ---------------------------------------------------------------------------- run
def test_run_writes_the_run_directory_contract(toy_runs):
    out, _ = toy_runs
    for seed in (0, 1):
        d = out / f"seed-{seed}"
        for name in RUN_FILES:
            assert (d / name).is_file(), name
        figures = sorted(p.name for p in (d / "figures").glob("*.png"))
        assert figures == ["multipliers.png", "objective.png", "toy-solution.png", "violations.png"]
        config = json.loads((d / "config.json").read_text())
        assert config["experiment"] == "toy" and config["seed"] == seed
        assert config["preset"] == "toy" and config["eclearn_version"]
        assert config["config"]["n_train"] == 1024 and config["config"]["epochs"] == 60
        assert [c["name"] for c in config["constraints"]] == ["group_mean", "moment"]
        metrics = metrics_of(d)
        for key in (
            "experiment",
            "formulation",
            "seed",
            "fit_seconds",
            "steps",
            "stop_reason",
            "diagnostics",
        ):
            assert key in metrics
        assert metrics["seed"] == seed and metrics["formulation"] == "lagrangian"
        assert metrics["steps"] == 240 and metrics["stop_reason"] == "epochs"
        assert metrics["param_error"] < 0.05
        assert metrics["multiplier_error"] < 0.1
        assert metrics["train_max_violation"] < 0.02
        assert metrics["test_feasible"] is True
        assert len(metrics["kkt_multipliers"]) == 4 and metrics["kkt_multipliers"][3] > 0
        history = (d / "history.csv").read_text().splitlines()
        columns = set(history[0].split(","))
        assert {
            "step",
            "objective",
            "lagrangian",
            "violation/moment",
            "multiplier/group_mean[2]",
        } <= columns
        assert len(history) == 1 + 240
        multipliers = torch.load(d / "multipliers.pt", weights_only=True)
        assert multipliers["group_mean"].shape == (3,)
        assert multipliers["moment"].tolist() == pytest.approx(metrics["multipliers"][3:])
        checkpoint = torch.load(d / "checkpoint.pt", weights_only=True)
        assert checkpoint["counters"]["step"] == 240
        assert checkpoint["runner"]["stop_reason"] == "epochs"
        assert "complete" in (d / "log.txt").read_text()


def test_run_prints_the_aggregated_table(toy_runs):
    out, stdout = toy_runs
    values = [metrics_of(out / f"seed-{s}")["param_error"] for s in (0, 1)]
    row = next(line for line in stdout.splitlines() if line.startswith("param_error"))
    assert row.split(None, 1)[1].strip() == summarize(values)
    assert " ± " in row
    assert "toy — 2 runs" in stdout and f"eclearn report {out}" in stdout


# ---------------------------------------------------------------------------- report
def test_report_tables_match_the_metrics_and_embed_figures(toy_runs, tmp_path):
    out, _ = toy_runs
    code, stdout, stderr = run_cli("report", out, "--out", tmp_path / "rep")
    assert code == 0, stderr
    runs = [metrics_of(out / f"seed-{s}") for s in (0, 1)]
    for key in ToyExperiment.table_metrics:
        expected = summarize([m[key] for m in runs], compact=True)
        row = next(line for line in stdout.splitlines() if line.startswith(key + " "))
        assert row[len(key) :].strip() == expected, key
    md = (tmp_path / "rep" / "report.md").read_text()
    expected = summarize([m["param_error"] for m in runs])
    assert f"| param_error | {expected} |" in md
    for key in ("test_group_means", "kkt_multipliers"):  # arrays: per-component tables
        cells = [summarize([m[key][i] for m in runs]) for i in range(len(runs[0][key]))]
        assert f"| {key} | " + " | ".join(cells) + " |" in md, key
    html = (tmp_path / "rep" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 2 + 4
    assert '<img src="figures/' not in html
    assert (tmp_path / "rep" / "figures" / "toy-training.png").is_file()
    assert (tmp_path / "rep" / "figures" / "toy-comparison.png").is_file()


def test_report_defaults_to_the_common_parent_and_flags_incomplete_runs(toy_runs, tmp_path):
    out, _ = toy_runs
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "seed-1" / "metrics.json").unlink()
    code, stdout, stderr = run_cli("report", copy / "seed-0", copy / "seed-1")
    assert code == 0
    assert "seed-1 is incomplete (no metrics.json)" in stderr
    assert "--resume" in stderr
    assert "toy — 1 run" in stdout
    md = (copy / "report.md").read_text()
    assert "Incomplete runs" in md and "seed-1" in md


def test_report_rejects_what_is_not_a_run(tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli("report", tmp_path / "empty")
    assert code == 2 and "holds no run directories" in errors(err)[0]
    code, _, err = run_cli("report", tmp_path / "missing")
    assert code == 2 and "no such directory" in errors(err)[0]


# ---------------------------------------------------------------------------- sweeps
def test_sweep_from_a_config_file(no_figures, tmp_path):
    user = tmp_path / "mine.toml"
    user.write_text(
        'experiment = "toy"\nseeds = [0]\n[config]\nepochs = 3\n'
        '[sweep]\nformulation = ["lagrangian", "augmented"]\n'
    )
    code, stdout, err = run_cli("run", "--config", user, *QUICK[:-3], "--no-progress")
    assert code == 0, err
    base = Path("runs") / "mine"
    assert (base / "formulation=lagrangian" / "seed-0" / "metrics.json").is_file()
    assert (base / "formulation=augmented" / "seed-0" / "metrics.json").is_file()
    header = stdout.splitlines()[1].split()
    assert header[:3] == ["metric", "\\", "formulation"]
    assert header[3:] == ["lagrangian", "augmented"]
    config = json.loads((base / "formulation=augmented/seed-0/config.json").read_text())
    assert config["label"] == "formulation=augmented" and config["sweep_index"] == 1
    # --set fixes a swept key: the sweep over it disappears.
    code, _, err = run_cli(
        "run", "toy-sweep", "--out", "fixed", "--seed", "0", "--set", "formulation=penalty", *QUICK
    )
    assert code == 0, err
    assert [p.name for p in Path("fixed").iterdir()] == ["seed-0"]
    assert metrics_of(Path("fixed/seed-0"))["formulation"] == "penalty"


# ---------------------------------------------------------------------------- bad input
def test_config_errors_one_line_each_exit_2():
    code, out, err = run_cli(
        "run",
        "toy",
        "--set",
        "lrr=0.1",
        "--set",
        "epochs=0",
        "--set",
        "formulation=pinn",
        "--set",
        "batch_size=abc",
    )
    assert code == 2 and out == ""
    lines = errors(err)
    assert len(lines) == 4, err
    text = "\n".join(lines)
    assert "lrr (from --set lrr=0.1): unknown key (did you mean 'lr'?); allowed keys:" in text
    assert "epochs = 0 (from --set epochs=0): out of range; must be ≥ 1" in text
    assert (
        "formulation = 'pinn' (from --set formulation=pinn): not an allowed value; allowed "
        "values: 'lagrangian', 'penalty' or 'augmented'"
    ) in text
    assert "batch_size = 'abc' (from --set batch_size=abc): a string is not a number" in text
    assert not Path("runs").exists()


def test_config_file_values_are_validated_with_their_source(tmp_path):
    user = tmp_path / "bad.toml"
    user.write_text("[config]\ngroups = 9\n")
    code, _, err = run_cli("run", "toy", "--config", user)
    assert code == 2
    (line,) = errors(err)
    assert "groups (9) must be ≤ dim (4)" in line


def test_unknown_experiment_suggests_close_names():
    code, _, err = run_cli("run", "toi")
    assert code == 2
    (line,) = errors(err)
    assert "unknown experiment or preset 'toi'" in line and "did you mean 'toy'" in line


def test_existing_run_directories_are_refused_unless_overwrite(no_figures):
    assert run_cli("run", "toy", "--out", "r", *QUICK)[0] == 0
    first = metrics_of(Path("r/seed-0"))
    code, _, err = run_cli("run", "toy", "--out", "r", *QUICK)
    assert code == 2 and "already holds a complete run; pass --overwrite" in err
    code, _, err = run_cli("run", "toy", "--out", "r", "--overwrite", *QUICK)
    assert code == 0, err
    second = metrics_of(Path("r/seed-0"))
    first.pop("fit_seconds"), second.pop("fit_seconds")
    assert first == second


def test_overwrite_and_resume_of_a_run_held_by_a_live_process_are_refused(no_figures):
    """A live run holds DIR/.lock: --overwrite would delete its files under it, a second
    --resume would train it twice; both get one line naming the holder."""
    from eclearn.experiments.runner import RunLock

    assert run_cli("run", "toy", "--out", "r", *QUICK)[0] == 0
    with RunLock(Path("r/seed-0")):
        code, _, err = run_cli("run", "toy", "--out", "r", "--overwrite", *QUICK)
        assert code == 2
        (line,) = errors(err)
        assert f"in use by another eclearn process (pid {os.getpid()})" in line
        assert Path("r/seed-0/metrics.json").exists()  # nothing was deleted
    assert run_cli("run", "toy", "--out", "r", "--overwrite", *QUICK)[0] == 0


def test_write_error_is_one_line_leaves_no_metrics_and_resume_finishes(no_figures, monkeypatch):
    real = eclearn._io.atomic_write

    def full_disk(path, write):
        if Path(path).name == "metrics.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, write)

    monkeypatch.setattr(eclearn._io, "atomic_write", full_disk)
    code, out, err = run_cli("run", "toy", "--out", "w", *QUICK)
    assert code == 2 and out == ""
    (line,) = errors(err)
    assert "could not write w/seed-0/metrics.json: No space left on device" in line
    assert "eclearn run --resume w/seed-0" in line
    assert not Path("w/seed-0/metrics.json").exists()
    assert not list(Path("w/seed-0").glob(".metrics.json*"))
    monkeypatch.setattr(eclearn._io, "atomic_write", real)
    code, _, err = run_cli("run", "--resume", "w/seed-0", "--no-progress")
    assert code == 0, err
    assert "training had finished (epochs)" in err
    assert metrics_of(Path("w/seed-0"))["steps"] == 48


def test_write_error_at_the_start(no_figures, monkeypatch):
    real_atomic_write = eclearn._io.atomic_write

    def no_space(path, write):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(eclearn._io, "atomic_write", no_space)
    code, _, err = run_cli("run", "toy", "--out", "s", *QUICK)
    assert code == 2
    (line,) = errors(err)
    assert "could not write s/seed-0/" in line and "run it again" in line
    assert not Path("s/seed-0/metrics.json").exists()
    monkeypatch.setattr(eclearn._io, "atomic_write", real_atomic_write)
    code, _, err = run_cli("run", "toy", "--out", "s", *QUICK)  # the advised rerun works
    assert code == 0, err


# ---------------------------------------------------------------------------- resume
def _interrupted(out: str, at: int, monkeypatch, *extra: str) -> Path:
    monkeypatch.setenv(INTERRUPT_ENV, str(at))
    code, _, err = run_cli("run", "toy", "--out", out, *QUICK, *extra)
    monkeypatch.delenv(INTERRUPT_ENV)
    assert code == 130, err
    assert f"interrupted at step {at}" in errors(err)[0]
    return Path(out) / "seed-0"


def test_resume_after_interruption_is_bitwise_identical(no_figures, monkeypatch):
    assert run_cli("run", "toy", "--out", "full", *QUICK)[0] == 0
    # Step 20 is mid-epoch (8 batches per epoch) and not a multiple of checkpoint_every:
    # the hook checkpoints there, then raises.
    run_dir = _interrupted("cut", 20, monkeypatch)
    assert not (run_dir / "metrics.json").exists()
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["counters"]["step"] == 20
    assert "interrupted at step 20" in (run_dir / "log.txt").read_text()
    code, _, err = run_cli("report", "cut")
    assert code == 2 and "none of the given runs is complete" in err

    code, _, err = run_cli("run", "--resume", run_dir, "--no-progress")
    assert code == 0, err
    assert "at step 20 (epoch 2)" in err
    full, cut = Path("full/seed-0"), run_dir
    assert (full / "history.csv").read_bytes() == (cut / "history.csv").read_bytes()
    a = torch.load(full / "multipliers.pt", weights_only=True)
    b = torch.load(cut / "multipliers.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    a = torch.load(full / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(cut / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = metrics_of(full), metrics_of(cut)
    ma.pop("fit_seconds"), mb.pop("fit_seconds")
    assert ma == mb


def test_resume_refuses_a_changed_config_but_accepts_a_new_budget(no_figures, monkeypatch):
    run_dir = _interrupted("cut", 16, monkeypatch)
    code, _, err = run_cli("run", "--resume", run_dir, "--set", "lr=0.5")
    assert code == 2
    (line,) = errors(err)
    assert "the config no longer matches its config.json (lr: 0.1 → 0.5)" in line
    assert "only epochs, max_steps may change" in line
    code, _, err = run_cli("run", "--resume", run_dir, "--set", "epochs=7", "--no-progress")
    assert code == 0, err
    assert metrics_of(run_dir)["steps"] == 56
    assert json.loads((run_dir / "config.json").read_text())["config"]["epochs"] == 7


def test_resume_rejects_bad_targets(no_figures, tmp_path):
    (tmp_path / "plain").mkdir()
    code, _, err = run_cli("run", "--resume", tmp_path / "plain")
    assert code == 2 and "is not a run directory (no config.json)" in errors(err)[0]
    assert run_cli("run", "toy", "--out", "done", *QUICK)[0] == 0
    code, _, err = run_cli("run", "--resume", "done/seed-0")
    assert code == 2 and "is complete (metrics.json exists): nothing to resume" in err
    code, _, err = run_cli("run", "--resume", "done/seed-0", "--out", "elsewhere")
    assert code == 2


def test_an_interrupted_run_dir_is_not_silently_reused(no_figures, monkeypatch):
    _interrupted("cut", 8, monkeypatch)
    code, _, err = run_cli("run", "toy", "--out", "cut", *QUICK)
    assert code == 2 and "holds an incomplete run; continue it with `eclearn run --resume" in err


def test_continue_finishes_an_interrupted_multi_run_command(no_figures, monkeypatch):
    monkeypatch.setenv(INTERRUPT_ENV, "20")
    code, _, err = run_cli("run", "toy", "--out", "multi", "--seed", "0", "1", *QUICK)
    monkeypatch.delenv(INTERRUPT_ENV)
    assert code == 130 and "repeat it with --continue" in err
    assert not Path("multi/seed-1").exists()
    code, _, err = run_cli("run", "toy", "--out", "multi", "--seed", "0", "1", *QUICK)
    assert code == 2 and "or the whole command with --continue" in err
    code, out, err = run_cli(
        "run", "toy", "--out", "multi", "--seed", "0", "1", "--continue", *QUICK
    )
    assert code == 0, err
    assert "loaded multi/seed-0/checkpoint.pt at step 20" in err
    assert "toy — 2 runs" in out
    code, out, err = run_cli(
        "run", "toy", "--out", "multi", "--seed", "0", "1", "--continue", *QUICK
    )
    assert code == 0 and err.count("(complete: kept)") == 2 and "toy — 2 runs" in out
    code, _, err = run_cli(
        "run", "toy", "--out", "multi", "--seed", "0", "--continue", "--set", "lr=0.3", *QUICK
    )
    assert code == 2 and "holds a run with another config (lr: 0.1 → 0.3)" in err


def test_a_diverging_run_fails_with_status_1_and_stays_incomplete(no_figures):
    code, _, err = run_cli(
        "run",
        "toy",
        "--out",
        "div",
        "--set",
        "formulation=penalty",
        "--set",
        "penalty_weight=50",
        *QUICK,
    )
    assert code == 1
    (line,) = errors(err)
    assert line.startswith("eclearn: error: the run failed: step ") and "NaN or Inf" in line
    assert not Path("div/seed-0/metrics.json").exists()
    assert "FAILED: ProblemError" in Path("div/seed-0/log.txt").read_text()


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        ("epochs=true", "a boolean is not a number"),
        ('epochs="3"', "a string is not a number"),
        ("epochs=2.0", "must be an integer"),
        ("lr=inf", "finite number"),
        ("lr=nan", "finite number"),
        ("tolerance=inf", "finite number"),
    ],
)
def test_configs_that_cannot_mean_anything_are_refused_in_one_line(override, problem):
    code, _, err = run_cli("run", "toy", "--set", override, "--out", "never")
    assert code == 2
    (line,) = errors(err)
    assert problem in line and f"(from --set {override})" in line
    assert not Path("never").exists()


def test_control_characters_from_set_are_escaped():
    code, _, err = run_cli("run", "toy", "--set", "lrr=\x1b[31mred\x07", "--out", "never")
    assert code == 2
    assert "\x1b" not in err and "\x07" not in err and "\\x1b" in err
