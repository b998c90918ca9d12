"""Aggregation and rendering of result tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from eclearn.experiments.base import RunRecord
from eclearn.report.tables import build_tables, group_runs, render_markdown, render_text, summarize


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([1.0, 2.0, 3.0], "2 ± 1"),
        ([0.5], "0.5"),
        ([1200, 1200], "1200"),
        ([0.123456, 0.123456], "0.1235"),
        ([True, False, True], "2/3"),
        ([True], "yes"),
        ([False], "no"),
        (["epochs", "epochs"], "epochs"),
        (["epochs", "converged", "epochs"], "epochs×2, converged×1"),
        ([[1.0, 2.0], [3.0, 4.0]], "[2, 3]"),
        ([["a", "b"], ["a", "b"]], "[a, b]"),
        ([None, 2.0], "2"),
        ([None], "—"),
        ([], "—"),
        ([1.0, "x"], "(mixed)"),
    ],
)
def test_summarize(values, expected):
    assert summarize(values) == expected


def test_summarize_shortens_long_lists_only_when_compact():
    values = [[float(i) for i in range(6)]]
    assert summarize(values) == "[0, 1, 2, 3, 4, 5]"
    assert summarize(values, compact=True) == "[0, 1, 2, … (6)]"


def record(seed, config, metrics, label="", experiment="demo", index=0):
    return RunRecord(
        path=Path(f"/runs/{label or 'x'}/seed-{seed}"),
        experiment=experiment,
        seed=seed,
        label=label or config.get("formulation", ""),
        config=config,
        metrics=None if metrics is None else {"experiment": experiment, "seed": seed, **metrics},
        info={"sweep_index": index},
    )


def test_groups_pool_seeds_of_one_config_and_tell_configs_apart():
    runs = [
        record(1, {"formulation": "lagrangian", "lr": 0.1}, {"error": 2.0}),
        record(0, {"formulation": "lagrangian", "lr": 0.1}, {"error": 1.0}),
        record(0, {"formulation": "lagrangian", "lr": 0.2}, {"error": 5.0}),
        record(0, {"formulation": "lagrangian", "lr": 0.3}, None),
    ]
    groups = group_runs(runs)
    assert [g.label for g in groups] == ["lagrangian (lr=0.1)", "lagrangian (lr=0.2)"]
    assert groups[0].seeds == [0, 1] and groups[0].values("error") == [1.0, 2.0]


def test_sweep_order_and_single_key_column_headers():
    runs = [
        record(0, {"formulation": "penalty"}, {"error": 3.0}, "formulation=penalty", index=1),
        record(0, {"formulation": "lagrangian"}, {"error": 1.0}, "formulation=lagrangian"),
    ]
    (table,) = build_tables(group_runs(runs))
    assert table.corner == "metric \\ formulation"
    assert table.columns == ["lagrangian", "penalty"]
    assert "formulation" not in [name for name, _ in table.rows]
    text = render_text([table])
    assert text.splitlines()[0] == "demo — 2 runs"
    assert text.splitlines()[1].split() == ["metric", "\\", "formulation", "lagrangian", "penalty"]
    (md,) = render_markdown([table])
    assert "| metric \\ formulation | lagrangian | penalty |" in md
    assert "| error | 1 | 3 |" in md


def test_diagnostics_are_counted_in_the_table_and_listed_in_notes():
    runs = [
        record(0, {"formulation": "penalty"}, {"diagnostics": ["c: still violated"]}),
        record(1, {"formulation": "penalty"}, {"diagnostics": ["c: still violated"]}),
    ]
    (table,) = build_tables(group_runs(runs))
    assert ("diagnostics", ["1"]) in table.rows
    assert table.notes == ["penalty: seed 0, 1: c: still violated"]
    (compact,) = build_tables(group_runs(runs), compact=True)
    assert "1 diagnostic(s)" in compact.notes[0]


def test_group_means_of_feasibility_runs_are_nan_without_warnings():
    import warnings

    import numpy as np

    from eclearn.report.figures import _mean_over_runs

    objective = [np.array([np.nan, np.nan]), np.array([np.nan, np.nan])]
    violation = [np.array([1.0, np.nan]), np.array([3.0, 2.0])]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(_mean_over_runs(objective)).all()
        np.testing.assert_array_equal(_mean_over_runs(violation), [2.0, 2.0])
