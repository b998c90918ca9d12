"""Runner mechanics: planning, metrics, stopping rules across resume, progress, data errors."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from eclearn.cli import main
from eclearn.datafiles import resolve_data_file
from eclearn.experiments import registry, runner
from eclearn.experiments.config import ConfigError, Layer, RunnerError, build_config
from eclearn.experiments.toy import ToyExperiment
from eclearn.solver import StoppingRule

SMALL = {"n_train": 512, "n_test": 512, "batch_size": 64, "epochs": 6, "checkpoint_every": 8}


class StoppingToy(ToyExperiment):
    """The toy problem with a stopping rule that fires at its first check after 30 steps."""

    def setup(self, config, context):
        setup = super().setup(config, context)
        setup.stopping = StoppingRule(
            tolerance=10.0, window=4, lagrangian_rtol=10.0, min_steps=30, check_every=4
        )
        return setup


class DataHungry(ToyExperiment):
    def setup(self, config, context):
        resolve_data_file(
            "demo/data.csv",
            context.data_path,
            what="the demo data",
            how_to_get="Download it from https://example.org/demo.",
        )
        raise AssertionError("unreachable")


class NoBudget(ToyExperiment):
    def setup(self, config, context):
        setup = super().setup(config, context)
        setup.epochs = setup.max_steps = None
        return setup


class BadMetrics(ToyExperiment):
    def metrics(self, setup, result, context):
        return {"model": object()}


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(runner.INTERRUPT_ENV, raising=False)
    monkeypatch.setattr(registry, "_EXPERIMENTS", dict(registry._EXPERIMENTS))
    for name, cls in [
        ("stop-toy", StoppingToy),
        ("data-hungry", DataHungry),
        ("no-budget", NoBudget),
        ("bad-metrics", BadMetrics),
    ]:
        registry.register(name, f"{__name__}:{cls.__name__}")
    monkeypatch.setattr("eclearn.report.figures.run_figures", lambda *a, **k: [])
    monkeypatch.setattr(ToyExperiment, "figures", lambda self, *a, **k: [])


def spec(experiment: str = "toy", run_dir: str = "r/seed-0", **values) -> runner.RunSpec:
    cls = registry.experiment_class(experiment)
    config = build_config(cls.Config, [Layer("test", {**SMALL, **values})])
    return runner.RunSpec(experiment, config, 0, Path(run_dir))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- planning
def test_plan_lays_out_seeds_and_sweeps():
    plan = runner.plan_runs("toy-sweep", seeds=[4, 5])
    assert plan.out == Path("runs/toy-sweep")
    dirs = [str(s.run_dir) for s in plan.runs]
    assert dirs[:2] == [
        "runs/toy-sweep/formulation=lagrangian/seed-4",
        "runs/toy-sweep/formulation=lagrangian/seed-5",
    ]
    assert len(dirs) == 6 and [s.sweep_index for s in plan.runs] == [0, 0, 1, 1, 2, 2]
    assert plan.runs[2].config.formulation == "penalty"  # type: ignore[attr-defined]
    plan = runner.plan_runs("toy")
    assert [str(s.run_dir) for s in plan.runs] == ["runs/toy/seed-0"]
    assert plan.runs[0].preset == "toy" and plan.runs[0].label == ""


def test_plan_validates_every_sweep_combination_once(tmp_path):
    user = tmp_path / "s.toml"
    user.write_text('[sweep]\nlr = [0.1, -1.0]\nformulation = ["lagrangian", "pinn"]\n')
    with pytest.raises(ConfigError) as info:
        runner.plan_runs("toy", config_file=user)
    lines = info.value.lines
    assert len(lines) == 2
    assert "lr = -1.0 (from [sweep] lr=-1.0): out of range; must be > 0.0" in lines
    assert any("'pinn'" in line and "allowed values" in line for line in lines)


def test_plan_rejects_repeated_seeds_and_a_mismatched_config_file(tmp_path):
    with pytest.raises(ConfigError, match="repeats a seed"):
        runner.plan_runs("toy", seeds=[1, 1])
    user = tmp_path / "other.toml"
    user.write_text('experiment = "stop-toy"\n')
    with pytest.raises(ConfigError, match="experiment = 'stop-toy', but 'toy' runs"):
        runner.plan_runs("toy", config_file=user)
    with pytest.raises(RunnerError, match="name an experiment or preset"):
        runner.plan_runs(None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_usage_error():
    with pytest.raises(RunnerError, match="CUDA is not available"):
        runner.plan_runs("toy", device="cuda")


# ---------------------------------------------------------------------------- metrics
def test_metrics_are_plain_json():
    value = {
        "t": torch.tensor([1.0, float("nan")]),
        "s": torch.tensor(2),
        "n": np.float32(0.5),
        "a": np.arange(2),
        "inf": math.inf,
        "nested": {"p": Path("x")},
        "flag": True,
    }
    assert runner._jsonable(value, "metrics") == {
        "t": [1.0, None],
        "s": 2,
        "n": 0.5,
        "a": [0, 1],
        "inf": None,
        "nested": {"p": "x"},
        "flag": True,
    }
    with pytest.raises(RunnerError, match=r"metrics\['m'\] is a object"):
        runner._jsonable(object(), "metrics['m']")


def test_bad_metrics_and_missing_budget_are_reported():
    with pytest.raises(RunnerError, match="JSON cannot hold"):
        runner.execute(spec("bad-metrics"), progress=False, echo=None)
    assert not Path("r/seed-0/metrics.json").exists()
    with pytest.raises(RunnerError, match="neither epochs nor max_steps"):
        runner.execute(spec("no-budget", "q/seed-0"), progress=False, echo=None)


# ---------------------------------------------------------------------------- resume
def test_stopping_rules_count_from_the_run_start_across_resume(monkeypatch):
    full = runner.execute(spec("stop-toy", "a/seed-0"), progress=False, echo=None)
    assert full["stop_reason"] == "converged" and full["steps"] == 32
    monkeypatch.setenv(runner.INTERRUPT_ENV, "12")
    with pytest.raises(runner.RunInterrupted):
        runner.execute(spec("stop-toy", "b/seed-0"), progress=False, echo=None)
    monkeypatch.delenv(runner.INTERRUPT_ENV)
    resumed = runner.execute(runner.plan_resume("b/seed-0"), resume=True, progress=False, echo=None)
    full.pop("fit_seconds"), resumed.pop("fit_seconds")
    assert resumed == full
    assert Path("a/seed-0/history.csv").read_bytes() == Path("b/seed-0/history.csv").read_bytes()


def test_resume_without_a_checkpoint_starts_over(monkeypatch):
    monkeypatch.setenv(runner.INTERRUPT_ENV, "3")
    with pytest.raises(runner.RunInterrupted):
        runner.execute(spec(checkpoint_every=100), progress=False, echo=None)
    monkeypatch.delenv(runner.INTERRUPT_ENV)
    Path("r/seed-0/checkpoint.pt").unlink()
    messages: list[str] = []
    metrics = runner.execute(
        runner.plan_resume("r/seed-0"), resume=True, progress=False, echo=messages.append
    )
    assert metrics["steps"] == 48
    assert any("no checkpoint.pt yet" in m for m in messages)


def test_damaged_checkpoint_is_a_usage_error(monkeypatch):
    monkeypatch.setenv(runner.INTERRUPT_ENV, "8")
    with pytest.raises(runner.RunInterrupted):
        runner.execute(spec(), progress=False, echo=None)
    Path("r/seed-0/checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RunnerError, match="damaged"):
        runner.execute(runner.plan_resume("r/seed-0"), resume=True, progress=False, echo=None)


# ---------------------------------------------------------------------------- progress, data
def test_progress_bar_shows_steps_objective_and_violation():
    stream = io.StringIO()
    runner.execute(spec(), progress=True, echo=None, progress_file=stream)
    text = stream.getvalue()
    assert "/48" in text and "obj=" in text and "max viol=" in text
    log = Path("r/seed-0/log.txt").read_text()
    assert "step 48/48: objective" in log


def test_missing_data_is_one_line_and_leaves_nothing(capsys):
    code = main(["run", "data-hungry", "--out", "d", "--no-progress"])
    assert code == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("eclearn: error")]
    assert len(err) == 1 and err[0].startswith("eclearn: error: the demo data not found")
    assert "https://example.org/demo" in err[0] and "--data PATH" in err[0]
    assert not Path("d").exists()


def test_find_runs_recurses_and_deduplicates():
    runner.execute(spec(run_dir="top/a/seed-0"), progress=False, echo=None)
    runner.execute(spec(run_dir="top/b/seed-0", formulation="augmented"), progress=False, echo=None)
    found = runner.find_runs(["top", "top/a/seed-0"])
    assert sorted(r.label for r in found) == ["augmented", "lagrangian"]
    record = runner.read_run("top/b/seed-0")
    assert record.complete and record.metrics["formulation"] == "augmented"
    assert json.loads(Path("top/b/seed-0/config.json").read_text())["seed"] == 0
