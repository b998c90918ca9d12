"""Run files, --set overrides and config validation messages."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

from eclearn.experiments.base import ExperimentConfig
from eclearn.experiments.config import (
    ConfigError,
    Layer,
    build_config,
    changed_keys,
    flatten,
    parse_override,
    read_run_file,
    sweep_combinations,
    sweep_label,
    unflatten,
)


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: int = Field(8, ge=1)


class Demo(ExperimentConfig):
    formulation: Literal["lagrangian", "penalty"] = "lagrangian"
    lr: float = Field(0.1, gt=0)
    epochs: int = Field(5, ge=1)
    tags: list[float] = Field(default_factory=lambda: [1.0, 2.0])
    model: Inner = Inner()


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ("lr=0.5", "lr", 0.5),
        ("epochs=3", "epochs", 3),
        ("flag=true", "flag", True),
        ("tags=[1, 2.5]", "tags", [1, 2.5]),
        ('name="a b"', "name", "a b"),
        ("formulation=penalty", "formulation", "penalty"),
        ("model.width = 4", "model.width", 4),
        ("path=/tmp/x=y", "path", "/tmp/x=y"),
    ],
)
def test_parse_override_reads_toml_literals_else_strings(text, key, value):
    assert parse_override(text) == (key, value)


@pytest.mark.parametrize("text", ["lr", "=3", "1abc=2", "a..b=1"])
def test_parse_override_rejects_malformed_keys(text):
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override(text)


def test_flatten_and_unflatten_are_inverse():
    nested = {"a": 1, "model": {"width": 4, "act": {"name": "tanh"}}, "tags": [1, 2]}
    flat = flatten(nested)
    assert flat == {"a": 1, "model.width": 4, "model.act.name": "tanh", "tags": [1, 2]}
    assert unflatten(flat) == nested


def test_later_layers_win_and_nested_keys_merge():
    config = build_config(
        Demo,
        [Layer("preset", {"lr": 0.2, "model.width": 3}), Layer("--set", {"lr": 0.3})],
    )
    assert config.lr == 0.3 and config.model.width == 3


def _errors(values: dict, source: str = "--set x") -> list[str]:
    with pytest.raises(ConfigError) as info:
        build_config(Demo, [Layer(source, values)])
    return info.value.lines


def test_unknown_key_names_path_source_suggestion_and_allowed_keys():
    (line,) = _errors({"lrr": 0.1}, "--set lrr=0.1")
    assert line.startswith("lrr (from --set lrr=0.1): unknown key")
    assert "did you mean 'lr'" in line
    assert (
        "allowed keys: candidates, certify, checkpoint_every, confidence, epochs, formulation, lr, min_delta, model, patience, select, tags, validation_fraction"
        in line
    )


def test_unknown_nested_key_lists_the_nested_fields():
    (line,) = _errors({"model.widht": 3})
    assert line.startswith("model.widht")
    assert "did you mean 'width'" in line and "allowed keys: width" in line


def test_wrong_type_out_of_range_and_literal_each_get_a_line():
    lines = _errors({"epochs": "many", "lr": -1.0, "formulation": "pinn"})
    assert len(lines) == 3
    text = "\n".join(lines)
    assert "epochs = 'many' (from --set x): a string is not a number (write it unquoted)" in text
    assert "lr = -1.0 (from --set x): out of range; must be > 0" in text
    assert (
        "formulation = 'pinn' (from --set x): not an allowed value; allowed values: "
        "'lagrangian' or 'penalty'" in text
    )


def test_list_element_errors_show_the_index():
    (line,) = _errors({"tags": [1.0, "x"]})
    assert line.startswith("tags[1] = 'x'") and "must be a number" in line


def test_fractional_value_for_an_int_is_a_type_error():
    (line,) = _errors({"epochs": 2.5})
    assert "epochs = 2.5" in line and "integer" in line


def test_run_file_layout_is_checked(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('experimnt = "toy"\nseeds = [1, 1]\n[sweep]\nlr = 0.1\n')
    with pytest.raises(ConfigError) as info:
        read_run_file(path, preset=True)
    text = "\n".join(info.value.lines)
    assert "unknown top-level key 'experimnt' (did you mean 'experiment'?)" in text
    assert "missing top-level experiment" in text
    assert "repeats a seed" in text
    assert "sweep.lr must be a non-empty list" in text


def test_run_file_syntax_error_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[config\nlr = 1\n")
    with pytest.raises(ConfigError, match=r"broken\.toml: invalid TOML"):
        read_run_file(path)


def test_missing_run_file():
    with pytest.raises(ConfigError, match="no such file"):
        read_run_file("/nonexistent/run.toml")


def test_run_file_reads_config_sweep_and_seeds(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(
        'experiment = "toy"\nseeds = [3, 4]\n[config]\nlr = 0.2\n[config.model]\nwidth = 2\n'
        '[sweep]\nformulation = ["lagrangian", "penalty"]\nepochs = [1, 2]\n'
    )
    run = read_run_file(path)
    assert run.experiment == "toy" and run.seeds == [3, 4]
    assert run.config == {"lr": 0.2, "model.width": 2}
    combos = sweep_combinations(run.sweep)
    assert len(combos) == 4 and combos[0] == {"formulation": "lagrangian", "epochs": 1}
    assert sweep_label(combos[3]) == "formulation=penalty,epochs=2"


def test_sweep_labels_are_file_system_safe():
    assert sweep_label({"hidden": [64, 64], "act": "a/b", "on": True}) == (
        "hidden=64-64,act=a_b,on=true"
    )
    assert sweep_combinations({}) == [{}]


def test_changed_keys():
    assert changed_keys({"a": 1, "m": {"w": 2}}, {"a": 1, "m": {"w": 3}}) == {"m.w": (2, 3)}
