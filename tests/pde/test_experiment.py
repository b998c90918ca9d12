"""The convection experiment plug-in: configs, formulations, metrics, figures, determinism."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pydantic
import pytest
import torch

import eclearn as ecl
from eclearn.experiments.base import RunContext
from eclearn.experiments.config import read_run_file
from eclearn.pde import ConvectionConfig, ConvectionExperiment, report_figures
from eclearn.pde.experiment import FORMULATIONS

CONFIGS = Path(ecl.__file__).parent / "configs"
TINY = {"num_points": 64, "pointwise_points": 32, "curve_grid": (32, 11), "heldout_points": 256}


pytestmark = pytest.mark.usefixtures("one_thread")


def make(tmp_path: Path, seed: int = 0, **overrides):
    """Seed like the runner does, then set up a run."""
    experiment = ConvectionExperiment()
    config = ConvectionConfig(**{**TINY, **overrides})
    ecl.seed_everything(seed)
    context = RunContext(seed=seed, device="cpu", run_dir=tmp_path)
    return experiment, config, context, experiment.setup(config, context)


def fit(setup, steps: int):
    return setup.solver.fit(
        setup.train_batches, max_steps=steps, callbacks=setup.callbacks, warn=False
    )


# ------------------------------------------------------------------------------ config
def test_config_defaults_are_the_paper_settings():
    c = ConvectionConfig()
    assert c.formulation == "ecl-average" and c.beta == 30.0
    assert (c.hidden, c.depth, c.activation) == (50, 4, "tanh")
    assert (c.lr, c.lr_decay, c.lr_decay_every, c.dual_lr) == (1e-3, 0.9, 5000, 1e-4)
    assert c.num_points == 1000 and c.pinn_weights == {"ic": 100.0, "bc": 100.0, "pde": 1.0}


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"formulation": "curriculum"}, "formulation"),
        ({"betta": 30.0}, "betta"),  # unknown keys are rejected
        ({"beta": math.inf}, "finite"),
        ({"pinn_weights": {"ic": 1.0, "pde": 1.0}}, "exactly the keys"),
        ({"pinn_weights": {"ic": -1.0, "bc": 1.0, "pde": 1.0}}, ">= 0"),
        ({"pointwise_points": 10, "pointwise_batch": 20}, "exceeds"),
        ({"curve_grid": (1, 10)}, "at least 2"),
        ({"steps": 0}, "steps"),
    ],
)
def test_config_rejects_invalid_values(overrides, match):
    with pytest.raises(pydantic.ValidationError, match=match):
        ConvectionConfig(**overrides)


@pytest.mark.parametrize(
    "preset",
    [
        "convection-quick",
        "convection-30",
        "convection-30-fast",
        "convection-40-fast",
        "convection-50-fast",
        "convection-50",
        "convection-30-paper",
        "convection-50-paper",
    ],
)
def test_presets_validate(preset):
    run = read_run_file(CONFIGS / f"{preset}.toml", preset=True)
    assert run.experiment == "convection" and run.description
    assert set(run.sweep) == {"formulation"}
    for formulation in run.sweep["formulation"]:
        ConvectionConfig(**{**run.config, "formulation": formulation})
    if preset == "convection-quick":
        assert run.sweep["formulation"] == ["ecl-pointwise", "pinn"]  # the table's columns
        assert run.config["optimizer"] == "lbfgs" and run.config["dtype"] == "float64"
    if preset.endswith("paper"):
        assert run.config["steps"] == 300_000 and run.seeds == [0, 1, 2, 3, 4]
        assert set(run.sweep["formulation"]) == set(FORMULATIONS)


# ------------------------------------------------------------------------------ formulations
def test_pinn_is_the_fixed_weight_sum_and_keeps_multipliers_at_zero(tmp_path):
    _, _, _, setup = make(tmp_path, formulation="pinn", steps=3)
    result = fit(setup, 3)
    row = setup.solver.history.last()
    expected = 100 * row["value/ic"] + 100 * row["value/bc"] + row["value/pde"]
    assert row["lagrangian"] == pytest.approx(expected, rel=1e-5)
    assert all(torch.all(m == 0) for m in result.multipliers.values())


@pytest.mark.parametrize("formulation", ["ecl-average", "augmented"])
def test_average_multipliers_increase_from_zero(tmp_path, formulation):
    _, _, _, setup = make(tmp_path, formulation=formulation, rho=0.01)
    fit(setup, 5)
    history = setup.solver.history
    for name in ("ic", "bc", "pde"):
        values, mus = history[f"value/{name}"], history[f"multiplier/{name}"]
        assert (values > 0).all()  # mean squares are positive ...
        assert mus[0] > 0 and (mus[1:] > mus[:-1]).all()  # ... so their multipliers only grow


def test_augmented_lagrangian_adds_the_quadratic_term(tmp_path):
    _, _, _, setup = make(tmp_path, formulation="augmented", rho=0.5)
    fit(setup, 2)
    rows = list(setup.solver.history.records())
    # the loss of step 2 uses the multipliers after step 1's dual update
    mus = {n: rows[0][f"multiplier/{n}"] for n in ("ic", "bc", "pde")}
    values = {n: rows[1][f"value/{n}"] for n in ("ic", "bc", "pde")}
    expected = sum(mus[n] * v + 0.25 * v * v for n, v in values.items())
    assert rows[1]["lagrangian"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("residual", ["squared", "signed"])
def test_pointwise_tables_touched_only_at_batch_ids(tmp_path, residual):
    _, _, _, setup = make(
        tmp_path,
        formulation="ecl-pointwise",
        pointwise_points=32,
        pointwise_batch=8,
        pointwise_residual=residual,
    )
    state = torch.get_rng_state()  # peek at the batch the first step will draw
    batch = next(iter(setup.train_batches))
    torch.set_rng_state(state)
    ids = {"ic": batch["ic_index"], "bc": batch["bc_index"]}
    assert not torch.equal(ids["ic"], ids["bc"])  # the two sets are indexed independently
    with torch.no_grad():
        residuals = setup.state["convection"].residuals(setup.solver.model, batch)
    fit(setup, 1)
    multipliers = setup.solver.multipliers
    for name in ("ic", "bc"):
        table = multipliers[name]
        assert table.shape == (32,)
        touched = torch.zeros(32, dtype=torch.bool)
        touched[ids[name]] = True
        assert torch.all(table[~touched] == 0)
        # the first Adam-ascent step moves each touched multiplier in the sign of its violation
        violation = residuals[name] ** 2 if residual == "squared" else residuals[name]
        assert torch.equal(torch.sign(table[ids[name]]), torch.sign(violation))
    assert multipliers["pde"].item() > 0


def test_pointwise_pde_as_objective(tmp_path):
    _, _, _, setup = make(tmp_path, formulation="ecl-pointwise", pde_term="objective")
    fit(setup, 2)
    assert "pde" not in setup.solver.multipliers
    assert setup.solver.history.last()["objective"] > 0


def test_ecl_average_reduces_the_error_at_small_beta(tmp_path):
    # β = 1 is easy: 300 seeded steps take the relative L2 error from 1.1 to about 0.06.
    _, _, _, setup = make(
        tmp_path, beta=1.0, num_points=128, eval_every=100, curve_grid=(64, 26), steps=300
    )
    fit(setup, 300)
    curve = setup.state["error_curve"]["rel_l2"]
    assert curve[0] > 1.0
    assert curve[-1] < curve[0] / 5


# ------------------------------------------------------------------------------ metrics etc.
def test_metrics_keys_figures_and_report(tmp_path):
    experiment, _, context, setup = make(tmp_path, steps=5, eval_every=2)
    result = fit(setup, 5)
    metrics = experiment.metrics(setup, result, context)
    for key in ("rel_l2", "max_abs_error", "residual_ic", "residual_bc", "residual_pde"):
        assert math.isfinite(metrics[key]) and metrics[key] >= 0
    for key in ("multiplier_ic", "multiplier_bc", "multiplier_pde"):
        assert metrics[key] > 0
    assert metrics["error_curve_steps"] == [0, 2, 4, 5]
    assert len(metrics["error_curve_rel_l2"]) == 4
    assert metrics["beta"] == 30.0 and metrics["ms_per_step"] > 0
    json.dumps(metrics)  # flat JSON
    # the curve is the callback's state: checkpoints carry it (no side file)
    assert setup.solver.state_dict()["callbacks"]["ErrorCurve"]["steps"] == [0, 2, 4, 5]
    paths = experiment.figures(setup, result, tmp_path / "figures")
    assert [p.name for p in paths] == ["solution.png", "error_vs_step.png"]
    assert all(p.stat().st_size > 0 for p in paths)
    runs = [
        {**metrics, "experiment": "convection", "formulation": f, "seed": s}
        for f in ("ecl-average", "pinn")
        for s in (0, 1)
    ]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text(json.dumps(runs[0]))
    out = report_figures([*runs, tmp_path / "run", {"experiment": "toy"}], tmp_path / "report")
    assert [p.name for p in out] == ["convection-error-vs-step-beta30.png"]


def test_pointwise_metrics_summarise_the_tables(tmp_path):
    experiment, _, context, setup = make(tmp_path, formulation="ecl-pointwise", steps=2)
    metrics = experiment.metrics(setup, fit(setup, 2), context)
    assert {"multiplier_ic_mean_abs", "multiplier_ic_max_abs", "multiplier_pde"} <= set(metrics)


def test_seeded_runs_are_identical_and_resume_exactly(tmp_path):
    _, _, _, a = make(tmp_path / "a", formulation="ecl-pointwise", pointwise_batch=16, eval_every=2)
    fit(a, 6)
    _, _, _, b = make(tmp_path / "b", formulation="ecl-pointwise", pointwise_batch=16, eval_every=2)
    fit(b, 3)
    state = b.solver.state_dict()
    torch.manual_seed(123)  # a resumed process starts from another RNG state
    _, _, _, c = make(tmp_path / "b", formulation="ecl-pointwise", pointwise_batch=16, eval_every=2)
    c.solver.load_state_dict(state)
    fit(c, 3)
    for name, value in a.solver.multipliers.items():
        assert torch.equal(value, c.solver.multipliers[name]), name
    assert a.state["error_curve"] == c.state["error_curve"]  # restored from the checkpoint
    assert a.state["error_curve"]["steps"] == [0, 2, 4, 6]
    # a run that had finished is re-opened without training: the metrics keep the curve
    experiment, _, context, d = make(
        tmp_path / "b", formulation="ecl-pointwise", pointwise_batch=16, eval_every=2
    )
    d.solver.load_state_dict(c.solver.state_dict())
    # (as the runner does: the callbacks get their checkpointed state back when they start)
    result = d.solver.fit(d.train_batches, max_steps=0, warn=False, callbacks=d.callbacks)
    metrics = experiment.metrics(d, result, context)
    assert metrics["error_curve_steps"] == [0, 2, 4, 6]
    assert metrics["error_curve_rel_l2"] == a.state["error_curve"]["rel_l2"]


# ------------------------------------------------------------------------------ primal oracle
ORACLE = {
    "formulation": "ecl-pointwise",
    "beta": 5.0,
    "hidden": 20,
    "depth": 2,
    "num_points": 128,
    "pointwise_points": 64,
    "curve_grid": (64, 26),
    "dtype": "float64",
    "lr": 3e-3,
}


def test_lbfgs_oracle_after_adam_beats_adam_alone_on_the_same_steps(tmp_path):
    """Phases: Adam for 60 steps, then L-BFGS (10 inner iterations per dual step), float64
    end to end. On the same 90 outer steps it ends far below Adam alone."""
    _, _, _, adam = make(tmp_path / "adam", steps=90, eval_every=30, **ORACLE)
    fit(adam, 90)
    _, _, _, oracle = make(
        tmp_path / "lbfgs",
        steps=90,
        eval_every=30,
        optimizer="lbfgs",
        lbfgs_after=60,
        lbfgs_max_iter=10,
        **ORACLE,
    )
    assert isinstance(oracle.solver.primal_optimizer, ecl.Phases)
    assert next(oracle.solver.model.parameters()).dtype == torch.float64
    fit(oracle, 90)
    adam_error = adam.state["error_curve"]["rel_l2"][-1]
    oracle_error = oracle.state["error_curve"]["rel_l2"][-1]
    assert oracle_error < adam_error / 5, (adam_error, oracle_error)


def test_lbfgs_run_resumes_bitwise_mid_lbfgs(tmp_path):
    options = {**ORACLE, "optimizer": "lbfgs", "lbfgs_after": 3, "lbfgs_max_iter": 4}
    _, _, _, a = make(tmp_path / "a", eval_every=2, **options)
    fit(a, 8)
    _, _, _, b = make(tmp_path / "b", eval_every=2, **options)
    fit(b, 5)
    state = b.solver.state_dict()
    torch.manual_seed(7)
    _, _, _, c = make(tmp_path / "b", eval_every=2, **options)
    c.solver.load_state_dict(state)
    fit(c, 3)
    for pa, pc in zip(a.solver.model.parameters(), c.solver.model.parameters(), strict=True):
        assert torch.equal(pa, pc)
    for name, value in a.solver.multipliers.items():
        assert torch.equal(value, c.solver.multipliers[name]), name
