"""The solver's checkpoint format (version 2).

``state_dict`` holds everything needed to resume bit for bit on CPU: the model (unwrapped
from DDP / ``torch.compile``, so keys match the plain model), the primal optimizer and
scheduler, the gradient scaler, the multipliers and the dual optimizer's state, the
counters, the batch stream (epoch position and RNG at the epoch's start), the current RNG
states, the history, the state of every stateful callback, and ``settings``: what the
state belongs to (constraint declarations, dtype, optimizer classes and hyper-parameters,
formulation). Loading compares ``settings`` with the solver's and refuses a mismatch with a
message naming the differing keys (``strict=False`` accepts it, keeping the new solver's
settings).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from eclearn import _rng
from eclearn.eager import algorithm_name
from eclearn.history import Columns
from eclearn.problem import ProblemError
from eclearn.solver.callbacks import unwrap
from eclearn.solver.phases import Phases

if TYPE_CHECKING:
    from eclearn.solver.loop import PrimalDual

__all__ = ["FORMAT", "CheckpointMismatch", "load_solver_state", "settings", "solver_state"]

FORMAT = 2


class CheckpointMismatch(ProblemError):
    """A checkpoint belongs to another problem or other solver settings."""


def _plain(value: Any) -> Any:
    """Settings as comparable plain values (floats rounded to 12 significant digits)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if not math.isfinite(value) else float(f"{value:.12g}")
    if isinstance(value, Tensor):
        return _plain(value.tolist())
    return repr(value)


def _primal_settings(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    if isinstance(optimizer, Phases):
        return {"type": "Phases", "phases": optimizer.settings()}
    groups = []
    for group in optimizer.param_groups:
        entry = {
            k: v
            for k, v in group.items()
            if k not in ("params", "initial_lr")
            and isinstance(v, (bool, int, float, str, tuple, list))
        }
        if "initial_lr" in group:  # a scheduler moves "lr"; the setting is where it started
            entry["lr"] = group["initial_lr"]
        groups.append(entry)
    return {"type": algorithm_name(optimizer), "groups": groups}


def settings(solver: PrimalDual) -> dict[str, Any]:
    """What a checkpoint of ``solver`` belongs to (compared on load)."""
    return _plain(
        {
            "constraints": solver.problem.describe(),
            "dtype": str(solver.dtype),
            "primal_optimizer": _primal_settings(solver.primal_optimizer),
            "dual_optimizer": solver.dual_optimizer.hyperparameters(),
            "formulation": solver.formulation.describe(),
            "primal_steps": solver.primal_steps,
            "mode": solver.mode,
        }
    )


def _differences(saved: Any, current: Any, prefix: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(saved) | set(current)):
            where = f"{prefix}.{key}" if prefix else key
            if key not in saved or key not in current:
                out.append(where)
            else:
                out += _differences(saved[key], current[key], where)
        return out
    if isinstance(saved, list) and isinstance(current, list) and len(saved) == len(current):
        out = []
        for i, (a, b) in enumerate(zip(saved, current, strict=True)):
            out += _differences(a, b, f"{prefix}[{i}]")
        return out
    return [] if saved == current else [f"{prefix}: {saved!r} → {current!r}"]


def solver_state(solver: PrimalDual) -> dict[str, Any]:
    """The checkpoint of ``solver`` (see the module docstring)."""
    return {
        "format": FORMAT,
        "problem": solver.problem.fingerprint(),
        "settings": settings(solver),
        "model": copy.deepcopy(unwrap(solver.model).state_dict()),
        "primal_optimizer": copy.deepcopy(solver.primal_optimizer.state_dict()),
        "scheduler": None
        if solver.scheduler is None
        else copy.deepcopy(solver.scheduler.state_dict()),
        "grad_scaler": None if solver.scaler is None else copy.deepcopy(solver.scaler.state_dict()),
        "multipliers": solver.multiplier_tables.state_dict(),
        "dual_state": {
            k: {n: v.clone() for n, v in s.items()} for k, s in solver.dual_state.items()
        },
        "counters": {"step": solver.step, "dual_steps": solver.dual_steps},
        "stream": solver.stream.state_dict(),
        "rng": _rng.serialize(_rng.capture()),
        "history": solver.history.state_dict(),
        "callbacks": solver.callback_states(),
    }


def load_solver_state(solver: PrimalDual, state: Mapping[str, Any], strict: bool = True) -> None:
    """Restore :func:`solver_state` into ``solver``; the next step continues exactly."""
    if not isinstance(state, Mapping) or "format" not in state:
        raise CheckpointMismatch(
            "this is not an eclearn solver checkpoint (no 'format' entry); pass what "
            "PrimalDual.state_dict() returned or a file written by PrimalDual.save"
        )
    if state["format"] != FORMAT:
        raise CheckpointMismatch(
            f"unsupported checkpoint format {state['format']!r} (this eclearn reads format "
            f"{FORMAT}); resume it with the eclearn version that wrote it, or start afresh"
        )
    if state["problem"] != solver.problem.fingerprint():
        raise CheckpointMismatch(
            "the checkpoint was saved for different constraints: "
            f"{state['problem']} vs {solver.problem.fingerprint()}; build the same problem "
            "before loading"
        )
    differences = _differences(state["settings"], settings(solver))
    if differences and strict:
        raise CheckpointMismatch(
            "the checkpoint was saved with other solver settings ("
            + "; ".join(differences[:8])
            + (f"; and {len(differences) - 8} more" if len(differences) > 8 else "")
            + "): build the solver with the saved settings, or load with strict=False to "
            "continue under the new ones"
        )
    unwrap(solver.model).load_state_dict(state["model"])
    saved = state["settings"]
    current = settings(solver)
    if saved["primal_optimizer"]["type"] == current["primal_optimizer"]["type"]:
        groups = [dict(g) for g in solver.primal_optimizer.param_groups]
        solver.primal_optimizer.load_state_dict(state["primal_optimizer"])
        if differences:  # strict=False: keep the new solver's hyper-parameters
            for group, mine in zip(solver.primal_optimizer.param_groups, groups, strict=True):
                group.update({k: v for k, v in mine.items() if k != "params"})
    if solver.scheduler is not None and state["scheduler"] is not None:
        solver.scheduler.load_state_dict(state["scheduler"])
    if solver.scaler is not None and state.get("grad_scaler") is not None:
        solver.scaler.load_state_dict(state["grad_scaler"])
    solver.multiplier_tables.load_state_dict(state["multipliers"])
    if saved["dual_optimizer"]["type"] == current["dual_optimizer"]["type"]:
        for key, entries in state["dual_state"].items():
            mine = solver.dual_state[key]
            solver.dual_state[key] = {
                n: v.to(device=solver.device, dtype=mine[n].dtype) for n, v in entries.items()
            }
    counters = state["counters"]
    solver.step, solver.dual_steps = int(counters["step"]), int(counters["dual_steps"])
    solver.stream.load_state_dict(state["stream"])
    _rng.restore(state["rng"])
    columns = list(state["history"]["columns"])
    if columns != solver.history.columns:
        proxied = Columns.for_problem(
            solver.problem, len(solver.primal_optimizer.param_groups), proxies=True
        )
        if columns == proxied.names:
            solver.use_schema(proxied)
    solver.history.load_state_dict(state["history"])
    solver.restore_callback_states(state.get("callbacks") or {})
