"""Training figures from solver histories (matplotlib, Agg; no pyplot global state).

Per run: objective and Lagrangian vs step, each constraint's violation vs step (log
scale: |v| for equalities, the positive part [v]₊ for inequalities, pointwise max/mean
|v|), and the multiplier trajectories (pointwise tables: their mean and norm). Across runs:
objective and worst violation vs step, one line per group (mean over its seeds).
Per-step values are drawn faintly with a moving average on top.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from eclearn._io import atomic_write
from eclearn.experiments.runner import violation_columns
from eclearn.history import History

__all__ = [
    "comparison_figure",
    "moving_average",
    "new_figure",
    "run_figures",
    "save_figure",
    "worst_series",
]

MAX_POINTS = 4000


def new_figure(rows: int = 1, *, width: float = 7.0, height: float = 3.2) -> tuple[Any, list[Any]]:
    """A matplotlib Figure with ``rows`` stacked axes, independent of pyplot's backend."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height * rows), dpi=100)
    axes = fig.subplots(rows, 1, squeeze=False)[:, 0]
    # Fixed margins: a layout engine would double the rendering time of these small plots.
    inch = 1.0 / (height * rows)
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.5 * inch, top=1 - 0.35 * inch, hspace=0.45)
    return fig, list(axes)


def save_figure(fig: Any, path: Path) -> Path:
    """Render to PNG (Agg) and write atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    data = buffer.getvalue()
    return atomic_write(path, lambda handle: handle.write(data))


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average that skips NaN entries (NaN where the window has none)."""
    values = np.asarray(values, dtype=np.float64)
    if window <= 1 or len(values) == 0:
        return values
    ok = np.isfinite(values)
    sums = np.cumsum(np.where(ok, values, 0.0))
    counts = np.cumsum(ok)
    sums[window:] = sums[window:] - sums[:-window]
    counts[window:] = counts[window:] - counts[:-window]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _window(n: int) -> int:
    return max(1, n // 50)


def _thin(*arrays: np.ndarray) -> list[np.ndarray]:
    n = len(arrays[0])
    if n <= MAX_POINTS:
        return list(arrays)
    index = np.unique(np.linspace(0, n - 1, MAX_POINTS).astype(int))
    return [a[index] for a in arrays]


def _plot(
    ax: Any,
    steps: np.ndarray,
    values: np.ndarray,
    label: str,
    color: Any,
    raw: bool = True,
    transform: Any = None,
    smooth: bool = True,
) -> None:
    """Per-step values faintly, their moving average boldly; ``transform`` (e.g. |·|) is
    applied after averaging, so noise around zero averages out instead of piling up."""
    shape = transform if transform is not None else (lambda v: v)
    window = _window(len(values)) if smooth else 1
    averaged = shape(moving_average(values, window))
    if raw and window > 1:
        s, v = _thin(steps, shape(values))
        ax.plot(s, v, color=color, alpha=0.2, linewidth=0.7)
    s, v = _thin(steps, averaged)
    ax.plot(s, v, color=color, linewidth=1.5, label=label)


def _positive(values: np.ndarray) -> np.ndarray:
    """Zeros masked (NaN) so they leave gaps on a log axis instead of spikes."""
    return np.where(values > 0, values, np.nan)


def _magnitude(values: np.ndarray) -> np.ndarray:
    return _positive(np.abs(values))


def _positive_part(values: np.ndarray) -> np.ndarray:
    return _positive(np.maximum(values, 0.0))


def _legend(ax: Any, count: int) -> None:
    if 0 < count <= 12:
        ax.legend(fontsize="small", ncol=2 if count > 4 else 1)


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "viridis"]
    return [cmap(i if n <= 10 else i / max(n - 1, 1)) for i in range(n)]


def worst_series(
    history: History, constraints: Sequence[Mapping[str, Any]] | None, window: int = 1
) -> np.ndarray:
    """Per step, the worst violation over all components (as in the progress bar); with
    ``window > 1`` each component's signed violation is first averaged over that window."""
    parts = []
    for col, inequality in violation_columns(constraints, history.columns):
        values = moving_average(history[col], window)
        parts.append(np.maximum(values, 0.0) if inequality else np.abs(values))
    if not parts:
        return np.zeros(len(history))
    stacked = np.stack(parts)
    return np.where(np.isnan(stacked), -np.inf, stacked).max(axis=0).clip(min=0.0)


