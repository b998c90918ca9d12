"""Empirical duality gap of the convection problem as training proceeds.

At a list of steps of one convection run, ``ecl.duality_gap`` compares the training
objective of the current model with an estimate of the dual function at the current
multipliers, ``d(μ_t) = min_θ L(θ, μ_t)`` (``--inner-steps`` further Adam steps on a copy
of the model with μ_t frozen, keeping the smaller of the Lagrangian before and after). The
run itself is not disturbed: the estimate works on a copy and under a forked RNG, so the
trajectory is the one ``eclearn run`` would produce for the same config and seed.

Both formulations measured are feasibility problems (no objective; IC, BC and PDE mean
squares = 0, as averages or per point). Their primal objective is 0, and for multipliers
μ ≥ 0 the dual function ``d(μ) = min_θ Σ_j μ_j·c_j(θ)`` of these non-negative residuals is 0
whenever the network can represent the solution, so the reported gap ``0 − d̂(μ_t)`` is
minus what the inner minimisation could not remove from the Lagrangian, and it goes to 0 as
the model approaches the solution; the infeasibility (max violation) and the error are
reported beside it. Defaults are the ``convection-30`` preset's (β = 30, 20 000 steps of
1000 fresh points per term, Adam 1e-3 × 0.9 every 5000 steps, dual Adam 1e-4).

    python benchmarks/convection_duality_gap.py [--beta 30] [--steps 20000] \
        [--at 0 1000 2500 5000 ...] [--only ecl-average] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import eclearn as ecl
from eclearn.experiments.base import RunContext
from eclearn.pde.experiment import ConvectionConfig, ConvectionExperiment
from eclearn.solver import Callback, PrimalDual

FORMULATIONS: dict[str, dict[str, Any]] = {
    "ecl-average": {"formulation": "ecl-average"},
    "ecl-pointwise": {"formulation": "ecl-pointwise"},
}


class GapProbe(Callback):
    """Measure the duality gap of the solver's current model and multipliers at ``at``."""

    def __init__(
        self, at: list[int], batches: list[Any], inner_steps: int, error: Any, label: str
    ) -> None:
        self.at, self.batches, self.inner_steps = set(at), batches, inner_steps
        self.error, self.label = error, label
        self.rows: list[dict[str, Any]] = []

    def measure(self, solver: PrimalDual) -> None:
        began = time.perf_counter()
        with torch.random.fork_rng():
            gap = ecl.duality_gap(
                solver.problem,
                solver.model,
                solver.multipliers,
                self.batches,
                steps=self.inner_steps,
                optimizer=lambda params: torch.optim.Adam(params, lr=1e-3),
                inference=False,
            )
            report = ecl.evaluate(solver.problem, solver.model, self.batches, inference=False)
        worst = max(
            (float(r.violation.abs().max()) for r in report.constraints.values()),
            default=math.nan,
        )
        row = {
            "formulation": self.label,
            "step": solver.step,
            "objective": gap["primal_objective"],
            "lagrangian": gap["lagrangian_at_model"],
            "dual": gap["dual_value"],
            "gap": gap["gap"],
            "max_violation": worst,
            "rel_l2": self.error(solver.model),
            "seconds": time.perf_counter() - began,
        }
        self.rows.append(row)
        print(
            f"{self.label:<30} step {row['step']:>6}  objective {row['objective']:.4g}  "
            f"L(θ,μ) {row['lagrangian']:.4g}  d̂(μ) {row['dual']:.4g}  gap {row['gap']:.4g}  "
            f"max|viol| {worst:.3g}  rel L2 {row['rel_l2']:.3f}",
            flush=True,
        )

    def on_fit_start(self, solver: PrimalDual) -> None:
        if solver.step in self.at:
            self.measure(solver)

    def on_step_end(self, solver: PrimalDual) -> None:
        if solver.step in self.at:
            self.measure(solver)


def run(label: str, overrides: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    ecl.seed_everything(args.seed)
    config = ConvectionConfig(
        beta=args.beta,
        steps=args.steps,
        num_points=args.points,
        eval_every=args.steps,
        **overrides,
    )
    with tempfile.TemporaryDirectory() as tmp:
        context = RunContext(seed=args.seed, device="cpu", run_dir=Path(tmp), log=lambda *_: None)
        setup = ConvectionExperiment().setup(config, context)
        if setup.certify_train_batches is not None:
            batches = list(setup.certify_train_batches)
        else:
            with torch.random.fork_rng():
                stream = iter(setup.train_batches)
                batches = [next(stream) for _ in range(4)]
        tracker = setup.state["error_tracker"]
        probe = GapProbe(args.at, batches, args.inner_steps, tracker.error, label)
        setup.solver.fit(setup.train_batches, max_steps=config.steps, callbacks=[probe], warn=False)
    return probe.rows


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"β = {args.beta:g}, {args.steps} steps of {args.points} fresh points per term "
        "(Adam 1e-3 × 0.9 every 5000 steps, dual Adam 1e-4), "
        f"seed {args.seed}; d̂(μ) from {args.inner_steps} Adam steps (lr 1e-3) with μ frozen, "
        "on 4 fixed training batches.",
        "",
        "| formulation | step | objective | L(θ_t, μ_t) | d̂(μ_t) | gap | max abs violation "
        "| rel. L2 error |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['formulation']} | {r['step']} | {r['objective']:.4g} | {r['lagrangian']:.4g} "
            f"| {r['dual']:.4g} | {r['gap']:.4g} | {r['max_violation']:.3g} | {r['rel_l2']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beta", type=float, default=30.0)
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument(
        "--at",
        type=int,
        nargs="+",
        default=[0, 1000, 2500, 5000, 7500, 10_000, 11_000, 12_500, 15_000, 17_500, 20_000],
    )
    parser.add_argument("--inner-steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=sorted(FORMULATIONS), default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    for label, overrides in FORMULATIONS.items():
        if args.only is None or args.only == label:
            rows += run(label, overrides, args)
    table = markdown(rows, args)
    print(table)
    if args.out is not None:
        args.out.write_text(table)


if __name__ == "__main__":
    main()
