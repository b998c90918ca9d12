"""Certificates: how far to trust the constraints, and what the multipliers say.

``certify`` reads a trained model and its multipliers and reports, per constraint:

- the training value and the held-out value with a confidence interval — a bootstrap over
  the held-out batches (pass small batches, ideally single samples, for a sample bootstrap;
  statistics are pooled as sums so ``ecl.Ratio`` values stay exact) or, for statistics
  the user declares bounded, Hoeffding's interval;
- a verdict at the declared tolerance: *satisfied* (the whole interval is within
  tolerance), *violated* (none of it is), *cannot tell* (otherwise);
- the sensitivity: by the envelope theorem the optimal objective moves by ``−μ Δb`` when
  an equality's right-hand side moves by ``Δb``, and by ``−λ Δc`` when an inequality's
  bound is raised by ``Δc``; relaxing a constraint by ``δ`` therefore improves the optimum
  by about ``|μ| δ``. :func:`check_sensitivity` re-solves with the constraint relaxed to
  check that first-order prediction;
- the empirical duality gap: the model's training objective minus ``min_θ L(θ, μ)`` at the
  final multipliers, estimated by further primal steps with the multipliers frozen.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from eclearn.dual import SGD
from eclearn.eager import eager_optimizer
from eclearn.evaluation import evaluate
from eclearn.problem import Constraint, Problem

__all__ = [
    "Certificate",
    "ConstraintCertificate",
    "SensitivityCheck",
    "certify",
    "check_sensitivity",
    "duality_gap",
    "relaxed_problem",
]

SATISFIED, VIOLATED, UNSURE = "satisfied", "violated", "cannot tell"


@dataclass
class ConstraintCertificate:
    name: str
    kind: str
    tolerance: float
    train_value: list[float]
    heldout_value: list[float]
    interval: list[tuple[float, float]]
    method: str
    verdicts: list[str]
    multiplier: list[float]
    price: list[float]

    @property
    def verdict(self) -> str:
        if all(v == SATISFIED for v in self.verdicts):
            return SATISFIED
        if any(v == VIOLATED for v in self.verdicts):
            return VIOLATED
        return UNSURE

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "tolerance": self.tolerance,
            "train_value": self.train_value,
            "heldout_value": self.heldout_value,
            "interval": [list(i) for i in self.interval],
            "method": self.method,
            "verdicts": self.verdicts,
            "verdict": self.verdict,
            "multiplier": self.multiplier,
            "price_per_unit_relaxation": self.price,
        }


@dataclass
class Certificate:
    confidence: float
    constraints: dict[str, ConstraintCertificate]
    train_objective: float | None
    heldout_objective: float | None
    duality_gap: dict[str, Any] | None = None
    sensitivity_checks: list[dict[str, Any]] = field(default_factory=list)
    pointwise: dict[str, dict[str, float]] = field(default_factory=dict)

    def summary(self, delta: float | None = None) -> str:
        """Plain words: what holds at this confidence and what relaxing would buy."""
        level = f"{self.confidence:.0%}"
        groups: dict[str, list[str]] = {SATISFIED: [], VIOLATED: [], UNSURE: []}
        for name, c in self.constraints.items():
            groups[c.verdict].append(f"{name} ({len(c.verdicts)})" if len(c.verdicts) > 1 else name)
        parts = []
        if groups[SATISFIED]:
            parts.append(
                f"{', '.join(groups[SATISFIED])} hold on held-out data at {level} confidence"
            )
        if groups[VIOLATED]:
            parts.append(
                f"{', '.join(groups[VIOLATED])} are violated on held-out data at {level} confidence"
            )
        if groups[UNSURE]:
            parts.append(
                f"for {', '.join(groups[UNSURE])} the held-out data cannot tell at "
                f"{level} confidence"
            )
        sentences = ["; ".join(parts) + "." if parts else "no constraints."]
        for name, c in self.constraints.items():
            if not c.price or max(c.price) == 0:  # e.g. fixed penalty weights: no prices
                continue
            price = max(c.price)
            step = delta if delta is not None else max(c.tolerance, 1e-2)
            sentences.append(
                f"Relaxing {name} by {step:g} would improve the optimal objective by about "
                f"{price * step:.3g} (largest |multiplier| {price:.3g})."
            )
        if self.duality_gap is not None:
            gap = self.duality_gap
            text = f"Empirical duality gap ≈ {gap['gap']:.3g}"
            if not gap["feasible"]:
                text += " (the model is not feasible on training data: the gap is not a bound)"
            sentences.append(text + ".")
        return " ".join(sentences)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able certificate (what ``certificate.json`` holds)."""
        return {
            "confidence": self.confidence,
            "summary": self.summary(),
            "train_objective": self.train_objective,
            "heldout_objective": self.heldout_objective,
            "constraints": {n: c.to_dict() for n, c in self.constraints.items()},
            "pointwise": self.pointwise,
            "duality_gap": self.duality_gap,
            "sensitivity_checks": self.sensitivity_checks,
        }


