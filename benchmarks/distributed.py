"""Steps per second of ``PrimalDual`` on 1 and N processes (strong scaling, fixed global batch).

MLP 64-256-256-1, global batch 1024 split across the processes, one thread per process,
gloo on CPU (nccl when ``--backend nccl`` on GPUs). Cases: a plain DDP training loop on
the objective alone (what the network and DDP cost without eclearn); 10 average equality
constraints; one pointwise equality over a 1 000 000-row table (replicated on every rank:
each step all-gathers the batch's ids and values so every rank applies the same update).

    python benchmarks/distributed.py [--procs 1 2] [--steps 200] [--out docs/results/distributed.md]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import eclearn as ecl
from eclearn.distributed import shard

GLOBAL_BATCH, FEATURES, TABLE = 1024, 64, 1_000_000


def problem(case: str) -> ecl.Problem:
    def evaluate(model, batch):
        out = model(batch["x"]).squeeze(-1)
        terms = {"objective": ((out - batch["y"]) ** 2).mean()}
        if case == "average":
            onehot = nn.functional.one_hot(batch["group"], 10).to(out.dtype)
            terms["groups"] = ecl.Ratio(out @ onehot, onehot.sum(0))
        else:
            terms["fit"] = out - batch["y"]
        return terms

    if case == "average":
        return ecl.Problem(evaluate, [ecl.Equality("groups", size=10)])
    return ecl.Problem(evaluate, [ecl.Equality("fit", pointwise=True, num_samples=TABLE)])


def global_batches(steps: int) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [
        {
            "x": torch.randn(GLOBAL_BATCH, FEATURES, generator=gen),
            "y": torch.randn(GLOBAL_BATCH, generator=gen),
            "group": torch.randint(0, 10, (GLOBAL_BATCH,), generator=gen),
            "index": torch.randperm(TABLE, generator=gen)[:GLOBAL_BATCH],
        }
        for _ in range(min(steps, 20))
    ]


def worker(rank: int, world: int, init: str, case: str, steps: int, backend: str, out: str):
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group(backend, init_method=f"file://{init}", rank=rank, world_size=world)
    device = torch.device(f"cuda:{rank}" if backend == "nccl" else "cpu")
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(FEATURES, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 1)
    ).to(device)
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model)
    batches = [shard(b, rank, world) for b in global_batches(steps)]
    if case == "plain":
        run = _plain_loop(model, batches)
    else:
        run = _solver_loop(model, batches, case, device)
    run(10)
    if world > 1:
        dist.barrier()
    start = time.perf_counter()
    run(steps)
    if world > 1:
        dist.barrier()
    seconds = time.perf_counter() - start
    if rank == 0:
        with open(out, "w") as handle:
            handle.write(str(steps / seconds))
    if world > 1:
        dist.destroy_process_group()


def _plain_loop(model: nn.Module, batches: list[dict[str, torch.Tensor]]):
    """The baseline: the same (DDP-wrapped) model trained on the objective alone."""
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)

    def run(steps: int) -> None:
        for i in range(steps):
            batch = batches[i % len(batches)]
            loss = ((model(batch["x"]).squeeze(-1) - batch["y"]) ** 2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return run


def _solver_loop(model: nn.Module, batches: list[dict[str, torch.Tensor]], case: str, device):
    solver = ecl.PrimalDual(
        problem(case),
        model,
        torch.optim.Adam(model.parameters(), 1e-3),
        ecl.dual.SGD(1e-3),
        device=device,
    )
    return lambda steps: solver.fit(batches, max_steps=steps, warn=False)


def measure(world: int, case: str, steps: int, backend: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rate")
        args = (world, os.path.join(tmp, "init"), case, steps, backend, out)
        if world == 1:
            worker(0, *args)
        else:
            mp.spawn(worker, args=args, nprocs=world)
        with open(out) as handle:
            return float(handle.read())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--backend", default="gloo", choices=["gloo", "nccl"])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    lines = [
        "| case | processes | steps/s | speed-up | scaling efficiency |",
        "|---|---|---|---|---|",
    ]
    for case, label in (
        ("plain", "plain DDP loop, no constraints (baseline)"),
        ("average", "10 average constraints"),
        ("pointwise", "pointwise, 1e6-row table"),
    ):
        base = None
        for world in args.procs:
            rate = measure(world, case, args.steps, args.backend)
            base = base or rate
            speedup = rate / base
            lines.append(
                f"| {label} | {world} | {rate:.1f} | {speedup:.2f}× | "
                f"{speedup / world * args.procs[0]:.0%} |"
            )
            print(lines[-1], flush=True)
    table = "\n".join(lines)
    print()
    print(table)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(table + "\n")


if __name__ == "__main__":
    main()
