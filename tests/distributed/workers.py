"""Problem and worker functions shared by the distributed tests (importable by spawn)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn

import eclearn as ecl
from eclearn.distributed import ShardedBatches

N, BATCH, GROUPS = 64, 16, 3


def data() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(123)
    x = torch.randn(N, 3, generator=gen, dtype=torch.float64)
    # Uneven group sizes so per-rank group counts differ.
    g = torch.tensor([0] * 34 + [1] * 20 + [2] * 10)[torch.randperm(N, generator=gen)]
    y = x @ torch.tensor([0.5, -1.0, 0.25], dtype=torch.float64) + 0.1 * torch.randn(
        N, generator=gen, dtype=torch.float64
    )
    return {"x": x, "y": y, "group": g}


def build(pointwise: bool = True, ddp: bool = False) -> ecl.PrimalDual:
    torch.manual_seed(7)
    model: nn.Module = nn.Linear(3, 1).double()
    if ddp:
        model = nn.parallel.DistributedDataParallel(model)

    def evaluate(model, batch):
        out = model(batch["x"]).squeeze(-1)
        score = torch.sigmoid(out)
        onehot = nn.functional.one_hot(batch["group"], GROUPS).to(out.dtype)
        terms = {
            "objective": ((out - batch["y"]) ** 2).mean(),
            "mean": out.mean().reshape(1),
            "energy": (out**2).mean().reshape(1),
            "rates": ecl.Ratio(score @ onehot, onehot.sum(0)),
        }
        if pointwise:
            terms["fit"] = out - batch["y"]
        return terms

    constraints = [
        ecl.Equality("mean", rhs=0.2),
        ecl.Inequality("energy", bound=0.3),
        ecl.Equality("rates", size=GROUPS, rhs=0.5),
    ]
    if pointwise:
        constraints.append(ecl.Equality("fit", pointwise=True, num_samples=N))
    problem = ecl.Problem(evaluate, constraints)
    params = model.parameters()
    return ecl.PrimalDual(
        problem,
        model,
        torch.optim.SGD(params, lr=0.05, momentum=0.5),
        ecl.dual.Adam(lr=0.02),
        dtype=torch.float64,
    )


def batches(world: int = 1, rank: int = 0):
    stream = ecl.Batches(data(), batch_size=BATCH, shuffle=True)
    return stream if world == 1 else ShardedBatches(stream, rank, world)


def snapshot(solver: ecl.PrimalDual) -> dict[str, torch.Tensor]:
    model = getattr(solver.model, "module", solver.model)
    out = {f"param/{k}": v.detach().clone() for k, v in model.state_dict().items()}
    out.update({f"mult/{k}": v for k, v in solver.multipliers.items()})
    out["history"] = torch.from_numpy(solver.history.to_numpy().copy())
    return out


def run_single(
    steps: int, pointwise: bool = True, load: str | None = None, save: str | None = None
) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    solver = build(pointwise)
    if load:
        solver.load(load)
    solver.fit(batches(), max_steps=steps, warn=False)
    if save:
        solver.save(save)
    return snapshot(solver)


def _init(rank: int, world: int, init_file: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)


def train(
    rank: int,
    world: int,
    steps: int,
    ddp: bool = False,
    load: str | None = None,
    save: str | None = None,
) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    solver = build(ddp=ddp)
    if load:
        solver.load(load)
    solver.fit(batches(world, rank), max_steps=steps, warn=False)
    if save:
        solver.save(save)
    return snapshot(solver)


def expect_problem_error(fn) -> str:
    try:
        fn()
    except ecl.ProblemError as err:
        return str(err)
    return "no error"


def mismatched_constraints(rank: int) -> None:
    model = nn.Linear(3, 1)
    problem = ecl.Problem(lambda m, b: {}, [ecl.Equality("c", size=1 + rank)])
    ecl.PrimalDual(problem, model, torch.optim.SGD(model.parameters(), lr=0.1))


def repeated_index(rank: int) -> None:
    torch.manual_seed(0)
    solver = build()
    batch = {k: v[:8] for k, v in data().items()}
    batch["index"] = torch.arange(8)  # the same ids on both ranks
    solver.fit([batch], max_steps=1, warn=False)


def evaluate_shard(rank: int, world: int) -> dict:
    """Held-out report from uneven shards in uneven batches (global sums across ranks)."""
    solver = build()
    full = data()
    full["index"] = torch.arange(N)
    rows = torch.arange(N)[:40] if rank == 0 else torch.arange(N)[40:]
    shard = {k: v[rows] for k, v in full.items()}
    batches_ = [{k: v[i : i + 7] for k, v in shard.items()} for i in range(0, len(rows), 7)]
    report = ecl.evaluate(solver.problem, solver.model, batches_, distributed=True)
    return report_numbers(report)


def report_numbers(report) -> dict:
    out = {"objective": torch.tensor(report.objective), "n": torch.tensor(report.num_samples)}
    for name, r in report.constraints.items():
        out[name] = r.value.reshape(-1)
    return out


def scenarios(rank: int, world: int, tmp: str, steps: int, single_checkpoint: str) -> None:
    """Every multi-process scenario in one spawn (process start-up dominates the cost)."""
    _init(rank, world, f"{tmp}/init")
    scenarios = {
        "two": lambda: train(rank, world, steps),
        "two_ddp": lambda: train(rank, world, steps, ddp=True),
        "first_half": lambda: train(rank, world, steps // 2, save=f"{tmp}/half-2.pt"),
        "resumed_from_one": lambda: train(rank, world, steps - steps // 2, load=single_checkpoint),
        "mismatch": lambda: expect_problem_error(lambda: mismatched_constraints(rank)),
        "repeated": lambda: expect_problem_error(lambda: repeated_index(rank)),
        "evaluate": lambda: evaluate_shard(rank, world),
    }
    try:
        results = {}
        for name, scenario in scenarios.items():
            results[name] = scenario()
            # every rank finishes a scenario (and its collectives) before the next starts:
            # a rank racing ahead into another scenario's collectives aborts gloo
            dist.barrier()
        torch.save(results, f"{tmp}/rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()
