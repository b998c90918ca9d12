"""Per-class multipliers vs per-class test error across the seeds of interpolation runs.

Reads the ``metrics.json`` of every complete interpolation run under the given folders and
prints, per group (formulation/label):

- each seed's Pearson r and Spearman ρ with their 95 % bootstrap intervals (over classes),
  as ``eclearn run`` computed them;
- mean ± sd of r over seeds;
- the seed-averaged correlation: r between the per-class multiplier averaged over seeds and
  the per-class test error averaged over seeds, with a bootstrap interval over classes;
- the same two correlations with the per-class *training loss* of the baseline runs in
  place of the multiplier (what one can read off without multipliers).

    python benchmarks/interpolation_correlation.py runs/interp-cpu [--out FILE.md]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from eclearn.experiments.runner import find_runs
from eclearn.report.tables import group_runs
from eclearn.stats import correlation_report


def fmt(report: dict[str, float | int], key: str) -> str:
    return f"{report[key]:.3f} [{report[key + '_low']:.3f}, {report[key + '_high']:.3f}]"


def summarize(label: str, runs: list, signal: str) -> list[str]:
    per_seed, xs, ys = [], [], []
    for run in sorted(runs, key=lambda r: r.seed):
        m = run.metrics or {}
        x = m.get(signal)
        y = m.get("per_class_test_error")
        if not x or not y or any(v is None for v in x):
            continue
        report = correlation_report(x, y, seed=run.seed)
        per_seed.append((run.seed, report))
        xs.append(x)
        ys.append(y)
    if not per_seed:
        return []
    rs = np.array([r["pearson_r"] for _, r in per_seed])
    pooled = correlation_report(np.mean(xs, axis=0), np.mean(ys, axis=0), seed=0)
    name = "multiplier" if signal == "per_class_multiplier" else "training loss"
    lines = [
        f"| {label} | {name} | {run_seed} | {fmt(r, 'pearson_r')} | {fmt(r, 'spearman_rho')} |"
        for run_seed, r in per_seed
    ]
    lines.append(
        f"| {label} | {name} | mean ± sd over {len(rs)} seeds | "
        f"{rs.mean():.3f} ± {rs.std(ddof=1) if len(rs) > 1 else 0.0:.3f} | |"
    )
    lines.append(
        f"| {label} | {name} | seed-averaged per-class values | {fmt(pooled, 'pearson_r')} "
        f"| {fmt(pooled, 'spearman_rho')} |"
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    runs = [r for r in find_runs(args.folders) if r.complete and r.experiment == "interpolation"]
    if not runs:
        raise SystemExit(
            f"no complete interpolation runs under {', '.join(map(str, args.folders))}"
        )
    lines = [
        "| group | per-class signal | seed | Pearson r [95 % CI] | Spearman ρ [95 % CI] |",
        "|---|---|---|---|---|",
    ]
    for group in group_runs(runs):
        label = group.label
        lines += summarize(label, group.runs, "per_class_multiplier")
        lines += summarize(label, group.runs, "per_class_train_loss")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out is not None:
        args.out.write_text(table)


if __name__ == "__main__":
    main()
