"""Experiment registry and the shipped presets."""

from __future__ import annotations

import pytest

from eclearn.experiments import registry
from eclearn.experiments.config import ConfigError, Layer, RunnerError, build_config
from eclearn.experiments.config import sweep_combinations as combos
from eclearn.experiments.toy import ToyExperiment


@pytest.fixture
def scratch_registry(monkeypatch):
    monkeypatch.setattr(registry, "_EXPERIMENTS", dict(registry._EXPERIMENTS))


def test_toy_is_registered_and_imported_lazily():
    assert "toy" in registry.experiment_names()
    assert registry.experiment_description("toy")
    assert registry.experiment_class("toy") is ToyExperiment


@pytest.mark.parametrize("target", ["no_colon", ":Cls", "module:"])
def test_register_needs_module_and_class(target):
    with pytest.raises(ValueError, match="module:Class"):
        registry.register("bad", target)


def test_import_errors_and_non_experiments_are_one_line_errors(scratch_registry):
    registry.register("ghost", "eclearn_no_such_module:Ghost")
    with pytest.raises(RunnerError, match=r"cannot be loaded: .*pip install"):
        registry.experiment_class("ghost")
    registry.register("wrong", "eclearn.problem:Problem")
    with pytest.raises(RunnerError, match="not an eclearn Experiment class"):
        registry.experiment_class("wrong")


def test_presets_win_over_experiments_of_the_same_name():
    experiment, preset = registry.resolve("toy")
    assert experiment == "toy" and preset is not None and preset.name == "toy"
    assert registry.resolve("toy-sweep")[1].file.sweep == {
        "formulation": ["lagrangian", "penalty", "augmented"]
    }


def test_unknown_names_suggest_close_matches():
    with pytest.raises(RunnerError, match=r"did you mean 'toy'"):
        registry.resolve("tyo")
    with pytest.raises(RunnerError, match="eclearn list"):
        registry.resolve("zzzzzz")


def test_every_shipped_preset_of_a_registered_experiment_validates():
    checked = 0
    for preset in registry.presets().values():
        assert preset.description, f"{preset.path}: add a description"
        if preset.experiment not in registry.experiment_names():
            continue  # its experiment module is not registered yet
        cls = registry.experiment_class(preset.experiment)
        for combo in combos(preset.file.sweep):
            build_config(
                cls.Config, [Layer(preset.name, preset.file.config), Layer("sweep", combo)]
            )
            checked += 1
    assert checked >= 4  # toy + the three formulations of toy-sweep


def test_preset_naming_an_unregistered_experiment(monkeypatch, tmp_path):
    (tmp_path / "orphan.toml").write_text('experiment = "nope"\ndescription = "x"\n')
    monkeypatch.setattr(registry, "preset_dir", lambda: tmp_path)
    with pytest.raises(RunnerError, match="names experiment 'nope', which is not registered"):
        registry.resolve("orphan")


def test_broken_preset_file_is_reported(monkeypatch, tmp_path):
    (tmp_path / "broken.toml").write_text("experiment = \n")
    monkeypatch.setattr(registry, "preset_dir", lambda: tmp_path)
    with pytest.raises(ConfigError, match=r"broken preset file: .*broken\.toml"):
        registry.resolve("broken")
