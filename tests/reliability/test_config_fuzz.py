"""Fuzzed ``--set`` values through the real command line: every outcome is either a run
whose config validated (finite numbers of the declared types, sizes that fit in memory)
or exit 2 with exactly one error line — never a traceback, never a coerced value.

Training itself is replaced by a recorder (the configs, not the training, are under test).
"""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from eclearn.experiments import runner
from eclearn.experiments.toy import ToyConfig

from .conftest import errors, run_cli, trials

KEYS = sorted(ToyConfig.model_fields)
NASTY = [
    "inf",
    "-inf",
    "nan",
    "1e12",
    "1e309",
    "-1",
    "0",
    "true",
    "false",
    '"3"',
    "3.5",
    "[1, 2]",
    "{a = 1}",
    "",
    "'",
    "\x1b[31mred",
    "1_000",
    "0x10",
    "None",
    "null",
]
values = st.one_of(
    st.integers(1, 300).map(str),  # plausible values, so that many configs validate
    st.floats(0.001, 2.0).map(repr),
    st.sampled_from(['"adam"', '"sgd"', '"nupi"', '"augmented"', '"penalty"']),
    st.sampled_from(NASTY),
    st.integers(-(10**15), 10**15).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=12),
)
keys = st.one_of(st.sampled_from(KEYS), st.sampled_from(KEYS), st.text(min_size=1, max_size=10))


@pytest.fixture
def recorder(monkeypatch):
    seen = []

    def execute(spec, **kwargs):
        seen.append(spec)
        raise KeyboardInterrupt  # the CLI answers exit 130 without training

    monkeypatch.setattr(runner, "execute", execute)
    return seen


def _check_validated(config: ToyConfig) -> None:
    for name, field in ToyConfig.model_fields.items():
        value = getattr(config, name)
        if isinstance(value, float):
            assert math.isfinite(value), (name, value)
        if field.annotation in (int, float):
            assert type(value) is field.annotation or (
                field.annotation is float and type(value) is int
            ), (name, value, type(value))


@settings(
    max_examples=trials(150),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(pairs=st.lists(st.tuples(keys, values), min_size=1, max_size=3))
def test_fuzzed_overrides_validate_or_fail_in_one_line(pairs, recorder, tmp_path):
    recorder.clear()
    args = []
    for key, value in pairs:
        args.append(f"--set={key}={value}")
    code, _, err = run_cli("run", "toy", "--out", tmp_path / "fuzz", *args, "--no-progress")
    if recorder:
        event("validated")
        assert code == 130, err
        _check_validated(recorder[0].config)
    else:  # one line per problem (each bad key names itself), nothing else
        event("refused")
        assert code == 2, err
        lines = errors(err)
        assert 1 <= len(lines) <= len(pairs) + 1, err
        assert len(err.splitlines()) == len(lines), err
        assert "Traceback" not in err
        assert all(ch >= " " for line in lines for ch in line), repr(err)
