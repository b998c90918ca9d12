"""Multi-process training on ``torch.distributed``: exact constraint statistics across ranks.

Each rank evaluates its shard of the global batch. Before the dual step the solver makes
the statistics global with **one** ``all_reduce`` for the objective, every average
constraint and the pointwise bookkeeping, plus one ``all_gather`` of the pointwise rows:

- every average statistic travels as a numerator and a denominator (a plain tensor ``v``
  from a batch of ``B`` rows as ``(B·v, B)``; an ``ecl.Ratio`` as its own parts), so the
  global value ``Σ num / Σ den`` is exact whatever the per-rank counts;
- the primal loss of a rank is built so that the *average of the ranks' gradients* (what
  DDP computes) is the gradient of the global Lagrangian: for a global statistic
  ``V = N/D`` the rank uses ``W (n_r − V d_r) / D`` (gradient ``W (∇n_r − V ∇d_r)/D``),
  multiplied by the formulation's derivative at the global value;
- pointwise constraints gather the batch's ids and values from all ranks, and every rank
  applies the same dual update to all gathered rows: the multiplier tables stay replicated
  and identical (checkpoints hold the full table once, written by rank 0).

Models need not be wrapped in ``DistributedDataParallel``: without DDP the solver averages
the gradients itself (one flattened ``all_reduce``).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from eclearn.problem import ProblemError

__all__ = ["Communicator", "ShardedBatches", "shard"]


class Communicator:
    """The process group the solver reduces over, with the few collectives it needs."""

    def __init__(self, group: Any = None) -> None:
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.backend = dist.get_backend(group)

    @classmethod
    def detect(cls, group: Any = None) -> Communicator | None:
        """A communicator when a process group with more than one rank is initialised."""
        if not (dist.is_available() and dist.is_initialized()):
            if group is not None:
                raise RuntimeError(
                    "process_group was given but torch.distributed is not initialised; call "
                    "torch.distributed.init_process_group first (torchrun does it for you)"
                )
            return None
        comm = cls(group)
        return comm if comm.world_size > 1 else None

    def device_for(self, device: torch.device) -> torch.device:
        """gloo reduces CPU tensors, nccl CUDA tensors."""
        return torch.device("cpu") if self.backend == "gloo" else device

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        work = tensor.to(self.device_for(tensor.device))
        dist.all_reduce(work, op=dist.ReduceOp.SUM, group=self.group)
        return work.to(tensor.device)

    def all_gather_padded(self, tensor: Tensor, lengths: list[int]) -> list[Tensor]:
        """Gather 1-D tensors of known per-rank ``lengths`` (padded to the longest)."""
        longest = max(lengths)
        device = self.device_for(tensor.device)
        padded = torch.zeros(longest, dtype=tensor.dtype, device=device)
        padded[: tensor.numel()] = tensor.to(device)
        out = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(out, padded, group=self.group)
        return [o[:n].to(tensor.device) for o, n in zip(out, lengths, strict=True)]

    def check_same(self, description: object, what: str) -> None:
        """Raise on every rank when the ranks disagree on ``description``."""
        digest = zlib.crc32(json.dumps(description, sort_keys=True, default=str).encode())
        bounds = torch.tensor([digest, -digest], dtype=torch.float64)
        dist.all_reduce(bounds, op=dist.ReduceOp.MAX, group=self.group)
        if int(bounds[0]) != digest or int(-bounds[1]) != digest:
            raise ProblemError(
                f"ranks disagree on {what} (rank {self.rank} has {description}); every process "
                "must build the same problem"
            )

    def average_gradients(self, parameters: Iterable[Tensor]) -> None:
        """Average ``.grad`` over ranks with one flattened all_reduce (models without DDP)."""
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        flat = self.all_reduce_sum(flat) / self.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def barrier(self) -> None:
        dist.barrier(group=self.group)


def shard(batch: Mapping[str, Any], rank: int, world_size: int) -> dict[str, Any]:
    """Rows ``rank, rank + W, rank + 2W, ...`` of every tensor in a global batch."""
    return {
        k: (v[rank::world_size] if isinstance(v, Tensor) and v.dim() > 0 else v)
        for k, v in batch.items()
    }


class ShardedBatches:
    """Serve each rank its shard of every global batch of ``batches``.

    All ranks iterate the same global stream (seed them alike), so the union of the shards
    is exactly the single-process batch: N processes reproduce one process with the same
    global batch, and a run can resume with a different number of processes.
    """

    def __init__(
        self,
        batches: Iterable[Mapping[str, Any]],
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        initialised = dist.is_available() and dist.is_initialized()
        self.batches = batches
        self.rank = rank if rank is not None else (dist.get_rank() if initialised else 0)
        self.world_size = (
            world_size if world_size is not None else (dist.get_world_size() if initialised else 1)
        )

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.batches:
            yield shard(batch, self.rank, self.world_size)
