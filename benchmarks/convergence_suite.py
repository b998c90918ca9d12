"""The convergence suite (``eclearn.testing``): steps to 1e-4 in primal and multipliers.

Runs every case with the solver's default dual optimizer and with the alternatives named on
the command line, primal SGD at each case's step size, at most ``--max-steps`` steps, and
prints a table: the first checked step from which both errors stayed ≤ tol ("—" = not
within the budget, with the final error in brackets), and the seconds taken.

    python benchmarks/convergence_suite.py            # default vs the usual alternatives
    python benchmarks/convergence_suite.py --out docs/results/convergence-table.md
"""

from __future__ import annotations

import argparse
import os
import platform

import torch

import eclearn as ecl
from eclearn.testing import convergence_cases, solve

DUALS = {
    "default": None,
    "Adam(1e-3)": lambda: ecl.dual.Adam(lr=1e-3),
    "Adam(3e-3)": lambda: ecl.dual.Adam(lr=3e-3),
    "Adam(1e-2)": lambda: ecl.dual.Adam(lr=1e-2),
    "SGD(1e-2)": lambda: ecl.dual.SGD(lr=1e-2),
    "SGD(0.1)": lambda: ecl.dual.SGD(lr=0.1),
    "SGD(0.5)": lambda: ecl.dual.SGD(lr=0.5),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duals", nargs="*", default=list(DUALS), choices=list(DUALS))
    parser.add_argument("--cases", nargs="*", default=None)
    parser.add_argument("--max-steps", type=int, default=10_000)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--out", default=None, help="also write the table (markdown) here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    default = ecl.solver.default_dual_optimizer()
    hp = default.hyperparameters()
    rest = ", ".join(f"{k}={v}" for k, v in hp.items() if k not in ("type", "lr", "schedule"))
    described = f"lr={hp['lr']['default']}, {rest}"
    header = ["case"] + [
        f"default: {type(default).__name__}({described})" if d == "default" else d
        for d in args.duals
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    solved = dict.fromkeys(args.duals, 0)
    cases = convergence_cases(args.cases)
    for case in cases:
        cells = [case.name]
        for name in args.duals:
            out = solve(case, DUALS[name], max_steps=args.max_steps, tol=args.tol)
            error = max(out.primal_error, out.multiplier_error)
            if out.converged:
                solved[name] += 1
                cells.append(f"{out.steps} ({out.seconds:.1f} s)")
            else:
                cells.append(f"— ({error:.0e})")
        line = "| " + " | ".join(cells) + " |"
        lines.append(line)
        print(line, flush=True)
    lines.append(
        "| **solved** | " + " | ".join(f"{solved[d]}/{len(cases)}" for d in args.duals) + " |"
    )
    print(lines[-1])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    footer = (
        f"\n{platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread, "
        f"load {load:.1f}; tol {args.tol:g}, at most {args.max_steps} steps"
    )
    print(footer)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write("\n".join(lines) + "\n" + footer + "\n")


if __name__ == "__main__":
    main()
