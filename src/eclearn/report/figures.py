"""Training figures from solver histories (matplotlib, Agg; no pyplot global state).

Per run: objective and Lagrangian vs step (only when there is an objective), each
constraint's violation vs step (log scale: |v| for equalities, the positive part [v]₊ for
inequalities, pointwise max/mean excess), and the multiplier trajectories (pointwise
tables: their mean and norm; only when the run has multipliers that moved). Across runs:
objective and worst violation vs step, one line per group (mean over its seeds), each
panel only when it has something to show. Per-step values are drawn faintly with a moving
average on top; every axis is labelled.

Cheap by construction: figures are built on ``matplotlib.figure.Figure`` (Agg, no pyplot),
with fixed margins (no layout engine), at most :data:`MAX_POINTS` points per line, plain
tick labels on log axes (no mathtext) and light PNG compression.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from eclearn._io import atomic_write
from eclearn.history import History, violation_columns

__all__ = [
    "comparison_figure",
    "moving_average",
    "new_figure",
    "run_figures",
    "save_figure",
    "worst_series",
]

MAX_POINTS = 1200
"""Points per drawn line (a figure is 560 pixels wide: more only costs rendering time)."""
DPI = 80
"""560 pixels for a 7-inch figure: the width the HTML report shows it at (34rem), so a
higher resolution would only be rendered, encoded and embedded to be scaled down."""
PNG_OPTIONS = {"compress_level": 3}
"""zlib level 3: a fraction of the default's encoding time for a few percent more bytes."""


def new_figure(rows: int = 1, *, width: float = 7.0, height: float = 3.2) -> tuple[Any, list[Any]]:
    """A matplotlib Figure with ``rows`` stacked axes, independent of pyplot's backend."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height * rows), dpi=DPI)
    axes = fig.subplots(rows, 1, squeeze=False)[:, 0]
    # Fixed margins: a layout engine would double the rendering time of these small plots.
    inch = 1.0 / (height * rows)
    fig.subplots_adjust(left=0.11, right=0.97, bottom=0.5 * inch, top=1 - 0.35 * inch, hspace=0.5)
    for ax in axes:
        # Titles at a fixed height: placing them automatically measures every tick label
        # of the axes at each draw (a third of a small figure's rendering time).
        ax._autotitlepos = False
    return fig, list(axes)


def save_figure(fig: Any, path: Path) -> Path:
    """Render to PNG (Agg) and write atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", pil_kwargs=PNG_OPTIONS)
    data = buffer.getvalue()
    return atomic_write(path, lambda handle: handle.write(data))


