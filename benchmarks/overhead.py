"""Per-step cost of ``ecl.PrimalDual`` against hand-written PyTorch loops.

Model: MLP 64-256-256-1, batch 512, Adam, one thread. For each case the script times
(median over interleaved blocks):

- ``plain``: a plain training loop on the objective alone (no constraints);
- ``hand``: a hand-written Lagrangian loop with the same constraints (what a user would
  write without a library: one forward pass, ``loss + μ·h``, a dual ascent step);
- ``eclearn``: ``PrimalDual`` on the same problem (validation, history, diagnostics on).

Cases: 1, 10 and 100 average equality constraints (group means of the output), one
pointwise equality constraint over tables of 1 000 and 1 000 000 rows (the batch's rows
only are read and written, so the step cost should not depend on the table size), and a
*tiny model* — full-batch logistic regression on 4 320 × 23 features (COMPAS-sized) with 4
demographic-parity equalities — where the step itself is ~0.2 ms and the solver's own
per-step work shows most (target: ≤ 1.15× the hand-written loop).

    python benchmarks/overhead.py [--steps 200] [--blocks 5] [--out docs/results/overhead.md]
"""

from __future__ import annotations

import argparse
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


TINY_ROWS, TINY_FEATURES, TINY_GROUPS = 4320, 23, 4


def tiny_data() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(TINY_ROWS, TINY_FEATURES, generator=gen)
    y = (torch.rand(TINY_ROWS, generator=gen) > 0.5).float()
    group = torch.randint(0, TINY_GROUPS, (TINY_ROWS,), generator=gen)
    onehot = torch.nn.functional.one_hot(group, TINY_GROUPS).float()
    return {"x": x, "y": y, "contrast": onehot / onehot.sum(0) - 1.0 / TINY_ROWS}


def tiny_evaluate(model: nn.Module, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    logits = model(b["x"]).squeeze(-1)
    objective = torch.nn.functional.binary_cross_entropy_with_logits(logits, b["y"])
    return {"objective": objective, "parity": torch.sigmoid(logits) @ b["contrast"]}


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(TINY_FEATURES, 1)


def tiny_runs(steps: int) -> dict[str, Callable[[], None]]:
    batch = tiny_data()
    plain_model, hand_model, ecl_model = tiny_model(), tiny_model(), tiny_model()
    plain_opt = torch.optim.Adam(plain_model.parameters(), lr=0.01)
    hand_opt = torch.optim.Adam(hand_model.parameters(), lr=0.01)
    mu = torch.zeros(TINY_GROUPS)

    def plain() -> None:
        loss = tiny_evaluate(plain_model, batch)["objective"]
        plain_opt.zero_grad(set_to_none=True)
        loss.backward()
        plain_opt.step()

    def hand() -> None:
        out = tiny_evaluate(hand_model, batch)
        loss = out["objective"] + (mu * out["parity"]).sum()
        hand_opt.zero_grad(set_to_none=True)
        loss.backward()
        hand_opt.step()
        with torch.no_grad():
            mu.add_(1e-3 * out["parity"].detach())

    problem = ecl.Problem(tiny_evaluate, [ecl.Equality("parity", size=TINY_GROUPS)])
    solver = ecl.PrimalDual(
        problem, ecl_model, torch.optim.Adam(ecl_model.parameters(), lr=0.01), ecl.dual.SGD(1e-3)
    )
    batches = [batch]
    return {
        "plain": repeat(plain, steps),
        "hand": repeat(hand, steps),
        "eclearn": lambda: solver.fit(batches, max_steps=steps, warn=False),
    }


def time_per_step(runs: dict[str, Callable[[], None]], steps: dict[str, int], blocks: int):
    """Interleave the candidates block by block; CPU seconds per step of each (the fastest
    block: on a shared machine, load only ever adds time)."""
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(blocks):
        for name, run in runs.items():
            start = time.process_time()
            run()
            samples[name].append((time.process_time() - start) / steps[name])
    return {name: min(v) for name, v in samples.items()}


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
    runs = tiny_runs(args.steps)
    for run in runs.values():  # warm-up
        run()
    t = time_per_step(runs, dict.fromkeys(runs, args.steps), args.blocks)
    rows.append(("tiny: logistic regression, 4 equalities", t["plain"], t["hand"], t["eclearn"]))
    print(
        f"tiny: plain {t['plain'] * 1e3:.3f} ms, hand {t['hand'] * 1e3:.3f} ms, "
        f"eclearn {t['eclearn'] * 1e3:.3f} ms",
        flush=True,
    )
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
