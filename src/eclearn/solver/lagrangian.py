"""The empirical Lagrangian of one step and the dual update: pure functions of the step's
values, the multiplier tables and the formulation, shared by the local and the distributed
step.

    L(θ, λ, μ) = ℓ̂(θ) + Σ term(v, multiplier)    with v = ĥ − b (equalities), ĝ − c (inequalities)

Average constraints contribute one elementwise term over the flat multiplier vector;
pointwise constraints the batch mean ``(1/B) Σ_i term(v_i, μ_i)`` of their rows. The dual
step moves the multipliers along the formulation's dual gradient of the *measured* values
(the exact part of an :class:`~eclearn.Proxy`): ``μ ← μ + η·grad`` through the dual
optimizer, then the tables project inequality multipliers onto ``≥ 0``.

Distributed (:func:`globalize`): the statistics of all ranks are made global with **one**
``all_reduce`` (every average statistic as numerator and denominator, see
:meth:`Evaluation.sums`) plus one ``all_gather`` of the pointwise rows. The rank's primal
loss is the linearisation whose rank-average gradient is the global Lagrangian's: for a
global statistic ``V = N/D`` the rank uses ``W (n_r − V d_r) / D`` (gradient
``W (∇n_r − V ∇d_r) / D``), multiplied by the formulation's derivative at ``V``. Every rank
then applies the same dual update, so the tables stay replicated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from eclearn.distributed import Communicator
from eclearn.dual import DualOptimizer
from eclearn.formulations import Formulation
from eclearn.multipliers import Multipliers
from eclearn.problem import OBJECTIVE, Evaluation, Problem, ProblemError

__all__ = ["Coefficients", "DualState", "dual_update", "globalize", "primal_loss"]

DENSE = Multipliers.DENSE_KEY
DualState = dict[str, dict[str, Tensor]]


@dataclass
class Coefficients:
    """Per-entry dual learning rates and formulation weights, resolved once per setting."""

    dense_lr: Tensor
    pointwise_lr: dict[str, Tensor]
    dense_weight: Tensor | None
    pointwise_weight: dict[str, Tensor | None]
    pointwise_inequality: dict[str, Tensor]
    version: tuple[int, int]

    @classmethod
    def build(
        cls,
        problem: Problem,
        optimizer: DualOptimizer,
        formulation: Formulation,
        dtype: torch.dtype,
        device: torch.device,
    ) -> Coefficients:
        lrs = [
            torch.full((c.size,), optimizer.lr_for(c.name, c.lr), dtype=torch.float64)
            for c in problem.average
        ]
        dense_lr = (torch.cat(lrs) if lrs else torch.zeros(0)).to(dtype=dtype, device=device)
        pointwise_lr = {
            c.name: torch.tensor(optimizer.lr_for(c.name, c.lr), dtype=dtype, device=device)
            for c in problem.pointwise
        }
        weights = [formulation.weights(c) for c in problem.average]
        dense_weight = None
        if weights and all(w is not None for w in weights):
            dense_weight = torch.cat(weights).to(dtype=dtype, device=device)  # type: ignore[arg-type]
        pointwise_weight: dict[str, Tensor | None] = {}
        for c in problem.pointwise:
            w = formulation.weights(c)
            pointwise_weight[c.name] = None if w is None else w.to(dtype=dtype, device=device)
        inequality = {
            c.name: torch.tensor(not c.is_equality, device=device) for c in problem.pointwise
        }
        return cls(
            dense_lr,
            pointwise_lr,
            dense_weight,
            pointwise_weight,
            inequality,
            (id(optimizer), optimizer.version),
        )


def _dense_term(
    flat: Tensor, mults: Multipliers, formulation: Formulation, coeffs: Coefficients
) -> Tensor:
    dense = mults.dense
    return formulation.term(
        dense.violation(flat), dense.value.to(flat.dtype), dense.inequality, coeffs.dense_weight
    ).sum()


def _pointwise_terms(
    values: dict[str, Tensor],
    indices: dict[str, Tensor],
    mults: Multipliers,
    formulation: Formulation,
    coeffs: Coefficients,
) -> dict[str, Tensor]:
    """Σ over the batch's rows of each pointwise constraint's term (not yet divided by B)."""
    out = {}
    for name, table in mults.tables.items():
        value = values[name]
        mu = table.gather(indices[name]).to(value.dtype)
        out[name] = formulation.term(
            table.violation(value),
            mu,
            coeffs.pointwise_inequality[name],
            coeffs.pointwise_weight[name],
        ).sum()
    return out


def primal_loss(
    ev: Evaluation, mults: Multipliers, formulation: Formulation, coeffs: Coefficients
) -> Tensor:
    """The formulation's primal loss of one evaluation (differentiable): the objective plus
    every constraint term, built on the values the primal step differentiates."""
    loss = ev.objective
    if mults.dense.size:
        flat = mults.dense.flatten(ev.values)
        term = _dense_term(flat, mults, formulation, coeffs)
        loss = term if loss is None else loss + term
    for name, total in _pointwise_terms(ev.values, ev.indices, mults, formulation, coeffs).items():
        term = total / max(ev.indices[name].shape[0], 1)
        loss = term if loss is None else loss + term
    if loss is None:
        raise ProblemError("the problem has no objective and no constraints: nothing to train")
    return loss


@torch.no_grad()
def dual_update(
    ev: Evaluation,
    mults: Multipliers,
    optimizer: DualOptimizer,
    state: DualState,
    coeffs: Coefficients,
    formulation: Formulation,
    factor: float = 1.0,
    violation: Tensor | None = None,
) -> None:
    """One dual step along the measured (exact) values of ``ev``; ``factor`` scales the
    learning rates (the dual schedule). ``violation``: the average constraints' signed
    violations when already computed (in the multipliers' dtype)."""
    dense = mults.dense
    if dense.size:
        if violation is None:
            violation = dense.violation(dense.measured(ev).to(dense.value.dtype))
        grad = formulation.dual_gradient(violation, dense.value, dense.inequality)
        lr = coeffs.dense_lr if factor == 1.0 else coeffs.dense_lr * factor
        delta, state[DENSE] = optimizer.update(grad, state[DENSE], lr)
        dense.step_(delta)
    for name, table in mults.tables.items():
        index = ev.indices[name]
        violation = table.violation(ev.measured(name).to(table.table.dtype))
        mu = table.gather(index)
        grad = formulation.dual_gradient(violation, mu, coeffs.pointwise_inequality[name])
        rows = {k: v.index_select(0, index) for k, v in state[name].items()}
        lr = coeffs.pointwise_lr[name] if factor == 1.0 else coeffs.pointwise_lr[name] * factor
        delta, rows = optimizer.update(grad, rows, lr)
        table.write(index, mu + delta)
        for key, value in rows.items():
            state[name][key].index_copy_(0, index, value)


def globalize(
    ev: Evaluation,
    problem: Problem,
    mults: Multipliers,
    formulation: Formulation,
    coeffs: Coefficients,
    comm: Communicator,
    step: int,
    with_loss: bool = False,
) -> tuple[Evaluation, Tensor | None, Tensor]:
    """Make a rank's statistics global (one all_reduce + one all_gather); with
    ``with_loss`` also the rank's primal loss whose rank-averaged gradient is the global
    Lagrangian's (see the module docstring). Returns (global evaluation, loss, Lagrangian)."""
    world, rank = comm.world_size, comm.rank
    f64 = torch.float64
    device = mults.dense.value.device
    proxies = ev.has_proxies
    names = [c.name for c in problem.average]
    has_objective = ev.objective is not None

    def pair(name: str, exact: bool) -> tuple[Tensor, Tensor]:
        if name == OBJECTIVE and not has_objective:
            zero = torch.zeros((), device=device)
            return zero, zero
        num, den = ev.sums(name, exact=exact)
        return num.reshape(-1), den.reshape(-1)

    surrogate = [pair(n, False) for n in [OBJECTIVE, *names]]
    exact = [pair(n, True) for n in [OBJECTIVE, *names]] if proxies else []
    pieces = [torch.tensor([float(ev.batch_size)], dtype=f64, device=device)]
    for group in (surrogate, exact):
        if group:
            pieces += [torch.cat([p[0] for p in group]).detach().to(f64)]
            pieces += [torch.cat([p[1] for p in group]).detach().to(f64)]
    local_terms = _pointwise_terms(ev.values, ev.indices, mults, formulation, coeffs)
    for name in mults.tables:
        counts = torch.zeros(world, dtype=f64, device=device)
        counts[rank] = float(ev.indices[name].numel())
        pieces += [counts, local_terms[name].detach().to(f64).reshape(1)]
    total = comm.all_reduce_sum(torch.cat(pieces))

    width = 1 + mults.dense.size
    global_size = float(total[0])
    offset = 1

    def ratio(block: Tensor) -> Tensor:
        num, den = block[:width], block[width:]
        safe = torch.where(den == 0, torch.ones_like(den), den)
        return torch.where(den == 0, torch.zeros_like(num), num / safe)

    value_s = ratio(total[offset : offset + 2 * width])
    den_s = total[offset + width : offset + 2 * width]
    offset += 2 * width
    value_e = value_s
    if proxies:
        value_e = ratio(total[offset : offset + 2 * width])
        offset += 2 * width

    dtype = mults.dense.value.dtype
    global_ev = Evaluation(value_s[0] if has_objective else None, {}, {}, {}, int(global_size))
    if proxies and ev.exact_objective is not None:
        global_ev.exact_objective = value_e[0]
    for c in problem.average:
        span = mults.dense.slices[c.name]
        part = slice(span.start + 1, span.stop + 1)
        global_ev.values[c.name] = value_s[part].to(dtype)
        if c.name in ev.exact:
            global_ev.exact[c.name] = value_e[part].to(dtype)

    loss: Tensor | None = None
    lagrangian = value_s[0] if has_objective else total.new_zeros(())
    local_nums = [p[0] for p in surrogate]
    local_dens = [p[1] for p in surrogate]
    if has_objective and with_loss:
        n_r, d_r = local_nums[0], local_dens[0]
        loss = (world * (n_r - value_s[0].to(n_r.dtype) * d_r) / den_s[0].to(n_r.dtype)).sum()
    if mults.dense.size:
        flat_global = value_s[1:].to(dtype)
        leaf = flat_global.detach().requires_grad_(True)
        with torch.enable_grad():
            term = _dense_term(leaf, mults, formulation, coeffs)
            (slope,) = torch.autograd.grad(term, leaf)
        lagrangian = lagrangian + term.detach().to(f64)
        if with_loss:
            local = torch.cat(local_nums[1:])
            dens = torch.cat(local_dens[1:]).to(local.dtype)
            den_g = den_s[1:]
            safe = torch.where(den_g == 0, torch.ones_like(den_g), den_g).to(local.dtype)
            linear = world * (local - value_s[1:].to(local.dtype) * dens) / safe
            piece = (slope.to(local.dtype) * linear).sum()
            loss = piece if loss is None else loss + piece

    lengths = [0] * world
    counts_by_name: dict[str, list[int]] = {}
    for name, table in mults.tables.items():
        counts = total[offset : offset + world]
        global_terms = total[offset + world]
        offset += world + 1
        count = float(counts.sum())
        counts_by_name[name] = [int(x) for x in counts.tolist()]
        lagrangian = lagrangian + global_terms / max(count, 1.0)
        for r in range(world):
            lengths[r] += counts_by_name[name][r] * (1 + table.width)
        if with_loss:
            piece = local_terms[name] * (world / max(count, 1.0))
            loss = piece if loss is None else loss + piece
    if mults.tables:
        payload = torch.cat(
            [
                torch.cat([ev.indices[name].to(f64), ev.measured(name).reshape(-1).to(f64)])
                for name in mults.tables
            ]
        )
        gathered = comm.all_gather_padded(payload, lengths)
        parts: dict[str, tuple[list[Tensor], list[Tensor]]] = {n: ([], []) for n in mults.tables}
        for r, chunk in enumerate(gathered):
            pos = 0
            for name, table in mults.tables.items():
                k = counts_by_name[name][r]
                parts[name][0].append(chunk[pos : pos + k].long())
                pos += k
                parts[name][1].append(chunk[pos : pos + k * table.width].reshape(k, table.width))
                pos += k * table.width
        for name in mults.tables:
            index = torch.cat(parts[name][0])
            if torch.unique(index).numel() != index.numel():
                raise ProblemError(
                    f"step {step}: pointwise constraint {name!r} got the same sample id on more "
                    "than one rank in one step; shard the data so each id is seen by one rank "
                    "per step (e.g. DistributedSampler or ecl.distributed.ShardedBatches)"
                )
            global_ev.indices[name] = index
            global_ev.values[name] = torch.cat(parts[name][1]).to(dtype)
    if with_loss and loss is None:
        raise ProblemError("the problem has no objective and no constraints: nothing to train")
    return global_ev, loss, lagrangian.reshape(())