def _block_sums(
    problem: Problem, model: nn.Module, batches: Iterable[Mapping[str, Any]], inference: bool
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per batch, each average constraint's (numerator, denominator) sums."""
    parts: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {
        c.name: ([], []) for c in problem.average
    }
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad() if inference else torch.enable_grad():
            for batch in batches:
                ev = problem(model, batch, exact=True)
                for c in problem.average:
                    num, den = ev.sums(c.name, exact=True)
                    parts[c.name][0].append(num.detach().double().cpu().numpy())
                    parts[c.name][1].append(den.detach().double().cpu().numpy())
    finally:
        model.train(was_training)
    return {n: (np.stack(a), np.stack(b)) for n, (a, b) in parts.items() if a}


BOOTSTRAP_ELEMENTS = 1 << 24
"""Batch elements gathered per vectorised chunk of resamples (64 MB of float32)."""


def _row_bootstrap(
    problem: Problem,
    model: nn.Module,
    batch: Mapping[str, Any],
    n_resamples: int,
    rng: np.random.Generator,
    inference: bool,
) -> dict[str, np.ndarray]:
    """Each average constraint's value on ``n_resamples`` row-resamples of one batch.

    Vectorised, fastest first:

    1. *additive statistics* (a mean, a sum or an ``ecl.Ratio`` of sums over rows): every
       row is evaluated once (``torch.func.vmap`` over one-row batches) and each
       resample's value is a matrix product of its row counts with the per-row values —
       used only after checking that this reproduces the full batch's value and a plain
       evaluation of the first resample;
    2. otherwise chunks of resamples are gathered into ``[chunk, rows, ...]`` tensors and
       evaluated with ``vmap`` (one call per chunk), again checked on the first resample;
    3. ``evaluate`` functions that vmap cannot trace (``.item()``, data-dependent shapes,
       random numbers) are evaluated one resample at a time.

    The resamples are the same in all three."""
    rows = next(v.shape[0] for v in batch.values() if isinstance(v, Tensor) and v.dim() > 0)
    picks = torch.from_numpy(rng.integers(0, rows, size=(n_resamples, rows)))
    names = [c.name for c in problem.average]
    keys = [
        k for k, v in batch.items() if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == rows
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad() if inference else torch.enable_grad():
            values = _additive_resamples(problem, model, batch, keys, names, picks)
            if values is None:
                values = _vmapped_resamples(problem, model, batch, keys, names, picks)
            if values is None:
                values = _looped_resamples(problem, model, batch, keys, names, picks)
    finally:
        model.train(was_training)
    return {name: v.double().cpu().numpy() for name, v in zip(names, values, strict=True)}


def _resample(batch: Mapping[str, Any], keys: list[str], pick: Tensor) -> dict[str, Any]:
    sample = dict(batch)
    for k in keys:
        sample[k] = batch[k][pick.to(batch[k].device)]
    return sample


def _agrees(values: Tensor, plain: Tensor) -> bool:
    plain = plain.detach().reshape(-1).to(values.dtype)
    scale = float(plain.abs().max()) if plain.numel() else 0.0
    return bool(
        torch.allclose(values, plain, rtol=1e-4, atol=1e-6 * max(scale, 1.0), equal_nan=True)
    )


def _combine(w: Tensor, num: Tensor, den: Tensor, rule: str) -> Tensor:
    """Values of row-count vectors ``w`` from per-row (numerator, denominator) sums:
    ``pooled`` (``w·num / w·den``: a mean or a Ratio) or ``summed`` (``w·(num/den)``)."""
    if rule == "summed":
        return w @ (num / den.clamp_min(1e-300))
    totals = w @ den
    return torch.where(totals == 0, 0.0, (w @ num) / totals.clamp_min(1e-300))


def _additive_resamples(
    problem: Problem,
    model: nn.Module,
    batch: Mapping[str, Any],
    keys: list[str],
    names: list[str],
    picks: Tensor,
) -> list[Tensor] | None:
    """Resample values from per-row values when every statistic is additive over rows:
    pooled (``Σ w·num / Σ w·den``, a mean or a Ratio) or summed (``Σ w·v``); None
    when a statistic is neither (checked on the full batch and on the first resample)."""
    if not keys:
        return None

    def one(*tensors: Tensor) -> tuple[Tensor, ...]:
        sample = dict(batch)
        sample.update(zip(keys, tensors, strict=True))
        ev = problem(model, sample, exact=True)
        parts = []
        for name in names:
            num, den = ev.sums(name, exact=True)
            parts += [num.reshape(-1), den.reshape(-1)]
        return tuple(parts)

    import warnings

    try:
        with warnings.catch_warnings():  # one-row batches may warn (e.g. a variance)
            warnings.simplefilter("ignore")
            rowwise = torch.func.vmap(one, randomness="error")(
                *[batch[k].unsqueeze(1) for k in keys]
            )
    except Exception:  # not vmappable over one-row batches
        return None
    n, rows = picks.shape
    offsets = picks + torch.arange(n).unsqueeze(1) * rows
    counts = torch.bincount(offsets.reshape(-1), minlength=n * rows).reshape(n, rows)
    counts = counts.to(torch.float64)
    full = problem(model, dict(batch), exact=True)
    first = problem(model, _resample(batch, keys, picks[0]), exact=True)
    ones = torch.ones(1, rows, dtype=torch.float64)
    out = []
    for i, name in enumerate(names):
        num = rowwise[2 * i].detach().double().cpu()
        den = rowwise[2 * i + 1].detach().double().cpu()
        chosen = None
        for rule in ("pooled", "summed"):
            if _agrees(_combine(ones, num, den, rule)[0], full.measured(name)) and _agrees(
                _combine(counts[:1], num, den, rule)[0], first.measured(name)
            ):
                chosen = _combine(counts, num, den, rule)
                break
        if chosen is None:
            return None
        out.append(chosen)
    return out


def _looped_resamples(
    problem: Problem,
    model: nn.Module,
    batch: Mapping[str, Any],
    keys: list[str],
    names: list[str],
    picks: Tensor,
) -> list[Tensor]:
    out: list[list[Tensor]] = [[] for _ in names]
    for pick in picks:
        ev = problem(model, _resample(batch, keys, pick), exact=True)
        for values, name in zip(out, names, strict=True):
            values.append(ev.measured(name).detach().reshape(-1))
    return [torch.stack(v) for v in out]


def _vmapped_resamples(
    problem: Problem,
    model: nn.Module,
    batch: Mapping[str, Any],
    keys: list[str],
    names: list[str],
    picks: Tensor,
) -> list[Tensor] | None:
    """The resamples' values in vmapped chunks, or None when vmap cannot evaluate them."""
    if not keys:
        return None

    def one(*tensors: Tensor) -> tuple[Tensor, ...]:
        sample = dict(batch)
        sample.update(zip(keys, tensors, strict=True))
        ev = problem(model, sample, exact=True)
        return tuple(ev.measured(name).reshape(-1) for name in names)

    n, rows = picks.shape
    per_resample = sum(batch[k][0].numel() for k in keys) * rows
    chunk = max(1, min(n, BOOTSTRAP_ELEMENTS // max(per_resample, 1)))
    mapped = torch.func.vmap(one, randomness="error")
    out: list[list[Tensor]] = [[] for _ in names]
    try:
        for start in range(0, n, chunk):
            index = picks[start : start + chunk]
            flat = index.reshape(-1)
            stacked = [  # index_select: a few times faster than v[index] on the CPU
                torch.index_select(batch[k], 0, flat.to(batch[k].device)).view(
                    *index.shape, *batch[k].shape[1:]
                )
                for k in keys
            ]
            for values, result in zip(out, mapped(*stacked), strict=True):
                values.append(result.detach())
    except Exception:  # not vmappable: the caller loops over the resamples
        return None
    merged = [torch.cat(v) for v in out]
    # the first resample evaluated plainly must agree (guards against evaluate functions
    # that trace under vmap but compute something else, e.g. in-place writes to the batch)
    check = problem(model, _resample(batch, keys, picks[0]), exact=True)
    for name, merged_values in zip(names, merged, strict=True):
        plain = check.measured(name).detach().reshape(-1).to(merged_values.dtype)
        if not torch.allclose(merged_values[0], plain, rtol=1e-5, atol=1e-7, equal_nan=True):
            return None
    return merged


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den == 0, 0.0, num / np.where(den == 0, 1.0, den))


def _verdict(constraint: Constraint, low: float, high: float, tol: float) -> str:
    if constraint.is_equality:
        if -tol <= low and high <= tol:
            return SATISFIED
        if high < -tol or low > tol:
            return VIOLATED
        return UNSURE
    if high <= tol:
        return SATISFIED
    if low > tol:
        return VIOLATED
    return UNSURE


def certify(
    problem: Problem,
    model: nn.Module,
    multipliers: Mapping[str, Tensor],
    train_batches: Iterable[Mapping[str, Any]],
    heldout_batches: Iterable[Mapping[str, Any]],
    *,
    confidence: float = 0.95,
    method: str = "bootstrap",
    bounds: Mapping[str, tuple[float, float]] | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
    tolerance: float | Mapping[str, float] | None = None,
    inference: bool = True,
    gap: Mapping[str, Any] | None = None,
) -> Certificate:
    """Certificate of ``model`` (see the module docstring).

    ``method="bootstrap"`` resamples held-out batches (pass small batches, e.g.
    ``ecl.Batches(data, batch_size=1, shuffle=False)``, for a per-sample bootstrap); given
    a single batch, it resamples that batch's rows and re-evaluates each resample (right
    for statistics that are not sums over rows, at ``n_resamples`` forward passes);
    ``method="hoeffding"`` needs ``bounds={name: (low, high)}`` for every average
    constraint (the range of one sample's contribution) and uses each component's count.
    ``gap``: keyword arguments for :func:`duality_gap` (omit to skip it).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if method not in ("bootstrap", "hoeffding"):
        raise ValueError(f"method must be 'bootstrap' or 'hoeffding', got {method!r}")
    if method == "hoeffding":
        missing = [c.name for c in problem.average if not bounds or c.name not in bounds]
        if missing:
            raise ValueError(
                f"Hoeffding intervals need bounds={{name: (low, high)}} for {missing}: the range "
                "of one sample's value (use method='bootstrap' when it is not bounded)"
            )
    train = evaluate(problem, model, train_batches, exact=True, inference=inference)
    heldout_list = list(heldout_batches)
    heldout = evaluate(problem, model, heldout_list, exact=True, inference=inference)
    sums = _block_sums(problem, model, heldout_list, inference)
    rng = np.random.default_rng(seed)
    alpha = 1 - confidence
    blocks = len(heldout_list)
    draws = rng.integers(0, blocks, size=(n_resamples, blocks)) if method == "bootstrap" else None
    row_boot = None
    if method == "bootstrap" and blocks == 1:
        # One held-out batch: resample its rows and re-evaluate (valid for statistics that
        # are not sums over rows, e.g. a group rate minus the overall rate).
        row_boot = _row_bootstrap(problem, model, heldout_list[0], n_resamples, rng, inference)
    certificates: dict[str, ConstraintCertificate] = {}
    for c in problem.average:
        tol = c.tolerance_for(tolerance)
        num, den = sums[c.name]
        point = _ratio(num.sum(0), den.sum(0))
        target = c.target.numpy()
        if method == "bootstrap":
            assert draws is not None
            if row_boot is not None:
                boot = row_boot[c.name]
            else:
                boot = _ratio(num[draws].sum(1), den[draws].sum(1))  # [resamples, size]
            low = np.quantile(boot, alpha / 2, axis=0)
            high = np.quantile(boot, 1 - alpha / 2, axis=0)
        else:
            assert bounds is not None
            a, b = bounds[c.name]
            count = np.maximum(den.sum(0), 1.0)
            half = (b - a) * np.sqrt(np.log(2 / alpha) / (2 * count))
            low, high = point - half, point + half
        mu = multipliers[c.name].detach().double().reshape(-1).cpu().numpy()
        # the interval of the signed violation (bound − value for a "≥" inequality)
        intervals = [
            (float(lo - t), float(hi - t)) if c.sign > 0 else (float(t - hi), float(t - lo))
            for lo, hi, t in zip(low, high, target, strict=True)
        ]
        certificates[c.name] = ConstraintCertificate(
            name=c.name,
            kind=c.kind,
            tolerance=tol,
            train_value=train[c.name].value.reshape(-1).tolist(),
            heldout_value=point.tolist(),
            interval=[(float(lo), float(hi)) for lo, hi in zip(low, high, strict=True)],
            method=method,
            verdicts=[_verdict(c, lo, hi, tol) for lo, hi in intervals],
            multiplier=mu.tolist(),
            price=np.abs(mu).tolist(),
        )
    pointwise = {
        c.name: {
            **heldout[c.name].extra,
            "train_fraction_satisfied": train[c.name].extra["fraction_satisfied"],
            "multiplier_mean_abs": float(multipliers[c.name].abs().mean()),
        }
        for c in problem.pointwise
        if c.name in multipliers
    }
    gap_report = None
    if gap is not None:
        gap_report = duality_gap(
            problem,
            model,
            multipliers,
            batches=gap["batches"],
            **{k: v for k, v in gap.items() if k != "batches"},
        )
    return Certificate(
        confidence,
        certificates,
        train.objective,
        heldout.objective,
        gap_report,
        pointwise=pointwise,
    )


def relaxed_problem(
    problem: Problem, name: str, delta: float, multipliers: Mapping[str, Tensor]
) -> Problem:
    """The same problem with constraint ``name`` relaxed by ``delta`` in the direction that
    lowers the optimum: an inequality's bound raised by δ, an equality's right-hand side
    moved by ``δ·sign(μ)`` (so the predicted change is ``−|μ| δ``)."""
    if name not in problem.by_name:
        raise KeyError(f"no constraint {name!r}; declared: {sorted(problem.by_name)}")
    constraints = []
    for c in problem.constraints:
        if c.name == name:
            mu = multipliers[name].detach().double().reshape(-1).cpu()
            if not c.is_equality or c.pointwise:
                c = c.retarget(c.target + delta)
            else:
                c = c.retarget(c.target + delta * torch.sign(mu))
        constraints.append(c)
    return Problem(problem.evaluate_fn, constraints)


@dataclass
class SensitivityCheck:
    constraint: str
    delta: float
    predicted_change: float
    resolved_change: float
    baseline_objective: float
    relaxed_objective: float

    def to_dict(self) -> dict[str, float | str]:
        return dict(self.__dict__)


def check_sensitivity(
    problem: Problem,
    name: str,
    delta: float,
    multipliers: Mapping[str, Tensor],
    solve: Callable[[Problem], float],
    baseline_objective: float | None = None,
) -> SensitivityCheck:
    """Re-solve with ``name`` relaxed by ``delta`` and compare with the first-order prediction
    ``−Σ|μ|·δ``. ``solve(problem) -> objective`` trains a fresh model on the given problem
    (same data, budget and seed as the original run) and returns its training objective."""
    baseline = solve(problem) if baseline_objective is None else baseline_objective
    relaxed = solve(relaxed_problem(problem, name, delta, multipliers))
    mu = multipliers[name].detach().double().abs()
    if problem.by_name[name].pointwise:
        # mean form (1/N) Σ μ_i h_i: each sample's constraint weighs 1/N
        predicted = -float(mu.reshape(mu.shape[0], -1).mean(0).sum()) * delta
    else:
        predicted = -float(mu.sum()) * delta
    return SensitivityCheck(name, delta, predicted, relaxed - baseline, baseline, relaxed)


def duality_gap(
    problem: Problem,
    model: nn.Module,
    multipliers: Mapping[str, Tensor],
    batches: Iterable[Mapping[str, Any]],
    *,
    steps: int = 200,
    optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None = None,
    tolerance: float | None = None,
    inference: bool = True,
) -> dict[str, Any]:
    """Training objective of ``model`` minus an estimate of the dual function
    ``d(μ) = min_θ L(θ, μ)`` (``steps`` further primal steps on a copy of the model with the
    multipliers frozen, then the Lagrangian averaged over ``batches``)."""
    from eclearn.solver import PrimalDual

    batches = list(batches)
    copy_model = copy.deepcopy(model)
    make = optimizer or (lambda params: eager_optimizer(torch.optim.Adam)(params, lr=1e-3))
    dtype = next(iter(multipliers.values())).dtype if multipliers else torch.float32
    solver = PrimalDual(problem, copy_model, make(copy_model.parameters()), SGD(0.0), dtype=dtype)
    solver.set_multipliers(multipliers)
    lagrangian_at_model = solver.lagrangian(batches, inference=inference)
    solver.fit(batches, max_steps=steps, warn=False)
    dual_value = min(solver.lagrangian(batches, inference=inference), lagrangian_at_model)
    report = evaluate(
        problem, model, batches, exact=False, tolerance=tolerance, inference=inference
    )
    objective = report.objective if report.objective is not None else 0.0
    gap = objective - dual_value
    return {
        "primal_objective": objective,
        "dual_value": dual_value,
        "gap": gap,
        "lagrangian_at_model": lagrangian_at_model,
        "feasible": report.feasible,
        "steps": steps,
        "finite": math.isfinite(gap),
    }
