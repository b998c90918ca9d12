"""The fairness experiment: config validation, constraints per formulation, a short run,
metrics and figures through the runner, the sampling floor and the bootstrap interval."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

import eclearn as ecl
from eclearn.experiments import registry
from eclearn.experiments.base import RunContext
from eclearn.fairness import (
    FairnessEvaluate,
    demographic_parity_gap,
    equalized_odds_gap,
    positive_rate,
)
from eclearn.fairness.experiment import (
    FairlearnComparisonWarning,
    FairnessConfig,
    FairnessExperiment,
    bootstrap_disparity_ci,
    sampling_floor,
)

torch.set_num_threads(1)

DESIGN_KEYS = {
    "test_accuracy",
    "test_disparity",
    "train_disparity",
    "test_group_rates",
    "train_group_rates",
    "groups",
}


@pytest.fixture(scope="module", autouse=True)
def registered():
    """The runner finds the experiment by name (registered here if the registry lacks it)."""
    if "fairness" not in registry.experiment_names():
        registry.register(
            "fairness", "eclearn.fairness.experiment:FairnessExperiment", "COMPAS fairness"
        )
    yield


def context(tmp_path: Path, data: Path, seed: int = 0) -> RunContext:
    return RunContext(
        seed=seed, device="cpu", run_dir=tmp_path, data_path=str(data), log=lambda _: None
    )


# ---------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"formulation": "dp-tolerance"}, "needs tolerance"),
        ({"formulation": "prescribed-rate"}, "needs rate"),
        ({"formulation": "parity"}, "formulation"),
        ({"split": 10}, "split"),
        ({"rate": 1.5, "formulation": "prescribed-rate"}, "rate"),
        ({"learning_rate": 0.1}, "learning_rate"),
    ],
)
def test_config_rejects(values, message):
    with pytest.raises(ValidationError, match=message):
        FairnessConfig(**values)


def test_presets_validate():
    from eclearn.experiments.runner import plan_runs

    names = [n for n in registry.presets() if n.startswith("fairness-")]
    assert {
        "fairness-dp",
        "fairness-unconstrained",
        "fairness-tolerance",
        "fairness-prescribed",
        "fairness-eo",
        "fairness-all",
    } <= set(names)
    counts = {}
    for name in names:
        plan = plan_runs(name, out="/nonexistent/never-written")
        counts[name] = len(plan.runs)
        assert all(run.experiment == "fairness" for run in plan.runs)
    assert counts["fairness-dp"] == 10
    assert counts["fairness-tolerance"] == 40 and counts["fairness-prescribed"] == 50
    assert counts["fairness-all"] == 50


# ---------------------------------------------------------------------------- setup
@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"formulation": "unconstrained"}, []),
        ({"formulation": "dp-equality"}, [("demographic_parity", "equality", 4, 0.0)]),
        (
            {"formulation": "dp-tolerance", "tolerance": 0.05},
            [
                ("demographic_parity_upper", "inequality", 4, 0.05),
                ("demographic_parity_lower", "inequality", 4, 0.05),
            ],
        ),
        (
            {"formulation": "prescribed-rate", "rate": 0.3},
            [("positive_rate", "equality", 4, 0.3)],
        ),
        (
            {"formulation": "equalized-odds"},
            [
                ("true_positive_rate_gap", "equality", 4, 0.0),
                ("false_positive_rate_gap", "equality", 4, 0.0),
            ],
        ),
    ],
)
def test_setup_builds_constraints(tmp_path, compas_path, values, expected):
    setup = FairnessExperiment().setup(FairnessConfig(**values), context(tmp_path, compas_path))
    problem = setup.solver.problem
    found = [(c.name, c.kind, c.size, sorted(set(c.target.tolist()))) for c in problem.constraints]
    assert found == [(n, k, s, [t]) for n, k, s, t in expected]
    assert setup.max_steps == 2000 and len(setup.train_batches) == 1
    train = setup.train_batches[0]
    assert train["x"].shape == (4320, 23)
    # The statistics are the rate helpers' definitions (checked on the exact decisions).
    with torch.no_grad():
        p = torch.sigmoid(setup.solver.model(train["x"]).reshape(-1))
    out = problem.evaluate_fn(setup.solver.model, train, exact=True)
    hard = (p > 0.5).to(p.dtype)
    close = {"atol": 1e-4, "rtol": 0}  # float32 sums over 4320 rows
    if "demographic_parity" in out:
        reference = demographic_parity_gap(hard, train["group"], 4, surrogate="exact")
        torch.testing.assert_close(out["demographic_parity"], reference, **close)
    if "positive_rate" in out:
        reference = positive_rate(hard, train["group"], 4, surrogate="exact").value
        torch.testing.assert_close(out["positive_rate"].value, reference, **close)
    if "true_positive_rate_gap" in out:
        reference = equalized_odds_gap(hard, train["y"], train["group"], 4, surrogate="exact")
        got = torch.cat([out["true_positive_rate_gap"], out["false_positive_rate_gap"]])
        torch.testing.assert_close(got, reference, **close)


def test_split_follows_seed_unless_set(tmp_path, compas_path):
    exp = FairnessExperiment()
    a = exp.setup(FairnessConfig(), context(tmp_path, compas_path, seed=3))
    b = exp.setup(FairnessConfig(split=3), context(tmp_path, compas_path, seed=0))
    assert a.state["split"] == b.state["split"] == 3
    torch.testing.assert_close(a.train_batches[0]["x"], b.train_batches[0]["x"])


def test_surrogate_signal_and_exact_signal_differ_only_in_value(tmp_path, compas_path):
    """dual_signal="exact" returns ecl.Proxy(surrogate, exact): the part the primal step
    differentiates is the surrogate statistic (the same as dual_signal="surrogate"), the part
    the multipliers follow is the exact one."""
    setup = FairnessExperiment().setup(FairnessConfig(), context(tmp_path, compas_path))
    model, train = setup.solver.model, setup.train_batches[0]
    proxy = FairnessEvaluate("dp-equality", 4)(model, train)["demographic_parity"]
    plain = FairnessEvaluate("dp-equality", 4, dual_signal="surrogate")(model, train)
    assert isinstance(proxy, ecl.Proxy)
    exact = FairnessEvaluate("dp-equality", 4)(model, train, exact=True)["demographic_parity"]
    torch.testing.assert_close(proxy.exact, exact)
    torch.testing.assert_close(proxy.surrogate, plain["demographic_parity"])
    assert proxy.surrogate.requires_grad and not proxy.exact.requires_grad
    assert not torch.allclose(proxy.surrogate.detach(), exact)


# ---------------------------------------------------------------------------- a short run
def test_short_run_reduces_training_disparity_and_reports_metrics(tmp_path, compas_path):
    exp = FairnessExperiment()
    config = FairnessConfig(max_steps=300, bootstrap=200, floor_draws=2000)
    ctx = context(tmp_path, compas_path)
    setup = exp.setup(config, ctx)
    selector = ecl.select.BestFeasible(on="steps")  # what the runner adds for select="best-steps"
    result = setup.solver.fit(
        setup.train_batches,
        max_steps=setup.max_steps,
        callbacks=setup.callbacks,
        select=selector,
        stopping=ecl.Patience(selector, config.patience),
        warn=False,
    )
    result.selected.load_into(setup.solver.model)
    history = result.history
    first = np.abs([history[f"violation/demographic_parity[{k}]"][0] for k in range(4)]).max()
    metrics = exp.metrics(setup, result, ctx)
    assert first > 0.15  # the warm start is the unconstrained fit: disparity ≈ 0.39
    assert metrics["train_disparity"] <= 0.03
    assert metrics["train_violation_exact"] <= config.selection_tolerance
    assert set(metrics) >= DESIGN_KEYS
    assert metrics["groups"] == ["African-American", "Caucasian", "Hispanic", "Other"]
    assert len(metrics["test_group_rates"]) == len(metrics["train_group_rates"]) == 4
    low, high = metrics["test_disparity_ci"]
    assert low <= metrics["test_disparity"] <= high
    assert 0.05 < metrics["sampling_floor"] < 0.09  # ≈ 0.068 for these test-group sizes
    assert len(metrics["multipliers"]) == 4 and metrics["selected_step"] is not None
    assert metrics["fit_seconds_total"] >= metrics["warm_start_seconds"] > 0
    json.dumps(metrics, allow_nan=False)
    disparity = max(metrics["train_group_rates"]) - min(metrics["train_group_rates"])
    assert math.isclose(disparity, metrics["train_disparity"], abs_tol=1e-12)


def test_runner_writes_run_directory_and_report_figures(tmp_path, compas_path):
    from eclearn.experiments.runner import execute, find_runs, plan_runs

    plan = plan_runs(
        "fairness",
        overrides=[
            "formulation=prescribed-rate",
            "rate=0.5",
            "max_steps=150",
            "bootstrap=100",
            "floor_draws=500",
        ],
        seeds=[1],
        out=tmp_path / "runs",
        data=str(compas_path),
    )
    for spec in plan.runs:
        metrics = execute(spec, progress=False, echo=None)
        assert set(metrics) >= DESIGN_KEYS and metrics["fit_seconds"] >= 0
        assert metrics["target_rate"] == 0.5 and "train_rate_deviation_max" in metrics
        assert (spec.run_dir / "figures" / "fairness-group-rates.png").is_file()
    runs = find_runs([tmp_path / "runs"])
    out = tmp_path / "report"
    out.mkdir()
    # Fairlearn points come from the benchmark's JSON when one lies next to the report.
    (out / "fairness_vs_fairlearn.json").write_text(
        json.dumps(
            {
                "results": {
                    "fairlearn": [{"split": 1, "test_accuracy": 0.68, "test_disparity": 0.09}]
                }
            }
        )
    )
    paths = FairnessExperiment.report_figures(runs, out)
    assert {p.name for p in paths} == {"fairness-tradeoff.png", "fairness-prescribed.png"}
    assert all(p.stat().st_size > 0 for p in paths)


def test_missing_fairlearn_comparison_warns_with_the_reason(tmp_path, monkeypatch):
    import sys
    from types import SimpleNamespace

    from eclearn.fairness.experiment import _fairlearn_points

    run = SimpleNamespace(metrics={"split": 0}, path=tmp_path / "runs" / "r0", info={})
    # no benchmark JSON and fairlearn not importable: None, and a warning that says both
    monkeypatch.setitem(sys.modules, "fairlearn.reductions", None)
    with pytest.warns(FairlearnComparisonWarning, match="no fairness_vs_fairlearn.json.*import"):
        assert _fairlearn_points([run], tmp_path) is None
    # an unreadable benchmark file is named
    (tmp_path / "fairness_vs_fairlearn.json").write_text("{not json")
    with pytest.warns(FairlearnComparisonWarning, match="unreadable.*JSONDecodeError"):
        assert _fairlearn_points([run], tmp_path) is None
    # runs without splits: nothing to fit Fairlearn on
    bare = SimpleNamespace(metrics={}, path=tmp_path / "runs" / "r1", info={})
    with pytest.warns(FairlearnComparisonWarning, match="no split"):
        assert _fairlearn_points([bare], tmp_path) is None


# ---------------------------------------------------------------------------- statistics
def test_sampling_floor_hand_checkable_cases():
    # Two equal, large groups at the same rate: the observed rates nearly coincide.
    assert sampling_floor([200_000, 200_000], 0.5, draws=2000) < 0.003
    # Two single people at rate 1/2: they differ with probability 1/2, by exactly 1.
    assert sampling_floor([1, 1], 0.5, draws=20_000) == pytest.approx(0.5, abs=0.02)
    # Certain outcomes never differ; a single group has nothing to compare.
    assert sampling_floor([10, 30], 1.0) == 0.0 and sampling_floor([50], 0.4) == 0.0
    # COMPAS test groups (PAPER-SETUPS.md: ≈ 0.068); seeded, so reproducible.
    floor = sampling_floor([956, 628, 164, 104], 0.42)
    assert floor == pytest.approx(0.068, abs=0.004)
    assert floor == sampling_floor([956, 628, 164, 104], 0.42)


def test_bootstrap_interval_contains_estimate():
    positives, sizes = [380, 300, 70, 45], [956, 628, 164, 104]
    rates = np.array(positives) / np.array(sizes)
    estimate = rates.max() - rates.min()
    low, high = bootstrap_disparity_ci(positives, sizes, resamples=2000, seed=1)
    assert 0 <= low <= estimate <= high < 1
    assert (low, high) == bootstrap_disparity_ci(positives, sizes, resamples=2000, seed=1)
    # Huge groups pin the disparity down.
    low, high = bootstrap_disparity_ci([300_000, 500_000], [1_000_000] * 2, resamples=500)
    assert 0.198 < low <= 0.2 <= high < 0.202
    # A near-0 disparity still gets an interval containing it (bias-shifted, clipped at 0).
    low, high = bootstrap_disparity_ci([400, 261], [1000, 650], resamples=1000)
    assert low <= abs(0.4 - 261 / 650) <= high


def test_rates_evaluate_matches_ecl_evaluate(tmp_path, compas_path):
    """ecl.evaluate(exact=True) judges held-out data on the exact rates."""
    setup = FairnessExperiment().setup(
        FairnessConfig(formulation="prescribed-rate", rate=0.4), context(tmp_path, compas_path)
    )
    test = setup.state["test"]
    report = ecl.evaluate(setup.solver.problem, setup.solver.model, [test], exact=True)
    with torch.no_grad():
        hard = (setup.solver.model(test["x"]).reshape(-1) > 0).float()
    reference = positive_rate(hard, test["group"], 4, surrogate="exact").value
    torch.testing.assert_close(report["positive_rate"].value.float(), reference)