def run_figures(
    history: History,
    constraints: Sequence[Mapping[str, Any]] | None,
    figure_dir: Path,
) -> list[Path]:
    """``objective.png``, ``violations.png``, ``multipliers.png`` of one run; ``constraints``
    is ``Problem.fingerprint()`` (names and kinds)."""
    figure_dir.mkdir(parents=True, exist_ok=True)
    if len(history) == 0:
        return []
    steps = history["step"]
    paths = []

    fig, (ax,) = new_figure()
    colors = _colors(2)
    for key, color in zip(("objective", "lagrangian"), colors, strict=True):
        if key in history and np.isfinite(history[key]).any():
            _plot(ax, steps, history[key], key, color)
    ax.set_xlabel("step")
    ax.set_title("objective and Lagrangian (training batches)")
    _legend(ax, 2)
    paths.append(save_figure(fig, figure_dir / "objective.png"))

    fig, (ax,) = new_figure()
    columns = violation_columns(constraints, history.columns)
    pointwise_means = [
        c for c in history.columns if c.startswith("violation/") and c.endswith("/mean_abs")
    ]
    entries = [(c, ineq) for c, ineq in columns] + [(c, False) for c in pointwise_means]
    for (col, inequality), color in zip(entries, _colors(len(entries)), strict=True):
        name = col[len("violation/") :]
        label = f"[{name}]₊ (≤)" if inequality else f"|{name}|"
        part = _positive_part if inequality else _magnitude
        _plot(ax, steps, history[col], label, color, transform=part)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title("constraint violation: per batch (faint), moving average (bold)")
    _legend(ax, len(entries))
    paths.append(save_figure(fig, figure_dir / "violations.png"))

    dense = [
        c
        for c in history.columns
        if c.startswith("multiplier/") and "/" not in c[len("multiplier/") :]
    ]
    tables = [
        c for c in history.columns if c.startswith("multiplier/") and c.endswith(("/mean", "/norm"))
    ]
    fig, axes = new_figure(2 if dense and tables else 1)
    for ax, cols, title in zip(
        axes,
        [cols for cols in (dense, tables) if cols],
        ["multipliers", "pointwise multiplier tables (mean, norm)"],
        strict=False,
    ):
        for col, color in zip(cols, _colors(len(cols)), strict=True):
            _plot(ax, steps, history[col], col[len("multiplier/") :], color, raw=False)
        ax.axhline(0.0, color="0.7", linewidth=0.6)
        ax.set_xlabel("step")
        ax.set_title(title)
        _legend(ax, len(cols))
    paths.append(save_figure(fig, figure_dir / "multipliers.png"))
    return paths


def _mean_over_runs(series: Sequence[np.ndarray]) -> np.ndarray:
    """Elementwise mean ignoring NaN; NaN (without a warning) where every run is NaN, as
    the objective of a feasibility problem is."""
    stacked = np.asarray(series, dtype=float)
    finite = ~np.isnan(stacked)
    counts = finite.sum(axis=0)
    totals = np.where(finite, stacked, 0.0).sum(axis=0)
    return np.divide(totals, counts, out=np.full(counts.shape, np.nan), where=counts > 0)


def comparison_figure(
    series: Mapping[str, Sequence[History]],
    constraints: Sequence[Mapping[str, Any]] | None,
    path: Path,
    title: str = "",
) -> Path:
    """Objective and worst violation vs step, one line per group (mean over its runs)."""
    fig, (ax_obj, ax_viol) = new_figure(2)
    for (label, histories), color in zip(series.items(), _colors(len(series)), strict=True):
        objective, worst, steps = [], [], None
        for h in histories:
            if len(h) == 0:
                continue
            objective.append(h["objective"])
            worst.append(worst_series(h, constraints, _window(len(h))))
            steps = h["step"] if steps is None or len(h) < len(steps) else steps
        if steps is None:
            continue
        n = len(steps)
        obj = _mean_over_runs([o[:n] for o in objective])
        viol = _mean_over_runs([w[:n] for w in worst])
        if np.isfinite(obj).any():
            _plot(ax_obj, steps, obj, label, color, raw=False)
        _plot(ax_viol, steps, _positive(viol), label, color, raw=False, smooth=False)
    ax_obj.set_title(f"{title} objective (training batches, mean over seeds)".strip())
    ax_viol.set_title("worst constraint violation (of moving averages, mean over seeds)")
    ax_viol.set_yscale("log")
    for ax in (ax_obj, ax_viol):
        ax.set_xlabel("step")
        _legend(ax, len(series))
    return save_figure(fig, path)