def log_axis(ax: Any) -> None:
    """Log scale with plain-text tick labels ("0.01", "1e-05"; minor ticks 2 and 5
    labelled when the axis spans less than two decades): the default's mathtext labels
    cost more to lay out than the rest of a small figure."""
    from matplotlib.ticker import LogFormatter, LogLocator

    class Plain(LogFormatter):
        def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
            return f"{x:g}"

    ax.set_yscale("log")
    ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))  # 2 minor ticks a decade, not 8
    ax.yaxis.set_major_formatter(Plain(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    ax.yaxis.set_minor_formatter(Plain(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def _few_ticks(ax: Any) -> None:
    """At most ~5 labelled ticks per linear axis: every tick is a handful of artists to
    build, lay out and draw, most of a small line plot's cost."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
    if ax.get_yscale() == "linear":
        ax.yaxis.set_major_locator(MaxNLocator(nbins=5))


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


def _finite(values: np.ndarray) -> bool:
    return bool(np.isfinite(values).any())


def _excess_columns(columns: Sequence[str]) -> list[str]:
    """Pointwise constraints' per-batch excess (``excess/<c>/max`` and ``/mean``)."""
    return [c for c in columns if c.startswith("excess/") and c.endswith(("/max", "/mean"))]


def worst_series(
    history: History, constraints: Sequence[Mapping[str, Any]] | None, window: int = 1
) -> np.ndarray:
    """Per step, the worst violation over all components (as in the progress bar); with
    ``window > 1`` each component's signed violation is first averaged over that window.
    Pointwise constraints count with their batch's largest excess."""
    parts = []
    for col, inequality in violation_columns(constraints, history.columns):
        values = moving_average(history[col], window)
        parts.append(np.maximum(values, 0.0) if inequality else np.abs(values))
    for col in _excess_columns(history.columns):
        if col.endswith("/max"):
            parts.append(moving_average(history[col], window))
    if not parts:
        return np.zeros(len(history))
    stacked = np.stack(parts)
    return np.where(np.isnan(stacked), -np.inf, stacked).max(axis=0).clip(min=0.0)


def _has_constraints(history: History, constraints: Sequence[Mapping[str, Any]] | None) -> bool:
    return bool(violation_columns(constraints, history.columns)) or bool(
        _excess_columns(history.columns)
    )


def run_figures(
    history: History,
    constraints: Sequence[Mapping[str, Any]] | None,
    figure_dir: Path,
) -> list[Path]:
    """``objective.png`` (when the problem has an objective), ``violations.png`` (when it
    has constraints) and ``multipliers.png`` (when multipliers moved) of one run;
    ``constraints`` is ``Problem.fingerprint()`` (names and kinds)."""
    figure_dir.mkdir(parents=True, exist_ok=True)
    if len(history) == 0:
        return []
    steps = history["step"]
    paths = []

    if "objective" in history and _finite(history["objective"]):
        fig, (ax,) = new_figure()
        keys = [k for k in ("objective", "lagrangian") if k in history and _finite(history[k])]
        for key, color in zip(keys, _colors(2), strict=False):
            _plot(ax, steps, history[key], key, color)
        ax.set_xlabel("step")
        ax.set_ylabel("loss on the training batch")
        ax.set_title("objective and Lagrangian: per batch (faint), moving average (bold)")
        _legend(ax, len(keys))
        _few_ticks(ax)
        paths.append(save_figure(fig, figure_dir / "objective.png"))

    columns = violation_columns(constraints, history.columns)
    entries = [(c, "≤" if ineq else "=") for c, ineq in columns]
    entries += [(c, "pointwise") for c in _excess_columns(history.columns)]
    if entries:
        fig, (ax,) = new_figure()
        drawn = False
        for (col, kind), color in zip(entries, _colors(len(entries)), strict=True):
            if kind == "pointwise":
                name, stat = col[len("excess/") :].rsplit("/", 1)
                label, part = f"{stat} excess {name}", _positive
            else:
                name = col[len("violation/") :]
                label = f"[{name}]₊ (≤)" if kind == "≤" else f"|{name}|"
                part = _positive_part if kind == "≤" else _magnitude
            values = history[col]
            drawn |= _finite(part(values))
            # per-batch noise of many components hides their averages: then averages only
            _plot(ax, steps, values, label, color, raw=len(entries) <= 4, transform=part)
        if drawn:
            log_axis(ax)
            ax.set_ylabel("violation (log scale)")
        else:  # every step met every constraint exactly: nothing to draw on a log axis
            ax.set_ylim(-1, 1)
            ax.set_ylabel("violation")
            ax.text(0.5, 0.5, "no violation at any step", ha="center", transform=ax.transAxes)
        ax.set_xlabel("step")
        ax.set_title(
            "constraint violation: per batch (faint), moving average (bold)"
            if len(entries) <= 4
            else "constraint violation: moving average over batches"
        )
        _legend(ax, len(entries))
        _few_ticks(ax)
        paths.append(save_figure(fig, figure_dir / "violations.png"))

    def moved(cols: list[str]) -> list[str]:
        out = []
        for c in cols:
            v = history[c]
            if _finite(v) and np.nanmax(np.abs(v)) > 0:
                out.append(c)
        return out

    dense = moved([c for c in history.columns if c.startswith("multiplier/") and c.count("/") == 1])
    tables = moved(
        [
            c
            for c in history.columns
            if c.startswith("multiplier/") and c.endswith(("/mean", "/norm"))
        ]
    )
    panels = [
        (cols, title, ylabel)
        for cols, title, ylabel in (
            (dense, "multipliers of the average constraints", "multiplier value"),
            (tables, "pointwise multiplier tables", "table mean and norm ‖μ‖"),
        )
        if cols
    ]
    if panels:
        fig, axes = new_figure(len(panels))
        for ax, (cols, title, ylabel) in zip(axes, panels, strict=True):
            for col, color in zip(cols, _colors(len(cols)), strict=True):
                _plot(ax, steps, history[col], col[len("multiplier/") :], color, raw=False)
            ax.axhline(0.0, color="0.7", linewidth=0.6)
            ax.set_xlabel("step")
            ax.set_ylabel(ylabel)
            ax.set_title(title)
            _legend(ax, len(cols))
            _few_ticks(ax)
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
) -> Path | None:
    """Objective and worst violation vs step, one line per group (mean over its runs);
    a panel only when some group has values for it (None when neither has)."""
    curves: list[tuple[str, Any, np.ndarray, np.ndarray, np.ndarray | None]] = []
    for (label, histories), color in zip(series.items(), _colors(len(series)), strict=True):
        objective, worst, steps, constrained = [], [], None, False
        for h in histories:
            if len(h) == 0:
                continue
            objective.append(h["objective"] if "objective" in h else np.full(len(h), np.nan))
            worst.append(worst_series(h, constraints, _window(len(h))))
            constrained |= _has_constraints(h, constraints)
            steps = h["step"] if steps is None or len(h) < len(steps) else steps
        if steps is None:
            continue
        n = len(steps)
        obj = _mean_over_runs([o[:n] for o in objective])
        viol = _positive(_mean_over_runs([w[:n] for w in worst]))
        curves.append((label, color, steps, obj, viol if constrained else None))
    want_objective = any(_finite(c[3]) for c in curves)
    want_violation = any(c[4] is not None and _finite(c[4]) for c in curves)
    panels = [
        p for p, want in (("objective", want_objective), ("violation", want_violation)) if want
    ]
    if not panels:
        return None
    fig, axes = new_figure(len(panels))
    axis = dict(zip(panels, axes, strict=True))
    for label, color, steps, mean_objective, worst_mean in curves:
        if "objective" in axis and _finite(mean_objective):
            _plot(axis["objective"], steps, mean_objective, label, color, raw=False)
        if "violation" in axis and worst_mean is not None and _finite(worst_mean):
            _plot(axis["violation"], steps, worst_mean, label, color, raw=False, smooth=False)
    if "objective" in axis:
        ax = axis["objective"]
        ax.set_title(f"{title} objective (training batches, mean over seeds)".strip())
        ax.set_ylabel("objective (training batch)")
    if "violation" in axis:
        ax = axis["violation"]
        ax.set_title("worst constraint violation (of moving averages, mean over seeds)")
        log_axis(ax)
        ax.set_ylabel("worst violation (log scale)")
    for ax in axes:
        ax.set_xlabel("step")
        _legend(ax, len(curves))
        _few_ticks(ax)
    return save_figure(fig, path)
