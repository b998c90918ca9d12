"""Sizes that cannot fit in memory are refused when the run is planned (one line naming
the largest keys), not after training; the defaults of every experiment pass."""

from __future__ import annotations

import pytest

from eclearn.experiments import registry, runner

from .conftest import one_error_line, run_cli


@pytest.mark.parametrize(
    ("target", "setting", "key"),
    [
        ("toy", "n_train=100000000000", "n_train"),
        ("convection", "heldout_points=1000000000000", "heldout_points"),
        ("interpolation", "batch_size=10000000", "batch_size"),
        ("interpolation", "bootstrap_resamples=1000000000", "bootstrap_resamples"),
    ],
)
def test_impossible_sizes_are_refused_before_training(target, setting, key, tmp_path):
    code, _, err = run_cli("run", target, "--set", setting, "--out", tmp_path / "m")
    line = one_error_line(code, err)
    assert f"lower {key}" in line and "of memory" in line, line
    assert not (tmp_path / "m").exists(), "nothing may be written for a refused plan"


@pytest.mark.parametrize("name", ["toy", "convection", "interpolation"])
def test_defaults_fit_and_the_estimate_scales_with_the_key(name, monkeypatch):
    cls = registry.experiment_class(name)
    config = cls.Config()
    assert runner.memory_problem(cls, config, "") == ""
    monkeypatch.setattr(runner, "available_memory", lambda: 1.0)  # a machine with 1 byte
    assert "of memory" in runner.memory_problem(cls, config, "")
