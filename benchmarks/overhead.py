"""Per-step cost of ``ecl.PrimalDual`` against hand-written PyTorch loops.

Model: MLP 64-256-256-1, batch 512, Adam, one thread. For each case the script times
(median over interleaved blocks):

- ``plain``: a plain training loop on the objective alone (no constraints);
- ``hand``: a hand-written Lagrangian loop with the same constraints (what a user would
  write without a library: one forward pass, ``loss + μ·h``, a dual ascent step);
- ``eclearn``: ``PrimalDual`` on the same problem (validation, history, diagnostics on).

Cases: 1, 10 and 100 average equality constraints (group means of the output), and one
pointwise equality constraint over tables of 1 000 and 1 000 000 rows (the batch's rows
only are read and written, so the step cost should not depend on the table size).

    python benchmarks/overhead.py [--steps 200] [--blocks 5] [--out docs/results/overhead.md]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import eclearn as ecl

BATCH, FEATURES = 512, 64


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(FEATURES, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 1)
    )


def data(table_rows: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return {
        "x": torch.randn(BATCH, FEATURES, generator=gen),
        "y": torch.randn(BATCH, generator=gen),
        "index": torch.randperm(table_rows, generator=gen)[:BATCH],
    }


def plain_loop(batch: dict[str, torch.Tensor]) -> Callable[[], None]:
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        out = model(batch["x"]).squeeze(-1)
        loss = ((out - batch["y"]) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def group_weights(k: int) -> torch.Tensor:
    """``[k, BATCH]`` weights: constraint j is the mean output over the j-th group of rows."""
    groups = torch.arange(BATCH) % k
    weights = torch.nn.functional.one_hot(groups, k).T.float()
    return weights / weights.sum(dim=1, keepdim=True)


def hand_loop(batch, k: int, table_rows: int) -> Callable[[], None]:
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    weights = group_weights(k) if k else None
    mu = torch.zeros(k)
    table = torch.zeros(table_rows) if table_rows else None
    eta = 1e-3

    def step() -> None:
        out = model(batch["x"]).squeeze(-1)
        loss = ((out - batch["y"]) ** 2).mean()
        if weights is not None:
            h = weights @ out
            loss = loss + (mu * h).sum()
        if table is not None:
            hp = out - batch["y"]
            loss = loss + (table[batch["index"]] * hp).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            if weights is not None:
                mu.add_(eta * h.detach())
            if table is not None:
                table[batch["index"]] += eta * hp.detach()

    return step


def eclearn_block(batch, k: int, table_rows: int, steps: int) -> Callable[[], None]:
    """``PrimalDual`` on the same problem; one ``fit`` call per timed block (as users call it)."""
    model = make_model()
    weights = group_weights(k) if k else None
    constraints: list[ecl.Constraint] = []
    if k:
        constraints.append(ecl.Equality("groups", size=k))
    if table_rows:
        constraints.append(ecl.Equality("fit", pointwise=True, num_samples=table_rows))

    def evaluate(model, b):
        out = model(b["x"]).squeeze(-1)
        terms = {"objective": ((out - b["y"]) ** 2).mean()}
        if weights is not None:
            terms["groups"] = weights @ out
        if table_rows:
            terms["fit"] = out - b["y"]
        return terms

    solver = ecl.PrimalDual(
        ecl.Problem(evaluate, constraints),
        model,
        torch.optim.Adam(model.parameters(), lr=1e-3),
        ecl.dual.SGD(lr=1e-3),
    )
    batches = [batch]
    return lambda: solver.fit(batches, max_steps=steps, warn=False)


def time_per_step(runs: dict[str, Callable[[], None]], steps: dict[str, int], blocks: int):
    """Interleave the candidates block by block; median seconds per step of each."""
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(blocks):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            samples[name].append((time.perf_counter() - start) / steps[name])
    return {name: statistics.median(v) for name, v in samples.items()}


def repeat(step: Callable[[], None], n: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(n):
            step()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="steps per timed block")
    parser.add_argument("--blocks", type=int, default=7, help="interleaved blocks per candidate")
    parser.add_argument("--out", default=None, help="write the Markdown table here too")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cases = [
        ("1 average", 1, 0),
        ("10 average", 10, 0),
        ("100 average", 100, 0),
        ("pointwise 1e3 rows", 0, 1_000),
        ("pointwise 1e6 rows", 0, 1_000_000),
    ]
    rows = []
    for label, k, table_rows in cases:
        batch = data(max(table_rows, BATCH))
        runs = {
            "plain": repeat(plain_loop(batch), args.steps),
            "hand": repeat(hand_loop(batch, k, table_rows), args.steps),
            "eclearn": eclearn_block(batch, k, table_rows, args.steps),
        }
        for run in runs.values():  # warm-up
            run()
        t = time_per_step(runs, dict.fromkeys(runs, args.steps), args.blocks)
        rows.append((label, t["plain"], t["hand"], t["eclearn"]))
        print(
            f"{label}: plain {t['plain'] * 1e3:.3f} ms, hand {t['hand'] * 1e3:.3f} ms, "
            f"eclearn {t['eclearn'] * 1e3:.3f} ms",
            flush=True,
        )
    header = (
        "| case | plain loop (ms/step) | hand-written Lagrangian (ms/step) | "
        "eclearn (ms/step) | eclearn / plain | eclearn / hand |"
    )
    lines = [header, "|---|---|---|---|---|---|"]
    for label, plain, hand, ours in rows:
        lines.append(
            f"| {label} | {plain * 1e3:.3f} | {hand * 1e3:.3f} | {ours * 1e3:.3f} | "
            f"{ours / plain:.3f}× | {ours / hand:.3f}× |"
        )
    small, large = rows[-2][3], rows[-1][3]
    lines.append("")
    lines.append(f"Pointwise step cost, 1e6-row table / 1e3-row table: {large / small:.3f}×")
    table = "\n".join(lines)
    print()
    print(table)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(table + "\n")


if __name__ == "__main__":
    main()
