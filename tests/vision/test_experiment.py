"""The interpolation experiment plug-in: problems, dual directions, metrics, configs, presets."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch
import torch.nn.functional as F
from torch import nn

import eclearn as ecl
from eclearn.experiments.base import RunContext, RunRecord
from eclearn.experiments.config import Layer, build_config, sweep_combinations
from eclearn.vision import experiment as exp_module
from eclearn.vision.data import load_cifar10_subset
from eclearn.vision.experiment import (
    ClassLossCurve,
    InterpolationConfig,
    InterpolationExperiment,
    balanced_subset,
    build_problem,
    per_class_multipliers,
    report_figures,
)

pydantic = pytest.importorskip("pydantic")

CONFIGS = Path(ecl.__file__).parent / "configs"
NUM_CLASSES = 4


pytestmark = pytest.mark.usefixtures("one_thread")


class Linear(nn.Module):
    """A tiny classifier on flattened images (keeps the problem tests fast)."""

    def __init__(self, num_classes: int = NUM_CLASSES, dim: int = 3 * 4 * 4) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def toy_data(n: int = 24, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(n, 3, 4, 4, generator=g),
        "y": torch.arange(n) % NUM_CLASSES,
        "index": torch.arange(n),
    }


def config(**overrides) -> InterpolationConfig:
    return InterpolationConfig(**{"channels_last": False, **overrides})


def solver_for(formulation: str, model: nn.Module, n: int, **overrides) -> ecl.PrimalDual:
    cfg = config(formulation=formulation, **overrides)
    problem = build_problem(cfg, NUM_CLASSES, n)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return ecl.PrimalDual(problem, model, optimizer, ecl.dual.Adam(lr=cfg.dual_lr))


# ------------------------------------------------------------------------------ problem
def test_class_constraint_values_are_the_per_class_losses():
    torch.manual_seed(0)
    model, data = Linear(), toy_data()
    problem = build_problem(config(formulation="ecl-class"), NUM_CLASSES, 24)
    with torch.no_grad():
        ev = problem(model, data)
        losses = F.cross_entropy(model(data["x"]), data["y"], reduction="none")
    direct = torch.stack([losses[data["y"] == c].mean() for c in range(NUM_CLASSES)])
    torch.testing.assert_close(ev.values["class_loss"], direct)
    assert ev.objective is None

    # A batch without class 3: its entry is 0/0 → 0 (adds nothing to this step's term).
    rows = data["y"] != 3
    with torch.no_grad():
        partial = problem(model, {k: v[rows] for k, v in data.items()})
    assert float(partial.values["class_loss"][3]) == 0.0
    assert float(partial.ratios["class_loss"].denominator[3]) == 0.0
    torch.testing.assert_close(partial.values["class_loss"][:3], direct[:3])

    # Held-out pooling over uneven batches is exact (sums of numerators / denominators).
    batches = [{k: v[:5] for k, v in data.items()}, {k: v[5:] for k, v in data.items()}]
    report = ecl.evaluate(problem, model, batches)
    torch.testing.assert_close(report["class_loss"].value, direct.double())


def test_erm_objective_is_the_mean_cross_entropy_and_sample_values_per_row():
    torch.manual_seed(0)
    model, data = Linear(), toy_data()
    with torch.no_grad():
        losses = F.cross_entropy(model(data["x"]), data["y"], reduction="none")
        erm = build_problem(config(formulation="erm"), NUM_CLASSES, 24)(model, data)
        sample = build_problem(config(formulation="ecl-sample"), NUM_CLASSES, 24)(model, data)
    torch.testing.assert_close(erm.objective, losses.mean())
    assert erm.values == {}
    torch.testing.assert_close(sample.values["sample_loss"].reshape(-1), losses)
    assert torch.equal(sample.indices["sample_loss"], data["index"])


def test_class_multipliers_grow_from_their_init_while_losses_are_positive():
    torch.manual_seed(0)
    data = toy_data()
    solver = solver_for("ecl-class", Linear(), 24, multiplier_init=0.5, dual_lr=0.01)
    result = solver.fit([data], max_steps=5, warn=False)
    mu = result.multipliers["class_loss"]
    assert mu.shape == (NUM_CLASSES,)
    assert bool((mu > 0.5).all()), mu  # every class loss > 0 ⇒ ascent raises every μ_c
    values = solver.history["value/class_loss[0]"]
    assert (values > 0).all()


def test_sample_multipliers_touch_only_the_rows_of_the_batch():
    torch.manual_seed(0)
    data = toy_data()
    batch = {k: v[[2, 5, 7, 11]] for k, v in data.items()}
    solver = solver_for("ecl-sample", Linear(), 24, multiplier_init=1.0, dual_lr=0.01)
    result = solver.fit([batch], max_steps=2, warn=False)
    table = result.multipliers["sample_loss"]
    assert table.shape == (24,)
    touched = torch.zeros(24, dtype=torch.bool)
    touched[[2, 5, 7, 11]] = True
    assert bool((table[touched] > 1.0).all())
    assert bool((table[~touched] == 1.0).all())
    per_class = per_class_multipliers("ecl-sample", result.multipliers, data["y"], NUM_CLASSES)
    expected = torch.stack([table[data["y"] == c].double().mean() for c in range(NUM_CLASSES)])
    torch.testing.assert_close(per_class, expected)
    assert per_class_multipliers("erm", {}, data["y"], NUM_CLASSES) is None


def test_loss_curve_counts_training_batches_only_and_survives_resume(tmp_path):
    torch.manual_seed(0)
    data = toy_data()
    tracker = ClassLossCurve(NUM_CLASSES)
    cfg = config(formulation="ecl-class")
    problem = build_problem(cfg, NUM_CLASSES, 24)
    model = Linear()
    solver = ecl.PrimalDual(problem, model, torch.optim.SGD(model.parameters(), lr=0.1))
    halves = [{k: v[:12] for k, v in data.items()}, {k: v[12:] for k, v in data.items()}]
    solver.fit(halves, epochs=2, callbacks=[tracker], warn=False)
    ecl.evaluate(problem, model, halves)  # held-out evaluation: no callbacks, not counted
    assert tracker.curve["steps"] == [2, 4] and tracker.curve["epochs"] == [1, 2]
    assert len(tracker.curve["loss"][0]) == NUM_CLASSES
    # first epoch's point = mean of the two steps' per-class batch losses (history rows)
    first = [float(np.mean(solver.history[f"value/class_loss[{c}]"][:2])) for c in range(4)]
    np.testing.assert_allclose(tracker.curve["loss"][0], first, rtol=1e-5)

    # the curve is the callback's state in the solver's checkpoint: a resumed run continues it
    state = solver.state_dict()
    assert state["callbacks"]["ClassLossCurve"]["steps"] == [2, 4]
    fresh_model = Linear()
    fresh_solver = ecl.PrimalDual(
        build_problem(cfg, NUM_CLASSES, 24),
        fresh_model,
        torch.optim.SGD(fresh_model.parameters(), lr=0.1),
    )
    fresh_solver.load_state_dict(state)
    fresh = ClassLossCurve(NUM_CLASSES)
    fresh_solver.fit(halves, epochs=1, callbacks=[fresh], warn=False)
    assert fresh.curve["steps"] == [2, 4, 6]


# ------------------------------------------------------------------------------ config
def test_config_validation_rejects_unknown_choices_and_keys():
    with pytest.raises(pydantic.ValidationError, match="formulation"):
        InterpolationConfig(formulation="ecl-pointwise")
    with pytest.raises(pydantic.ValidationError, match="dataset"):
        InterpolationConfig(dataset="mnist")
    with pytest.raises(pydantic.ValidationError, match="extra"):
        InterpolationConfig(learning_rate=0.1)
    with pytest.raises(pydantic.ValidationError, match="width applies"):
        InterpolationConfig(model="resnet18", width=64)
    with pytest.raises(pydantic.ValidationError, match="hidden applies to model = 'conv-mlp'"):
        InterpolationConfig(model="small-cnn", hidden=256)
    assert InterpolationConfig(model="conv-mlp", width=16, hidden=64).hidden == 64
    with pytest.raises(pydantic.ValidationError, match="milestones"):
        InterpolationConfig(milestones=[120, 60])
    with pytest.raises(pydantic.ValidationError):
        InterpolationConfig(autocast="fp8")
    with pytest.raises(pydantic.ValidationError, match="validation split"):
        InterpolationConfig(select="best")
    assert InterpolationConfig(model="resnet18").width is None


def test_every_interpolation_preset_validates():
    presets = sorted(CONFIGS.glob("interpolation-*.toml"))
    names = {p.stem for p in presets}
    assert {
        "interpolation-smoke",
        "interpolation-cpu",
        "interpolation-sample-cpu",
        "interpolation-cifar10-paper",
        "interpolation-cifar100-paper",
    } <= names
    for path in presets:
        data = tomllib.loads(path.read_text())
        assert data["experiment"] == "interpolation" and data["description"]
        for combo in sweep_combinations(data.get("sweep", {})):
            build_config(
                InterpolationConfig, [Layer(path.stem, data["config"]), Layer("sweep", combo)]
            )


def test_balanced_subset_is_balanced_and_deterministic():
    labels = np.repeat(np.arange(5), [7, 3, 9, 4, 6])[np.random.default_rng(0).permutation(29)]
    rows = balanced_subset(labels, 10, 5)
    assert np.array_equal(rows, balanced_subset(labels, 10, 5))
    assert np.bincount(labels[rows], minlength=5).tolist() == [2, 2, 2, 2, 2]
    assert np.all(np.diff(rows) > 0)
    assert len(balanced_subset(labels, None, 5)) == 29
    with pytest.raises(ValueError, match="every one of the 5 classes"):
        balanced_subset(labels, 3, 5)


# ------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def subset(request):
    path = request.getfixturevalue("subset_path")
    return load_cifar10_subset(path)


@pytest.fixture
def smoke(subset, monkeypatch, tmp_path):
    """The smoke preset's config; ``load_dataset`` served from the module's one load."""
    monkeypatch.setattr(exp_module, "load_dataset", lambda name, path=None: subset)
    data = tomllib.loads((CONFIGS / "interpolation-smoke.toml").read_text())
    return data["config"], tmp_path


def run_smoke(values: dict, tmp_path: Path, **overrides):
    cfg = InterpolationConfig(**{**values, **overrides})
    experiment = InterpolationExperiment()
    run_dir = tmp_path / cfg.formulation
    run_dir.mkdir()
    ecl.seed_everything(0)
    context = RunContext(seed=0, device="cpu", run_dir=run_dir, log=lambda message: None)
    setup = experiment.setup(cfg, context)
    result = setup.solver.fit(
        setup.train_batches, epochs=setup.epochs, callbacks=setup.callbacks, warn=False
    )
    return experiment, setup, result, experiment.metrics(setup, result, context), run_dir


def test_smoke_preset_end_to_end(smoke):
    values, tmp_path = smoke
    experiment, setup, result, metrics, run_dir = run_smoke(values, tmp_path)
    assert result.steps == 4 and result.epochs == 1  # 200 images / batch 50
    assert setup.heldout_batches is not None and setup.certify_train_batches is not None
    for key in (
        "test_accuracy",
        "per_class_test_error",
        "per_class_multiplier",
        "per_class_train_loss",
        "pearson_r",
        "pearson_r_low",
        "pearson_r_high",
        "spearman_rho",
        "spearman_rho_low",
        "spearman_rho_high",
        "train_accuracy",
        "max_per_class_train_loss",
        "test_confusion_matrix",
        "train_loss_pearson_r",
    ):
        assert key in metrics, key
    assert metrics["num_train"] == 200 and metrics["num_test"] == 100
    for key in ("per_class_test_error", "per_class_multiplier", "per_class_train_loss"):
        assert len(metrics[key]) == 10
    assert metrics["per_class_multiplier"] == result.multipliers["class_loss"].tolist()
    assert all(m > 1.0 for m in metrics["per_class_multiplier"])  # init 1, losses > 0
    assert metrics["max_per_class_train_loss"] == max(metrics["per_class_train_loss"])
    assert np.asarray(metrics["test_confusion_matrix"]).sum() == 100
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    assert math.isfinite(metrics["pearson_r"])
    assert metrics["pearson_r_low"] <= metrics["pearson_r"] <= metrics["pearson_r_high"]
    json.dumps(metrics, allow_nan=True)

    figures = experiment.figures(setup, result, run_dir / "figures")
    assert {p.name for p in figures} == {
        "multiplier_vs_error.png",
        "multipliers_by_class.png",
        "confusion_matrix.png",
        "class_loss_curves.png",
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    record = RunRecord(
        run_dir, "interpolation", 0, "ecl-class", {"formulation": "ecl-class"}, metrics
    )
    made = report_figures([record], tmp_path / "report")
    assert {p.name for p in made} == {
        "interpolation-multiplier-vs-error.png",
        "interpolation-summary.png",
        "interpolation-class-loss.png",
    }


def test_smoke_erm_and_sample_metrics(smoke):
    values, tmp_path = smoke
    _, erm_setup, _, erm, _ = run_smoke(values, tmp_path, formulation="erm")
    assert erm_setup.heldout_batches is None  # no constraints: nothing to certify
    assert all(math.isnan(m) for m in erm["per_class_multiplier"])
    assert math.isnan(erm["pearson_r"])  # no multipliers: reported as null in metrics.json
    assert math.isfinite(erm["train_loss_pearson_r"])
    _, _, result, sample, _ = run_smoke(values, tmp_path, formulation="ecl-sample")
    table = result.multipliers["sample_loss"]
    assert table.shape == (200,) and bool((table > 1.0).all())  # one epoch visits every row
    assert len(sample["per_class_multiplier"]) == 10
    assert sample["sample_multiplier_max"] >= max(sample["per_class_multiplier"])
