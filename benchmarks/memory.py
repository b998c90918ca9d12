"""Memory of pointwise multiplier tables: build peak and dual-optimizer state, as ratios to
the table's own size.

For each case a fresh subprocess builds ``ecl.PrimalDual`` on a problem with one pointwise
equality over ``--rows`` samples (float64 multipliers, the default) and reports:

- ``build peak / table``: the process's peak resident memory growth while the solver is
  built (``ru_maxrss`` after minus before), over the table's bytes — target ≤ 1.2 with
  dual SGD (no state);
- ``dual state / table``: the bytes of the dual optimizer's state tensors over the table's
  bytes — targets: SGD 0, Adam ≤ 2 (two moments; step counts once per row);
- ``peak after steps / table``: the peak growth after 20 training steps on batches of
  1024 rows (the step touches only the batch's rows).

    python benchmarks/memory.py [--rows 100000000] [--out docs/results/memory.md]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

CHILD = r"""
import json, resource, sys, torch
import eclearn as ecl
rows, dual, width = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
torch.set_num_threads(1)
model = torch.nn.Linear(4, width, dtype=torch.float64)
def evaluate(model, batch):
    out = model(batch["x"])
    return {"objective": out.pow(2).mean(), "fit": out.squeeze(-1) if width == 1 else out}
problem = ecl.Problem(evaluate, [ecl.Equality("fit", size=width, pointwise=True, num_samples=rows)])
optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
dual_opt = {"sgd": ecl.dual.SGD(1e-3), "adam": ecl.dual.Adam(1e-3), "nupi": ecl.dual.NuPI(1e-3)}[dual]
kib = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
before = kib()
solver = ecl.PrimalDual(problem, model, optimizer, dual_opt)
built = kib()
table = solver.indexed["fit"].table
state = sum(t.numel() * t.element_size() for t in solver.dual_state["fit"].values())
gen = torch.Generator().manual_seed(0)
batches = [{"x": torch.randn(1024, 4, dtype=torch.float64, generator=gen),
            "index": torch.randint(0, rows, (1024,), generator=gen).unique()[:1000]} for _ in range(4)]
batches = [{"x": b["x"][: len(b["index"])], "index": b["index"]} for b in batches]
solver.fit(batches, max_steps=20, warn=False)
stepped = kib()
print(json.dumps({"table_bytes": table.numel() * table.element_size(),
                  "build_peak_bytes": (built - before) * 1024,
                  "state_bytes": state,
                  "after_steps_bytes": (stepped - before) * 1024}))
"""


def measure(rows: int, dual: str, width: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(rows), dual, str(width)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=float, default=1e7, help="samples in the table")
    parser.add_argument("--out", default=None, help="write the Markdown table here too")
    args = parser.parse_args()
    rows = int(args.rows)
    lines = [
        "| dual optimizer | table width | table (MB) | build peak / table | "
        "dual state / table | peak after 20 steps / table |",
        "|---|---|---|---|---|---|",
    ]
    for dual in ("sgd", "adam", "nupi"):
        for width in (1, 4):
            m = measure(rows // width, dual, width)
            table = m["table_bytes"]
            line = (
                f"| {dual} | {width} | {table / 1e6:.0f} | {m['build_peak_bytes'] / table:.3f} | "
                f"{m['state_bytes'] / table:.3f} | {m['after_steps_bytes'] / table:.3f} |"
            )
            print(line, flush=True)
            lines.append(line)
    text = "\n".join(lines)
    print()
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()
