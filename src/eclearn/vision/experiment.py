"""The interpolation experiment as a runner plug-in (``eclearn run interpolation-cpu``).

Paper §5 (interpolating classifiers): instead of minimising the average cross-entropy,
*require* the classifier to interpolate its training data, as equality constraints, and
read the final multipliers as a measure of how hard each constraint was to meet. Three
formulations share one :class:`~eclearn.PrimalDual` loop, one model, one optimizer and
one data stream, so the comparison is apples to apples:

``erm``
    Cross-entropy objective, no constraints (the baseline).
``ecl-class``
    No objective; one equality per class, "mean training cross-entropy of class c = 0",
    ``ecl.Equality("class_loss", size=num_classes)``. The value is returned as
    :class:`~eclearn.Ratio` (``per_class_loss``), so a mini-batch that misses a class
    contributes nothing to that class's term and held-out pooling is exact.
``ecl-sample``
    No objective; one equality per training sample, "cross-entropy of sample i = 0", a
    pointwise constraint with ``num_samples`` = training-set size indexed by the batches'
    ``"index"``. Its per-class multiplier is the mean of its samples' multipliers.

Metrics (``metrics.json``) follow the run-directory contract of ``DESIGN.md``:
``test_accuracy``, ``per_class_test_error``, ``per_class_multiplier``,
``per_class_train_loss`` (on the *un-augmented* training set), ``pearson_r`` and
``spearman_rho`` between per-class multipliers and per-class test errors with bootstrap
intervals (``*_low``/``*_high``), plus the confusion matrix, training accuracy and the
largest per-class training loss. ERM has no multipliers: its multiplier entries and their
correlations are null; ``train_loss_pearson_r`` (per-class training loss vs test error)
is reported for every formulation as the multiplier-free baseline of the same question.

A callback accumulates every training batch's per-class loss (from the step's own forward
pass: no extra compute) and stores one point per epoch in ``class_loss_curve.json``, so
every formulation has per-class training curves (``ecl-class`` also has per-step values in
``history.csv``). The file survives resume.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import Tensor, nn

import eclearn as ecl
from eclearn._io import atomic_write_text
from eclearn.batches import validation_split
from eclearn.experiments.base import Experiment, ExperimentConfig, RunContext, RunRecord, Setup
from eclearn.solver import Callback, FitResult, PrimalDual, SolverView
from eclearn.stats import correlation_report
from eclearn.vision.augment import Augment
from eclearn.vision.classwise import (
    confusion_matrix,
    per_class_loss,
    per_sample_loss,
)
from eclearn.vision.data import channel_stats, load_dataset, make_batches, to_tensor
from eclearn.vision.models import ConvMLP, ResNet18, SmallCNN

__all__ = [
    "CURVE_FILE",
    "FORMULATIONS",
    "ClassLossCurve",
    "InterpolationConfig",
    "InterpolationExperiment",
    "balanced_subset",
    "build_problem",
    "per_class_multipliers",
    "predict",
    "report_figures",
]

Formulation = Literal["erm", "ecl-class", "ecl-sample"]
FORMULATIONS: tuple[str, ...] = ("erm", "ecl-class", "ecl-sample")
CURVE_FILE = "class_loss_curve.json"
CLASS_CONSTRAINT = "class_loss"
SAMPLE_CONSTRAINT = "sample_loss"
_AUTOCAST = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_WIDTH = 32
DEFAULT_HIDDEN = 512


class InterpolationConfig(ExperimentConfig):
    """Settings of one interpolation run (defaults: the CPU preset's small CNN on the subset)."""

    formulation: Formulation = Field(
        "ecl-class", description="erm | ecl-class (one equality per class) | ecl-sample"
    )
    dataset: Literal["cifar10-subset", "cifar10", "cifar100"] = Field(
        "cifar10-subset", description="data set (path: --data or $ECLEARN_DATA)"
    )
    train_size: int | None = Field(
        None, ge=1, description="use a class-balanced subset of this many training images"
    )
    test_size: int | None = Field(
        None, ge=1, description="use a class-balanced subset of this many test images"
    )
    model: Literal["small-cnn", "conv-mlp", "resnet18"] = Field(
        "small-cnn", description="classifier"
    )
    width: int | None = Field(
        None, ge=1, description=f"small-cnn/conv-mlp channel width (default {DEFAULT_WIDTH})"
    )
    hidden: int | None = Field(
        None, ge=1, description=f"conv-mlp hidden units (default {DEFAULT_HIDDEN})"
    )
    epochs: int = Field(30, ge=1, description="epochs; the lr schedule spans them")
    max_steps: int | None = Field(
        None, ge=1, description="stop after this many steps (the schedule still spans epochs)"
    )
    batch_size: int = Field(128, ge=1)
    lr: float = Field(0.05, gt=0, description="primal SGD learning rate (peak)")
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["cosine", "multistep", "constant"] = Field(
        "cosine", description="cosine to 0 over the run (per step), or multistep (per epoch)"
    )
    milestones: list[int] = Field(
        [60, 120, 160], description="multistep: epochs at which the lr is multiplied by gamma"
    )
    gamma: float = Field(0.2, gt=0, le=1, description="multistep decay factor")
    dual_optimizer: Literal["adam", "sgd"] = Field("adam", description="dual ascent optimizer")
    dual_lr: float = Field(1e-2, ge=0, description="dual learning rate (0 freezes multipliers)")
    multiplier_init: float = Field(1.0, description="initial value of every multiplier")
    crop_padding: int = Field(4, ge=0, description="random-crop padding (0: no crop)")
    flip: bool = Field(True, description="random horizontal flips")
    rotation: float = Field(0.0, ge=0, le=180, description="max random rotation in degrees")
    autocast: Literal["none", "bf16", "fp16"] = Field(
        "none", description="mixed precision for GPU runs (PrimalDual(autocast=...))"
    )
    channels_last: bool = Field(True, description="channels-last memory format (faster convs)")
    tolerance: float = Field(
        0.01, gt=0, description="a training loss ≤ tolerance counts as interpolated"
    )
    eval_batch_size: int = Field(1000, ge=1)
    heldout_batch_size: int = Field(
        50, ge=1, description="test batches of the certificate's block bootstrap"
    )
    bootstrap_resamples: int = Field(2000, ge=1, description="resamples of the bootstrap CIs")
    checkpoint_every: int = Field(500, ge=1, description="steps between checkpoints")

    @field_validator("milestones")
    @classmethod
    def _increasing(cls, value: list[int]) -> list[int]:
        if any(m < 1 for m in value) or any(b <= a for a, b in itertools.pairwise(value)):
            raise ValueError(f"milestones must be increasing epochs ≥ 1, got {value}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> InterpolationConfig:
        if self.model == "resnet18" and self.width is not None:
            raise ValueError(
                "width applies to model = 'small-cnn' or 'conv-mlp' only (ResNet-18 is fixed)"
            )
        if self.model != "conv-mlp" and self.hidden is not None:
            raise ValueError(f"hidden applies to model = 'conv-mlp' only, not {self.model!r}")
        if self.select != "last":
            raise ValueError(
                f"select = {self.select!r} needs a validation split, which this experiment does "
                "not hold out (its held-out data is the test set); use select = 'last'"
            )
        return self


# ---------------------------------------------------------------------------- data
def balanced_subset(labels: np.ndarray, size: int | None, num_classes: int) -> np.ndarray:
    """Row ids of a class-balanced subset: the first images of each class in round-robin
    order (deterministic, no RNG), returned in their original order. ``None``: all rows."""
    labels = np.asarray(labels)
    if size is None or size >= labels.shape[0]:
        return np.arange(labels.shape[0])
    if size < num_classes:
        raise ValueError(
            f"a subset of {size} images cannot hold every one of the {num_classes} classes; "
            f"use at least {num_classes}"
        )
    rank = np.empty(labels.shape[0], dtype=np.int64)
    for c in range(num_classes):
        rows = np.flatnonzero(labels == c)
        rank[rows] = np.arange(rows.size)
    order = np.lexsort((labels, rank))  # by rank within class, then by class
    return np.sort(order[:size])


# ---------------------------------------------------------------------------- problem
class ClassLossCurve(Callback):
    """Per-class mean training loss of every epoch, from the training steps' own losses.

    ``evaluate`` returns each batch's per-class loss sums and counts under ``"extras"``;
    :meth:`on_evaluation` (called for training steps only, so held-out evaluation is not
    counted) accumulates them, and at each epoch's end the epoch's means become one point of
    ``curve`` (``steps``, ``epochs``, ``loss`` = one list of per-class means per point). The
    curve and the running sums are the callback's ``state_dict``: the solver's checkpoints
    carry them and a resumed run continues the same curve. The losses are those of the
    augmented batches under the changing model, as in any "training loss" curve; the final
    un-augmented losses are in the metrics.
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.curve: dict[str, list[Any]] = {"steps": [], "epochs": [], "loss": []}
        self._sums: Tensor | None = None
        self._counts: Tensor | None = None

    def on_evaluation(self, solver: Any, evaluation: Any) -> None:
        extras = evaluation.extras
        if "class_sums" not in extras:
            return
        sums = extras["class_sums"].detach().double()
        counts = extras["class_counts"].detach().double()
        if self._sums is None or self._counts is None:
            self._sums, self._counts = sums.clone(), counts.clone()
        else:
            self._sums += sums
            self._counts += counts

    def on_fit_start(self, solver: SolverView) -> None:
        if solver.step == 0:
            for values in self.curve.values():
                values.clear()
            self._sums = self._counts = None

    def on_epoch_end(self, solver: SolverView) -> None:
        if self._sums is None or self._counts is None:
            return
        sums, counts = self._sums.cpu(), self._counts.cpu()
        means = torch.where(counts > 0, sums / counts.clamp_min(1), torch.nan)
        self.curve["steps"].append(int(solver.step))
        self.curve["epochs"].append(int(solver.epoch))
        self.curve["loss"].append([None if math.isnan(v) else float(v) for v in means.tolist()])
        self._sums = self._counts = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": list(self.curve["steps"]),
            "epochs": list(self.curve["epochs"]),
            "loss": [list(point) for point in self.curve["loss"]],
            "sums": None if self._sums is None else self._sums.cpu().clone(),
            "counts": None if self._counts is None else self._counts.cpu().clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for key in ("steps", "epochs", "loss"):
            self.curve[key][:] = list(state[key])
        self._sums = None if state["sums"] is None else state["sums"].clone()
        self._counts = None if state["counts"] is None else state["counts"].clone()


def build_problem(config: InterpolationConfig, num_classes: int, num_samples: int) -> ecl.Problem:
    """The problem of ``config.formulation`` (see the module docstring)."""
    formulation = config.formulation
    channels_last = config.channels_last

    def evaluate(model: nn.Module, batch: Mapping[str, Tensor]) -> dict[str, Any]:
        x = batch["x"]
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = model(x).float()
        labels = batch["y"]
        if formulation == "ecl-sample":
            losses = per_sample_loss(logits, labels)
            detached = losses.detach()
            extras = {
                "class_sums": detached.new_zeros(num_classes).index_add(0, labels, detached),
                "class_counts": torch.bincount(labels, minlength=num_classes),
            }
            return {SAMPLE_CONSTRAINT: losses, "extras": extras}
        ratio = per_class_loss(logits, labels, num_classes)
        extras = {"class_sums": ratio.numerator.detach(), "class_counts": ratio.denominator}
        if formulation == "erm":
            objective = ratio.numerator.sum() / max(labels.shape[0], 1)
            return {"objective": objective, "extras": extras}
        return {CLASS_CONSTRAINT: ratio, "extras": extras}

    constraints: list[ecl.Constraint] = []
    if formulation == "ecl-class":
        constraints.append(
            ecl.Equality(
                CLASS_CONSTRAINT,
                size=num_classes,
                init=config.multiplier_init,
                tolerance=config.tolerance,
            )
        )
    elif formulation == "ecl-sample":
        constraints.append(
            ecl.Equality(
                SAMPLE_CONSTRAINT,
                pointwise=True,
                num_samples=num_samples,
                init=config.multiplier_init,
                tolerance=config.tolerance,
            )
        )
    return ecl.Problem(evaluate, constraints)


def _model(config: InterpolationConfig, num_classes: int) -> nn.Module:
    if config.model == "resnet18":
        return ResNet18(num_classes)
    if config.model == "conv-mlp":
        return ConvMLP(num_classes, config.width or DEFAULT_WIDTH, config.hidden or DEFAULT_HIDDEN)
    return SmallCNN(num_classes, config.width or DEFAULT_WIDTH)


def _scheduler(
    config: InterpolationConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> tuple[Any, str]:
    if config.schedule == "cosine":
        total = config.epochs * steps_per_epoch
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total), "step"
    if config.schedule == "multistep":
        return (
            torch.optim.lr_scheduler.MultiStepLR(optimizer, config.milestones, config.gamma),
            "epoch",
        )
    return None, "step"


# ---------------------------------------------------------------------------- evaluation
@torch.no_grad()
def predict(
    model: nn.Module,
    x: Tensor,
    batch_size: int = 1000,
    *,
    channels_last: bool = True,
    autocast: torch.dtype | None = None,
) -> Tensor:
    """Logits ``float32 [N, C]`` (on the CPU) of ``model`` in eval mode on images ``x``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    try:
        for start in range(0, x.shape[0], batch_size):
            chunk = x[start : start + batch_size].to(device)
            if channels_last:
                chunk = chunk.contiguous(memory_format=torch.channels_last)
            if autocast is not None:
                with torch.autocast(device.type, dtype=autocast):
                    logits = model(chunk)
            else:
                logits = model(chunk)
            out.append(logits.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def per_class_multipliers(
    formulation: str, multipliers: Mapping[str, Tensor], labels: Tensor, num_classes: int
) -> Tensor | None:
    """Per-class multipliers ``float64 [C]``: the class equalities' own (``ecl-class``), the
    mean of each class's per-sample multipliers (``ecl-sample``), None for ``erm``."""
    if formulation == "ecl-class":
        return multipliers[CLASS_CONSTRAINT].detach().double().cpu().reshape(-1)
    if formulation == "ecl-sample":
        table = multipliers[SAMPLE_CONSTRAINT].detach().double().cpu().reshape(-1)
        labels = labels.cpu()
        sums = torch.zeros(num_classes, dtype=torch.float64).index_add(0, labels, table)
        counts = torch.bincount(labels, minlength=num_classes).double()
        return torch.where(counts > 0, sums / counts.clamp_min(1), torch.nan)
    return None


def _correlations(
    x: Sequence[float] | None, y: Sequence[float], prefix: str, resamples: int, seed: int
) -> dict[str, float]:
    """``correlation_report`` over the finite pairs, keys prefixed; NaN where undefined."""
    keys = ("pearson_r", "spearman_rho")
    empty = {f"{prefix}{k}{s}": math.nan for k in keys for s in ("", "_low", "_high")}
    if x is None:
        return empty
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(xa) & np.isfinite(ya)
    if ok.sum() < 3:
        return empty
    report = correlation_report(xa[ok], ya[ok], n_resamples=resamples, seed=seed)
    return {
        f"{prefix}{k}{s}": float(report[f"{k}{s}"]) for k in keys for s in ("", "_low", "_high")
    }


def _class_accuracy(logits: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Per-class accuracy in float64 from exact counts (NaN for a class with no samples)."""
    counts = confusion_matrix(logits, labels, num_classes).double()
    return counts.diagonal() / counts.sum(1)


def _nan_list(values: Tensor | None, size: int) -> list[float]:
    if values is None:
        return [math.nan] * size
    return [float(v) for v in values.tolist()]


# ---------------------------------------------------------------------------- experiment
class InterpolationExperiment(Experiment):
    """Interpolating classifiers (paper §5): ERM vs per-class / per-sample loss = 0."""

    name = "interpolation"
    description = (
        "interpolating CIFAR classifiers (paper §5): ERM vs per-class (or per-sample) "
        "cross-entropy = 0; per-class multipliers vs per-class test error"
    )
    Config = InterpolationConfig
    table_metrics = (
        "test_accuracy",
        "train_accuracy",
        "max_per_class_train_loss",
        "constraints_met",
        "pearson_r",
        "pearson_r_low",
        "pearson_r_high",
        "spearman_rho",
        "train_loss_pearson_r",
    )
    budget_keys = frozenset({"max_steps"})

    @classmethod
    def memory_estimate(cls, config: ExperimentConfig) -> dict[str, float]:
        """Order-of-magnitude bytes (float32, 32 × 32 images): activations of a training
        and an evaluation batch (about 12 numbers per pixel and channel: forward, backward
        and the layers' buffers; ResNet-18 counted at width 64), the parameters with their
        gradients and momenta for the widths, and the certificate's vectorised bootstrap
        (resamples × test batches × classes)."""
        assert isinstance(config, InterpolationConfig)
        width = 64 if config.model == "resnet18" else config.width or DEFAULT_WIDTH
        hidden = config.hidden or DEFAULT_HIDDEN
        per_image = 4.0 * 32 * 32 * width * 12
        params = 20.0 * width**2 + (64.0 * width * hidden if config.model == "conv-mlp" else 0)
        blocks = (config.test_size or 10_000) / config.heldout_batch_size
        return {
            "batch_size": per_image * config.batch_size,
            "eval_batch_size": per_image / 3 * config.eval_batch_size,
            "width": 4.0 * 4 * params,
            "bootstrap_resamples": 8.0 * 100 * config.bootstrap_resamples * max(blocks, 1.0),
        }

    def setup(self, config: ExperimentConfig, context: RunContext) -> Setup:
        assert isinstance(config, InterpolationConfig)
        device = torch.device(context.device)
        data = load_dataset(config.dataset, context.data_path)
        num_classes = data.num_classes
        train_rows = balanced_subset(data.y_train, config.train_size, num_classes)
        test_rows = balanced_subset(data.y_test, config.test_size, num_classes)
        x_train_raw = data.x_train[train_rows]
        mean, std = channel_stats(x_train_raw)
        x_train = to_tensor(x_train_raw, mean, std)
        x_test = to_tensor(data.x_test[test_rows], mean, std)
        y_train = torch.as_tensor(data.y_train[train_rows])
        y_test = torch.as_tensor(data.y_test[test_rows])
        validation = None
        share = config.validation_share()
        if share > 0:  # model selection judges a split of the training images, never the test
            kept, validation = validation_split(
                {"x": x_train, "y": y_train}, share, seed=context.seed, stratify=y_train
            )
            x_train, y_train = kept["x"], kept["y"]
        num_train = int(y_train.shape[0])

        augment = Augment(
            crop_padding=config.crop_padding,
            flip=config.flip,
            rotation_degrees=config.rotation,
            fill=(-mean / std).tolist(),  # black padding of the raw image, normalised
        )
        batches = make_batches(
            x_train, y_train, config.batch_size, shuffle=True, augment=augment, device=device
        )
        model = _model(config, num_classes).to(device)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        tracker = ClassLossCurve(num_classes)
        problem = build_problem(config, num_classes, num_train)
        optimizer = torch.optim.SGD(
            model.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.nesterov and config.momentum > 0,
            weight_decay=config.weight_decay,
        )
        scheduler, interval = _scheduler(config, optimizer, len(batches))
        dual_cls = ecl.dual.Adam if config.dual_optimizer == "adam" else ecl.dual.SGD
        solver = PrimalDual(
            problem,
            model,
            optimizer,
            dual_cls(lr=config.dual_lr),
            scheduler=scheduler,
            scheduler_interval=interval,
            device=device,
            autocast=_AUTOCAST[config.autocast],
        )
        context.log(
            f"interpolation [{config.formulation}]: {config.dataset} "
            f"{num_train} train / {int(y_test.shape[0])} test images, {num_classes} classes, "
            f"{config.model}"
            + (f" width {config.width or DEFAULT_WIDTH}" if config.model != "resnet18" else "")
            + f" ({sum(p.numel() for p in model.parameters())} parameters), "
            f"{len(batches)} steps/epoch × {config.epochs} epochs"
        )
        state = {
            "config": config,
            "num_classes": num_classes,
            "class_names": list(data.class_names),
            "x_train": x_train,
            "y_train": y_train,
            "x_test": x_test,
            "y_test": y_test,
            "curve": tracker.curve,
            "seed": context.seed,
        }
        constrained = config.formulation != "erm"
        return Setup(
            solver=solver,
            train_batches=batches,
            epochs=config.epochs,
            max_steps=config.max_steps,
            callbacks=[tracker],
            state=state,
            # certificate.json: the constraints on the un-augmented training set and a block
            # bootstrap over test batches (ERM has no constraints to certify)
            heldout_batches=make_batches(
                x_test, y_test, config.heldout_batch_size, shuffle=False, device=device
            )
            if constrained
            else None,
            certify_train_batches=make_batches(
                x_train, y_train, config.eval_batch_size, shuffle=False, device=device
            )
            if constrained
            else None,
            validation_batches=None
            if validation is None
            else make_batches(
                validation["x"],
                validation["y"],
                config.eval_batch_size,
                shuffle=False,
                device=device,
            ),
            validation_description=(
                "no validation split"
                if validation is None
                else f"validation split ({len(validation['y'])} of {len(train_rows)} training "
                f"images, stratified by class, seed {context.seed})"
            ),
        )

    def metrics(self, setup: Setup, result: FitResult, context: RunContext) -> dict[str, Any]:
        state = setup.state
        config: InterpolationConfig = state["config"]
        num_classes: int = state["num_classes"]
        model = setup.solver.model
        autocast = _AUTOCAST[config.autocast]
        kwargs: dict[str, Any] = {"channels_last": config.channels_last, "autocast": autocast}
        y_train, y_test = state["y_train"], state["y_test"]
        train_logits = predict(model, state["x_train"], config.eval_batch_size, **kwargs)
        test_logits = predict(model, state["x_test"], config.eval_batch_size, **kwargs)

        # the per-epoch class-loss curve is an artifact of the run directory (for reports)
        atomic_write_text(Path(context.run_dir) / CURVE_FILE, json.dumps(state["curve"]))
        train_losses = F.cross_entropy(train_logits.double(), y_train, reduction="none")
        train_class = per_class_loss(train_logits.double(), y_train, num_classes).value
        test_class = per_class_loss(test_logits.double(), y_test, num_classes).value
        train_acc = _class_accuracy(train_logits, y_train, num_classes)
        test_error = 1.0 - _class_accuracy(test_logits, y_test, num_classes)
        test_pred = test_logits.argmax(1)
        multipliers = per_class_multipliers(
            config.formulation, result.multipliers, y_train, num_classes
        )
        seed = int(state.get("seed", context.seed))
        error_list = test_error.tolist()
        out: dict[str, Any] = {
            "dataset": config.dataset,
            "model": config.model,
            "num_classes": num_classes,
            "num_train": int(y_train.shape[0]),
            "num_test": int(y_test.shape[0]),
            "test_accuracy": float((test_pred == y_test).double().mean()),
            "train_accuracy": float((train_logits.argmax(1) == y_train).double().mean()),
            "test_loss": float(F.cross_entropy(test_logits.double(), y_test)),
            "train_loss": float(train_losses.mean()),
            "max_per_class_train_loss": float(train_class.max()),
            "constraints_met": bool(train_class.max() <= config.tolerance),
            "tolerance": config.tolerance,
            "train_samples_below_tolerance": float(
                (train_losses <= config.tolerance).double().mean()
            ),
            "per_class_test_error": error_list,
            "per_class_multiplier": _nan_list(multipliers, num_classes),
            "per_class_train_loss": train_class.tolist(),
            "per_class_test_loss": test_class.tolist(),
            "per_class_train_error": (1.0 - train_acc).tolist(),
        }
        multiplier_list = None if multipliers is None else multipliers.tolist()
        resamples = config.bootstrap_resamples
        out.update(_correlations(multiplier_list, error_list, "", resamples, seed))
        out.update(_correlations(train_class.tolist(), error_list, "train_loss_", resamples, seed))
        if config.formulation == "ecl-sample":
            table = result.multipliers[SAMPLE_CONSTRAINT].detach().double().reshape(-1)
            out["sample_multiplier_mean"] = float(table.mean())
            out["sample_multiplier_max"] = float(table.max())
        out["test_confusion_matrix"] = confusion_matrix(test_pred, y_test, num_classes).tolist()
        out["class_names"] = list(state["class_names"])
        out["ms_per_step"] = 1000.0 * result.seconds / max(result.steps, 1)
        return out

    def figures(self, setup: Setup, result: FitResult, figure_dir: Path) -> list[Path]:
        from eclearn.report.figures import new_figure, save_figure

        state = setup.state
        config: InterpolationConfig = state["config"]
        num_classes: int = state["num_classes"]
        names: list[str] = state["class_names"]
        figure_dir = Path(figure_dir)
        figure_dir.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {
            "channels_last": config.channels_last,
            "autocast": _AUTOCAST[config.autocast],
        }
        model = setup.solver.model
        test_logits = predict(model, state["x_test"], config.eval_batch_size, **kwargs)
        y_test = state["y_test"]
        error = (1.0 - _class_accuracy(test_logits, y_test, num_classes)).numpy()
        multipliers = per_class_multipliers(
            config.formulation, result.multipliers, state["y_train"], num_classes
        )
        paths: list[Path] = []
        label = config.formulation
        if multipliers is not None:
            mult = multipliers.numpy()
            fig, (ax,) = new_figure(1, width=5.5, height=4.2)
            _scatter_with_fit(ax, mult, error, names if num_classes <= 20 else None)
            ax.set_xlabel("final multiplier" + (" (class mean)" if label == "ecl-sample" else ""))
            ax.set_ylabel("test error")
            ax.set_title(f"{label}: multiplier vs test error, r = {_r(mult, error)}")
            ax.ticklabel_format(axis="x", useOffset=False)
            fig.subplots_adjust(left=0.16, bottom=0.12)
            paths.append(save_figure(fig, figure_dir / "multiplier_vs_error.png"))

            fig, (ax,) = new_figure(1, width=max(6.0, 0.3 * num_classes), height=3.4)
            at = np.arange(num_classes)
            ax.bar(at, mult, color="tab:blue")
            if num_classes <= 20:
                ax.set_xticks(at, names, rotation=45, ha="right", fontsize="small")
            ax.set_ylabel("final multiplier")
            ax.set_title(f"{label}: multipliers by class")
            fig.subplots_adjust(bottom=0.25)
            paths.append(save_figure(fig, figure_dir / "multipliers_by_class.png"))

        cm = confusion_matrix(test_logits.argmax(1), y_test, num_classes).double()
        rates = (cm / cm.sum(1, keepdim=True).clamp_min(1)).numpy()
        fig, (ax,) = new_figure(1, width=6.0, height=5.4)
        image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
        fig.colorbar(image, ax=ax, fraction=0.046)
        if num_classes <= 20:
            ticks = np.arange(num_classes)
            ax.set_xticks(ticks, names, rotation=45, ha="right", fontsize="small")
            ax.set_yticks(ticks, names, fontsize="small")
            if num_classes <= 10:
                for t in range(num_classes):
                    for p in range(num_classes):
                        ax.text(
                            p,
                            t,
                            f"{rates[t, p]:.2f}",
                            ha="center",
                            va="center",
                            fontsize=6,
                            color="white" if rates[t, p] > 0.5 else "black",
                        )
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{label}: test confusion (row-normalised)")
        fig.subplots_adjust(left=0.2, right=0.95, bottom=0.17, top=0.94)
        paths.append(save_figure(fig, figure_dir / "confusion_matrix.png"))

        curve = state["curve"]
        history = setup.solver.history
        columns = [f"value/{CLASS_CONSTRAINT}[{c}]" for c in range(num_classes)]
        per_step = config.formulation == "ecl-class" and all(c in history for c in columns)
        if curve["steps"] or per_step:
            fig, (ax,) = new_figure(1, width=7.0, height=3.8)
            colors = _colors(num_classes)
            if per_step:
                from eclearn.report.figures import moving_average

                steps = history["step"]
                window = max(1, len(steps) // 50)
                for c in range(num_classes):
                    smooth = moving_average(history[columns[c]], window)
                    ax.plot(
                        steps,
                        smooth,
                        color=colors[c],
                        linewidth=1.0,
                        label=names[c] if num_classes <= 10 else None,
                    )
                source = "per step (moving average of the batch values)"
            else:
                loss = np.asarray(
                    [[np.nan if v is None else v for v in row] for row in curve["loss"]]
                )
                for c in range(num_classes):
                    ax.plot(
                        curve["steps"],
                        loss[:, c],
                        color=colors[c],
                        linewidth=1.0,
                        marker="." if len(curve["steps"]) < 40 else None,
                        label=names[c] if num_classes <= 10 else None,
                    )
                source = "per epoch (mean over the epoch's batches)"
            ax.axhline(
                config.tolerance,
                color="0.4",
                linestyle="--",
                linewidth=0.8,
                label=f"tolerance {config.tolerance:g}",
            )
            ax.set_yscale("log")
            ax.set_xlabel("step")
            ax.set_ylabel("training cross-entropy")
            ax.set_title(f"{label}: per-class training loss, {source}", fontsize="medium")
            ax.legend(fontsize="x-small", ncol=2)
            paths.append(save_figure(fig, figure_dir / "class_loss_curves.png"))
        return paths

    @classmethod
    def report_figures(cls, runs: Sequence[RunRecord], out_dir: Path) -> list[Path]:
        return report_figures(runs, out_dir)


# ---------------------------------------------------------------------------- figures
def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "viridis"]
    return [cmap(i if n <= 10 else i / max(n - 1, 1)) for i in range(n)]


def _r(x: np.ndarray, y: np.ndarray) -> str:
    from eclearn.stats import pearson

    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 2:
        return "n/a"
    r = pearson(x[ok], y[ok])
    return "n/a" if math.isnan(r) else f"{r:.3f}"


def _scatter_with_fit(
    ax: Any, x: np.ndarray, y: np.ndarray, names: Sequence[str] | None, **style: Any
) -> None:
    ok = np.isfinite(x) & np.isfinite(y)
    ax.scatter(x[ok], y[ok], **({"color": "tab:blue", "s": 24} | style))
    if names is not None:
        for xi, yi, name in zip(x[ok], y[ok], np.asarray(names)[ok], strict=True):
            ax.annotate(str(name), (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if ok.sum() >= 2 and np.ptp(x[ok]) > 0:
        slope, intercept = np.polyfit(x[ok], y[ok], 1)
        grid = np.linspace(x[ok].min(), x[ok].max(), 50)
        ax.plot(
            grid,
            slope * grid + intercept,
            color=style.get("color", "tab:red"),
            linewidth=1.0,
            linestyle="--",
        )


def _group_runs(runs: Sequence[RunRecord]) -> list[tuple[str, list[RunRecord]]]:
    from eclearn.report.tables import group_runs

    return [(g.label or g.formulation, g.runs) for g in group_runs(runs)]


def _read_curve(run: RunRecord) -> dict[str, Any] | None:
    path = Path(run.path) / CURVE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def report_figures(runs: Sequence[RunRecord], out_dir: Path) -> list[Path]:
    """Cross-run figures for ``eclearn report``: multiplier vs test error of every seed
    (one panel per group with multipliers), accuracy and worst class loss per group, and
    the largest per-class training loss per epoch (mean over seeds) per group."""
    from eclearn.report.figures import new_figure, save_figure

    out_dir = Path(out_dir)
    groups = _group_runs([r for r in runs if r.complete])
    if not groups:
        return []
    paths: list[Path] = []

    with_mult = [
        (label, members)
        for label, members in groups
        if any(
            np.isfinite(
                np.asarray((r.metrics or {}).get("per_class_multiplier") or [], dtype=float)
            ).any()
            for r in members
        )
    ]
    if with_mult:
        fig, axes = new_figure(len(with_mult), width=6.0, height=4.0)
        for ax, (label, members) in zip(axes, with_mult, strict=True):
            colors = _colors(max(len(members), 1))
            for color, run in zip(colors, members, strict=True):
                m = run.metrics or {}
                x = np.asarray(m.get("per_class_multiplier") or [], dtype=float)
                y = np.asarray(m.get("per_class_test_error") or [], dtype=float)
                if x.shape != y.shape or not x.size:
                    continue
                r = m.get("pearson_r")
                low, high = m.get("pearson_r_low"), m.get("pearson_r_high")
                text = "n/a" if r is None else f"{r:.3f}"
                if low is not None and high is not None:
                    text += f" [{low:.2f}, {high:.2f}]"
                _scatter_with_fit(ax, x, y, None, color=color, s=18)
                ax.scatter([], [], color=color, label=f"seed {run.seed}: r = {text}")
            ax.set_xlabel("final per-class multiplier")
            ax.set_ylabel("per-class test error")
            ax.set_title(f"{label}: multiplier vs test error", fontsize="medium")
            ax.legend(fontsize="x-small")
        paths.append(save_figure(fig, out_dir / "interpolation-multiplier-vs-error.png"))

    fig, (acc_ax, loss_ax) = new_figure(2, width=max(6.0, 1.6 * len(groups)), height=3.0)
    at = np.arange(len(groups))
    for ax, key, title in (
        (acc_ax, "test_accuracy", "test accuracy"),
        (loss_ax, "max_per_class_train_loss", "largest per-class training loss"),
    ):
        means, spreads = [], []
        for _, members in groups:
            values = np.asarray(
                [
                    r.metrics.get(key)
                    for r in members
                    if r.metrics and r.metrics.get(key) is not None
                ],
                dtype=float,
            )
            means.append(values.mean() if values.size else np.nan)
            spreads.append(values.std(ddof=1) if values.size > 1 else 0.0)
        ax.bar(at, means, 0.6, yerr=spreads, capsize=3, color="tab:blue")
        ax.set_xticks(at, [label for label, _ in groups], fontsize="small")
        ax.set_title(f"{title} (mean ± sd over seeds)", fontsize="medium")
    loss_ax.set_yscale("log")
    tolerances = {r.metrics.get("tolerance") for _, ms in groups for r in ms if r.metrics}
    for tol in tolerances:
        if isinstance(tol, (int, float)):
            loss_ax.axhline(tol, color="0.4", linestyle="--", linewidth=0.8)
    paths.append(save_figure(fig, out_dir / "interpolation-summary.png"))

    curves = []
    for label, members in groups:
        worst = []
        steps: Any = []
        for run in members:
            curve = _read_curve(run)
            if not curve or not curve.get("loss"):
                continue
            loss = np.asarray(
                [[np.nan if v is None else v for v in row] for row in curve["loss"]], dtype=float
            )
            worst.append(np.nanmax(loss, axis=1))
            steps = curve["steps"] if len(curve["steps"]) > len(steps) else steps
        if worst:
            n = min(len(w) for w in worst)
            curves.append((label, np.asarray(steps[:n]), np.mean([w[:n] for w in worst], 0)))
    if curves:
        fig, (ax,) = new_figure(1, width=7.0, height=3.6)
        for color, (label, steps, worst) in zip(_colors(len(curves)), curves, strict=True):
            ax.plot(steps, worst, color=color, label=label, marker="." if len(steps) < 40 else None)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("largest per-class training loss")
        ax.set_title(
            "largest per-class training loss per epoch (mean over seeds)", fontsize="medium"
        )
        ax.legend(fontsize="small")
        paths.append(save_figure(fig, out_dir / "interpolation-class-loss.png"))
    return paths
