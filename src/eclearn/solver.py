"""The primal-dual solver: dual ascent over a sequence of unconstrained empirical problems.

Each *step* takes one batch, calls the problem's ``evaluate`` once (one forward pass for
the objective and every constraint), assembles the formulation's primal loss (the
empirical Lagrangian by default) and takes one step of the user's ``torch.optim``
optimizer. After every ``primal_steps``-th step the multipliers take one dual step along
the violations of that step's forward pass (``mode="simultaneous"``) or of a fresh
evaluation after the primal update (``mode="alternating"``):

    μ ← μ + η (ĥ − b)      (equality, free)
    λ ← [λ + η (ĝ − c)]₊   (inequality, projected)

``fit`` can be called repeatedly; ``epochs``/``max_steps`` always count *further*
epochs/steps. ``state_dict`` holds everything needed to resume bit for bit on CPU.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from eclearn import _rng
from eclearn._io import load_checkpoint, save_checkpoint
from eclearn.diagnostics import Diagnostic, DiagnosticWarning, diagnose
from eclearn.distributed import Communicator
from eclearn.dual import Adam, DualOptimizer
from eclearn.formulations import Formulation, Lagrangian
from eclearn.history import History
from eclearn.multipliers import DenseMultipliers, IndexedMultipliers
from eclearn.problem import Evaluation, Problem, ProblemError, check_finite

__all__ = ["Callback", "FitResult", "PrimalDual", "StoppingRule"]

_CHECKPOINT_FORMAT = 1
_DENSE = "__average__"


@dataclass
class StoppingRule:
    """Stop when every constraint is within tolerance and the Lagrangian has settled.

    Checked every ``check_every`` steps once ``min_steps`` steps were taken in this fit:
    the mean violation of each component over the last ``window`` steps must be within
    ``tolerance`` (each constraint's own ``tolerance=`` when None; for pointwise
    constraints the batch max |violation|), and the moving average of the Lagrangian over
    the last ``window`` steps must differ from that over the previous window by at most
    ``lagrangian_rtol · max(1, |average|)``.
    """

    tolerance: float | None = None
    window: int = 100
    lagrangian_rtol: float = 1e-5
    min_steps: int = 0
    check_every: int = 10

    def __post_init__(self) -> None:
        if self.window < 1 or self.check_every < 1 or self.min_steps < 0:
            raise ValueError("StoppingRule: window and check_every must be ≥ 1, min_steps ≥ 0")
        if self.tolerance is not None and self.tolerance < 0:
            raise ValueError(f"StoppingRule tolerance must be ≥ 0, got {self.tolerance}")


class Callback:
    """Hooks called by :meth:`PrimalDual.fit`. Override what you need; a plain callable
    ``fn(solver)`` passed as a callback is called at the end of every step."""

    def on_fit_start(self, solver: PrimalDual) -> None: ...

    def on_step_end(self, solver: PrimalDual) -> None: ...

    def on_epoch_end(self, solver: PrimalDual) -> None: ...

    def on_fit_end(self, solver: PrimalDual, result: FitResult) -> None: ...


class _FunctionCallback(Callback):
    def __init__(self, fn: Callable[[PrimalDual], Any]) -> None:
        self.fn = fn

    def on_step_end(self, solver: PrimalDual) -> None:
        self.fn(solver)


@dataclass
class FitResult:
    """What ``fit`` returns: final multipliers, the full history, diagnostics, counters."""

    multipliers: dict[str, Tensor]
    history: History
    diagnostics: list[Diagnostic]
    steps: int
    epochs: int
    stop_reason: str
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def stopped_early(self) -> bool:
        return self.stop_reason not in ("max_steps", "epochs")

    def summary(self) -> str:
        lines = [
            f"{self.steps} steps, {self.epochs} epochs, {self.seconds:.1f}s, stop: "
            f"{self.stop_reason}"
        ]
        last = self.history.last()
        for key in ("objective", "lagrangian"):
            if key in last and not math.isnan(last[key]):
                lines.append(f"  {key}: {last[key]:.6g}")
        for key in self.history.select("violation/"):
            lines.append(f"  {key}: {last[key]:.3g}")
        lines += [f"  ! {d.message}" for d in self.diagnostics]
        return "\n".join(lines)


def _move(batch: Mapping[str, Any], device: torch.device | None) -> dict[str, Any]:
    if device is None:
        return dict(batch)
    return {
        k: (v.to(device, non_blocking=True) if isinstance(v, Tensor) else v)
        for k, v in batch.items()
    }


def _unwrap(model: nn.Module) -> nn.Module:
    return (
        getattr(model, "module", model)
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel))
        else model
    )


class PrimalDual:
    """Primal-dual training of ``model`` on ``problem``.

    Args:
        problem: the :class:`~eclearn.Problem`.
        model: any ``nn.Module`` (passed to ``evaluate``; may be DDP-wrapped).
        primal_optimizer: any ``torch.optim.Optimizer`` over the model's parameters.
        dual_optimizer: :mod:`eclearn.dual` optimizer; default ``ecl.dual.Adam(lr=1e-3)``.
        formulation: :class:`~eclearn.Lagrangian` (default), ``Penalty``, ``AugmentedLagrangian``.
        primal_steps: K primal steps per dual step.
        mode: ``"simultaneous"`` or ``"alternating"`` (re-evaluates after the primal step).
        scheduler: optional LR scheduler of the primal optimizer, stepped every step or
            every epoch (``scheduler_interval``).
        device: where the model, multipliers and batches live (default: the model's).
        dtype: dtype of the multipliers and dual state (default float32).
        grad_clip: optional max norm for the primal gradients.
        process_group: the ``torch.distributed`` group to reduce over (default: the
            global group when one is initialised with more than one process).
        autocast: run ``evaluate`` under ``torch.autocast`` with this dtype
            (``torch.bfloat16``/``torch.float16``; fp16 adds a gradient scaler).
            Multipliers and dual updates stay in ``dtype``.
    """

    def __init__(
        self,
        problem: Problem,
        model: nn.Module,
        primal_optimizer: torch.optim.Optimizer,
        dual_optimizer: DualOptimizer | None = None,
        *,
        formulation: Formulation | None = None,
        primal_steps: int = 1,
        mode: str = "simultaneous",
        scheduler: Any = None,
        scheduler_interval: str = "step",
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        grad_clip: float | None = None,
        process_group: Any = None,
        autocast: torch.dtype | None = None,
    ) -> None:
        if not isinstance(problem, Problem):
            raise TypeError(f"PrimalDual needs an ecl.Problem, got {type(problem).__name__}")
        if not isinstance(model, nn.Module):
            raise TypeError(f"PrimalDual needs a torch nn.Module, got {type(model).__name__}")
        if not isinstance(primal_optimizer, torch.optim.Optimizer):
            raise TypeError("primal_optimizer must be a torch.optim.Optimizer instance")
        if mode not in ("simultaneous", "alternating"):
            raise ValueError(f"mode must be 'simultaneous' or 'alternating', got {mode!r}")
        if not isinstance(primal_steps, int) or primal_steps < 1:
            raise ValueError(f"primal_steps must be an int ≥ 1, got {primal_steps!r}")
        if scheduler_interval not in ("step", "epoch"):
            raise ValueError(
                f"scheduler_interval must be 'step' or 'epoch', got {scheduler_interval!r}"
            )
        for group in primal_optimizer.param_groups:
            lr = group.get("lr", 0.0)
            if isinstance(lr, (int, float)) and lr < 0:
                raise ValueError(f"primal learning rate must be ≥ 0, got {lr}")
        if grad_clip is not None and not grad_clip > 0:
            raise ValueError(f"grad_clip must be positive, got {grad_clip}")
        self.problem = problem
        self.model = model
        self.primal_optimizer = primal_optimizer
        self.dual_optimizer = dual_optimizer if dual_optimizer is not None else Adam(lr=1e-3)
        if not isinstance(self.dual_optimizer, DualOptimizer):
            raise TypeError(
                "dual_optimizer must be an eclearn.dual optimizer (ecl.dual.SGD, "
                f"ecl.dual.Adam, ecl.dual.NuPI), got {type(dual_optimizer).__name__}"
            )
        unknown = sorted(set(self.dual_optimizer.lrs) - set(problem.by_name) - {"default"})
        if unknown:
            raise ProblemError(
                f"the dual learning-rate mapping names {unknown}, which the problem does not "
                f"declare; declared: {sorted(problem.by_name)} (and 'default')"
            )
        self.formulation = formulation if formulation is not None else Lagrangian()
        self.formulation.bind(problem.constraints)
        self.primal_steps = primal_steps
        self.mode = mode
        self.scheduler = scheduler
        self.scheduler_interval = scheduler_interval
        self.grad_clip = grad_clip
        if device is None:
            first = next(iter(model.parameters()), None)
            device = first.device if first is not None else torch.device("cpu")
        self.device = torch.device(device)
        self.model.to(self.device)
        self.dtype = dtype
        if autocast not in (None, torch.bfloat16, torch.float16):
            raise ValueError(
                f"autocast must be None, torch.bfloat16 or torch.float16, got {autocast}"
            )
        self.autocast = autocast
        self.scaler = torch.amp.GradScaler(self.device.type) if autocast == torch.float16 else None
        self.comm = Communicator.detect(process_group)
        if self.comm is not None:
            self.comm.check_same(problem.fingerprint(), "the declared constraints")

        self.dense = DenseMultipliers(problem.average, dtype=dtype, device=self.device)
        self.indexed = {
            c.name: IndexedMultipliers(c, dtype=dtype, device=self.device)
            for c in problem.pointwise
        }
        self._build_rates_and_weights()
        self.dual_state: dict[str, dict[str, Tensor]] = {
            _DENSE: self.dual_optimizer.init_state(self.dense.value)
        }
        for name, table in self.indexed.items():
            self.dual_state[name] = self.dual_optimizer.init_state(table.table)
        self.history = History(self._columns())

        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.dual_steps = 0
        self._epoch_rng: dict[str, Any] | None = None
        self._iterator: Any = None
        self._iterable: Any = None
        self._replay = False
        self._stop_reason: str | None = None
        self._last_row: Tensor | None = None
        self._pending_batches_state: Any = None
        self._nan = torch.tensor(math.nan, device=self.device)

    # ------------------------------------------------------------------ set-up helpers
    def _build_rates_and_weights(self) -> None:
        opt = self.dual_optimizer
        lrs = [
            torch.full((c.size,), opt.lr_for(c.name, c.lr), dtype=torch.float64)
            for c in self.problem.average
        ]
        self.dense_lr = (torch.cat(lrs) if lrs else torch.zeros(0)).to(self.dtype).to(self.device)
        self.pointwise_lr = {
            c.name: torch.tensor(opt.lr_for(c.name, c.lr), dtype=self.dtype, device=self.device)
            for c in self.problem.pointwise
        }
        weights = [self.formulation.weights(c) for c in self.problem.average]
        self.dense_weight = (
            torch.cat(weights).to(self.dtype).to(self.device)  # type: ignore[arg-type]
            if weights and all(w is not None for w in weights)
            else None
        )
        self.pointwise_weight = {}
        for c in self.problem.pointwise:
            w = self.formulation.weights(c)
            self.pointwise_weight[c.name] = None if w is None else w.to(self.dtype).to(self.device)
        self.pointwise_inequality = {
            c.name: torch.tensor(not c.is_equality, device=self.device)
            for c in self.problem.pointwise
        }

    def _columns(self) -> list[str]:
        groups = self.primal_optimizer.param_groups
        cols = ["step", "epoch"]
        cols += ["lr"] if len(groups) == 1 else [f"lr/{g}" for g in range(len(groups))]
        cols += ["objective", "lagrangian"]
        names = [n for c in self.problem.average for n in c.component_names()]
        cols += [f"value/{n}" for n in names]
        cols += [f"violation/{n}" for n in names]
        cols += [f"multiplier/{n}" for n in names]
        for c in self.problem.pointwise:
            cols += [
                f"violation/{c.name}/mean_abs",
                f"violation/{c.name}/max_abs",
                f"multiplier/{c.name}/mean",
                f"multiplier/{c.name}/norm",
                f"multiplier/{c.name}/batch_max_abs",
            ]
        return cols

    # ------------------------------------------------------------------ public API
    @property
    def multipliers(self) -> dict[str, Tensor]:
        """Current multipliers by constraint name (copies): average → ``[size]``,
        pointwise → ``[num_samples]`` (or ``[num_samples, size]``)."""
        out = {c.name: self.dense[c.name].detach().clone() for c in self.problem.average}
        for name, table in self.indexed.items():
            t = table.table.detach().clone()
            out[name] = t.squeeze(1) if table.width == 1 else t
        return out

    def set_multipliers(self, multipliers: Mapping[str, Tensor]) -> None:
        """Overwrite multipliers by name (shapes as in :attr:`multipliers`)."""
        for name, value in multipliers.items():
            if name in self.dense.slices:
                target = self.dense.value[self.dense.slices[name]]
                target.copy_(torch.as_tensor(value, dtype=self.dtype).reshape(target.shape))
            elif name in self.indexed:
                table = self.indexed[name]
                rows = torch.as_tensor(value, dtype=self.dtype).reshape(table.table.shape)
                table.load_state_dict({"table": rows.clamp_min(0) if table.nonnegative else rows})
            else:
                raise KeyError(f"no constraint {name!r}; declared: {sorted(self.problem.by_name)}")
        self.dense.project_()

    def lagrangian(self, batches: Iterable[Mapping[str, Any]], inference: bool = True) -> float:
        """The formulation's primal loss at the current model and multipliers, averaged over
        ``batches`` weighted by batch size (no training; autograd on if ``inference=False``)."""
        total, weight = 0.0, 0
        was_training = self.model.training
        self.model.eval()
        try:
            for batch in batches:
                with torch.set_grad_enabled(not inference):
                    ev = self.problem(self.model, _move(batch, self.device), exact=False)
                    loss, _ = self._primal_loss(ev)
                total += float(loss.detach()) * ev.batch_size
                weight += ev.batch_size
        finally:
            self.model.train(was_training)
        if weight == 0:
            raise ValueError("lagrangian: the batch iterable produced no batches")
        return total / weight

    def latest(self) -> dict[str, float]:
        """The most recent history row as a dict (synchronises with the device)."""
        if self._last_row is None:
            return {}
        return dict(zip(self.history.columns, self._last_row.tolist(), strict=True))

    def request_stop(self, reason: str = "callback") -> None:
        """Ask ``fit`` to stop after the current step (for callbacks)."""
        self._stop_reason = reason

    def fit(
        self,
        batches: Iterable[Mapping[str, Any]],
        *,
        epochs: int | None = None,
        max_steps: int | None = None,
        callbacks: Sequence[Callback | Callable[[PrimalDual], Any]] = (),
        stopping: StoppingRule | None = None,
        progress: bool = False,
        warn: bool = True,
    ) -> FitResult:
        """Train for ``epochs`` further passes over ``batches`` and/or ``max_steps`` further
        steps (whichever ends first). ``batches`` is any re-iterable of dict batches; an
        infinite one (e.g. a collocation sampler) needs ``max_steps``."""
        if epochs is None and max_steps is None:
            raise ValueError("fit needs epochs=N or max_steps=N (further epochs/steps to run)")
        for what, value in (("epochs", epochs), ("max_steps", max_steps)):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{what} must be a non-negative int, got {value!r}")
        if isinstance(batches, Mapping):
            raise TypeError(
                "fit(batches=...) takes an iterable of dict batches; wrap a single "
                "full batch in a list: fit([batch], ...)"
            )
        hooks = [cb if isinstance(cb, Callback) else _FunctionCallback(cb) for cb in callbacks]
        if progress:
            hooks.append(_ProgressBar(epochs, max_steps, self))
        step_limit = math.inf if max_steps is None else self.step + max_steps
        epoch_limit = math.inf if epochs is None else self.epoch + epochs
        start_step = self.step
        self._stop_reason = None
        reason = "max_steps" if max_steps is not None else "epochs"
        self.model.train()
        began = time.perf_counter()  # fit time includes the hooks' start-up work
        for hook in hooks:
            hook.on_fit_start(self)
        while True:
            if self.step >= step_limit:
                reason = "max_steps"
                break
            if self.epoch >= epoch_limit:
                reason = "epochs"
                break
            batch = self._next_batch(batches)
            if batch is None:
                if self.scheduler is not None and self.scheduler_interval == "epoch":
                    self.scheduler.step()
                for hook in hooks:
                    hook.on_epoch_end(self)
                continue
            self._train_step(batch)
            for hook in hooks:
                hook.on_step_end(self)
            if (
                stopping is not None
                and self.step - start_step >= max(stopping.min_steps, 1)
                and self.step % stopping.check_every == 0
                and self._should_stop(stopping)
            ):
                self._stop_reason = "converged"
            if self._stop_reason is not None:
                reason = self._stop_reason
                break
        seconds = time.perf_counter() - began
        diagnostics = diagnose(
            self.history,
            self.problem,
            start=start_step,
            updates_multipliers=self.formulation.updates_multipliers,
        )
        if warn:
            for d in diagnostics:
                warnings.warn(d.message, DiagnosticWarning, stacklevel=2)
        result = FitResult(
            self.multipliers, self.history, diagnostics, self.step, self.epoch, reason, seconds
        )
        for hook in hooks:
            hook.on_fit_end(self, result)
        return result

    # ------------------------------------------------------------------ data stream
    def _next_batch(self, batches: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
        if self._iterator is None or self._iterable is not batches:
            if self._iterable is not None and self._iterable is not batches:
                # Another iterable mid-epoch (e.g. fit([batch]) called again): continue the
                # epoch where it was, exactly as after load_state_dict.
                self._replay = self.batch_in_epoch > 0
            self._start_epoch(batches)
        try:
            batch = next(self._iterator)
        except StopIteration:
            empty = self.batch_in_epoch == 0
            self._iterator = None
            self.batch_in_epoch = 0
            if empty:
                raise ValueError(
                    "fit: the batch iterable produced no batches in an epoch; "
                    "pass a non-empty iterable of dict batches"
                ) from None
            self.epoch += 1
            return None
        self.batch_in_epoch += 1
        return batch

    def _start_epoch(self, batches: Iterable[Mapping[str, Any]]) -> None:
        self._iterable = batches
        pending, self._pending_batches_state = self._pending_batches_state, None
        if self._replay and pending is not None and hasattr(batches, "load_state_dict"):
            # The iterable saves its own position: it continues from there.
            self._replay = False
            batches.load_state_dict(pending)
            self._iterator = iter(batches)
            return
        if self._replay and self.batch_in_epoch > 0:
            # Resume mid-epoch: rebuild the epoch's stream from its starting RNG state and
            # skip the batches already used, then continue from the saved RNG state.
            self._replay = False
            current = _rng.capture()
            if self._epoch_rng is not None:
                _rng.restore(self._epoch_rng)
            self._iterator = iter(batches)
            for _ in range(self.batch_in_epoch):
                next(self._iterator)
            _rng.restore(current)
            return
        self._replay = False
        self.batch_in_epoch = 0
        # A list/tuple replays without randomness; other iterables may shuffle or augment.
        self._epoch_rng = None if isinstance(batches, (list, tuple)) else _rng.capture()
        self._iterator = iter(batches)

    # ------------------------------------------------------------------ one step
    def _primal_loss(self, ev: Evaluation) -> tuple[Tensor, dict[str, Tensor]]:
        """Objective plus the formulation's constraint terms (differentiable)."""
        parts: dict[str, Tensor] = {}
        loss = ev.objective if ev.objective is not None else None
        if ev.objective is not None:
            parts["objective"] = ev.objective
        if self.dense.size:
            flat = self.dense.flatten(ev.values)
            violation = flat - self.dense.target.to(flat.dtype)
            term = self.formulation.term(
                violation,
                self.dense.value.to(flat.dtype),
                self.dense.inequality,
                self.dense_weight,
            ).sum()
            loss = term if loss is None else loss + term
            parts.update({n: ev.values[n] for n in self.dense.slices})
        for name, table in self.indexed.items():
            index = ev.indices[name]
            value = ev.values[name]
            violation = value - table.target.to(value.dtype)
            mu = table.gather(index).to(value.dtype)
            term = self.formulation.term(
                violation, mu, self.pointwise_inequality[name], self.pointwise_weight[name]
            ).sum() / max(index.shape[0], 1)
            loss = term if loss is None else loss + term
            parts[name] = value
        if loss is None:
            raise ProblemError("the problem has no objective and no constraints: nothing to train")
        return loss, parts

    def _evaluate(self, batch: Mapping[str, Any], step: int, grad: bool = True) -> Evaluation:
        with torch.set_grad_enabled(grad):
            if self.autocast is None:
                return self.problem(self.model, batch, exact=False, step=step)
            with torch.autocast(self.device.type, dtype=self.autocast):
                return self.problem(self.model, batch, exact=False, step=step)

    def _train_step(self, batch: Mapping[str, Any]) -> None:
        step = self.step + 1
        batch = _move(batch, self.device)
        ev = self._evaluate(batch, step)
        for name, table in self.indexed.items():
            _check_indices(table, ev.indices[name], f"step {step}")
        if self.comm is None:
            loss, parts = self._primal_loss(ev)
            lagrangian = loss.detach()
            step_ev = _frozen(ev)  # values may alias parameters the primal step changes
        else:
            step_ev, loss, lagrangian = self._globalize(ev, step, with_loss=True)
            parts = {"objective": lagrangian, **step_ev.values}
        if not bool(torch.isfinite(lagrangian)):
            check_finite(parts, f"step {step}")
            check_finite({"multipliers": self.dense.value}, f"step {step}")
            raise ProblemError(
                f"step {step}: the Lagrangian is {lagrangian.item()}; lower the learning "
                "rates or check the constraint scales"
            )
        self.primal_optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        if self.comm is not None and not isinstance(
            self.model, nn.parallel.DistributedDataParallel
        ):
            self.comm.average_gradients(self.model.parameters())
        if self.scaler is not None:
            self.scaler.unscale_(self.primal_optimizer)
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.primal_optimizer)
            self.scaler.update()
        else:
            self.primal_optimizer.step()
        if self.scheduler is not None and self.scheduler_interval == "step":
            self.scheduler.step()
        self.step = step
        lrs = [g["lr"] for g in self.primal_optimizer.param_groups]
        if self.formulation.updates_multipliers and step % self.primal_steps == 0:
            if self.mode == "alternating":
                fresh = self._evaluate(batch, step, grad=False)
                step_ev = fresh if self.comm is None else self._globalize(fresh, step)[0]
                _check_evaluation_finite(step_ev, f"step {step}")
            self._dual_step(step_ev)
        self._record(step_ev, lagrangian, lrs)

    def _globalize(
        self, ev: Evaluation, step: int, with_loss: bool = False
    ) -> tuple[Evaluation, Tensor | None, Tensor]:
        """Make a rank's statistics global (one all_reduce + one all_gather) and, with
        ``with_loss``, build the rank's primal loss whose DDP-averaged gradient is the
        gradient of the global Lagrangian (see :mod:`eclearn.distributed`)."""
        comm = self.comm
        assert comm is not None
        world, rank = comm.world_size, comm.rank
        f64 = torch.float64
        size = float(ev.batch_size)
        has_objective = ev.objective is not None
        if "objective" in ev.ratios:
            obj_num, obj_den = ev.ratios["objective"].numerator, ev.ratios["objective"].denominator
        elif has_objective:
            obj_num, obj_den = ev.objective * size, torch.tensor(size, device=self.device)
        else:
            obj_num = obj_den = torch.zeros((), device=self.device)
        pieces = [
            obj_num.detach().to(f64).reshape(1),
            obj_den.detach().to(f64).reshape(1),
            torch.tensor([size], dtype=f64, device=self.device),
        ]
        nums, dens = [], []
        for c in self.problem.average:
            if c.name in ev.ratios:
                nums.append(ev.ratios[c.name].numerator)
                dens.append(ev.ratios[c.name].denominator.to(ev.ratios[c.name].numerator.dtype))
            else:
                nums.append(ev.values[c.name] * size)
                dens.append(torch.full_like(ev.values[c.name], size).detach())
        if nums:
            pieces += [torch.cat(nums).detach().to(f64), torch.cat(dens).detach().to(f64)]
        local_terms = {}
        for name, table in self.indexed.items():
            value = ev.values[name]
            violation = value - table.target.to(value.dtype)
            mu = table.gather(ev.indices[name]).to(value.dtype)
            local_terms[name] = self.formulation.term(
                violation, mu, self.pointwise_inequality[name], self.pointwise_weight[name]
            ).sum()
            counts = torch.zeros(world, dtype=f64, device=self.device)
            counts[rank] = float(ev.indices[name].numel())
            pieces += [counts, local_terms[name].detach().to(f64).reshape(1)]
        total = comm.all_reduce_sum(torch.cat(pieces))

        offset = 3
        global_size = float(total[2])
        objective = total[0] / total[1] if has_objective else None
        values: dict[str, Tensor] = {}
        loss: Tensor | None = None
        lagrangian = objective if objective is not None else total.new_zeros(())
        if has_objective and with_loss:
            # W (n_r − L d_r) / D: its rank average has the gradient of L = N / D
            loss = (
                world
                * (obj_num - objective.to(obj_num.dtype) * obj_den)
                / total[1].to(obj_num.dtype)
            )
        if nums:
            n = self.dense.size
            num_g, den_g = total[offset : offset + n], total[offset + n : offset + 2 * n]
            offset += 2 * n
            safe = torch.where(den_g == 0, torch.ones_like(den_g), den_g)
            value_g = torch.where(den_g == 0, torch.zeros_like(num_g), num_g / safe)
            for c in self.problem.average:
                values[c.name] = value_g[self.dense.slices[c.name]].to(self.dense.value.dtype)
            leaf = value_g.detach().to(self.dense.value.dtype).requires_grad_(True)
            with torch.enable_grad():
                term = self.formulation.term(
                    leaf - self.dense.target,
                    self.dense.value,
                    self.dense.inequality,
                    self.dense_weight,
                ).sum()
                (slope,) = torch.autograd.grad(term, leaf)
            lagrangian = lagrangian + term.detach().to(f64)
            if with_loss:
                local = torch.cat(nums)
                surrogate = (
                    world
                    * (local - value_g.to(local.dtype) * torch.cat(dens))
                    / safe.to(local.dtype)
                )
                piece = (slope.to(local.dtype) * surrogate).sum()
                loss = piece if loss is None else loss + piece
        lengths = [0] * world
        counts_by_name = {}
        for name, table in self.indexed.items():
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
        indices: dict[str, Tensor] = {}
        if self.indexed:
            payload = torch.cat(
                [
                    torch.cat(
                        [ev.indices[name].to(f64), ev.values[name].detach().reshape(-1).to(f64)]
                    )
                    for name in self.indexed
                ]
            )
            gathered = comm.all_gather_padded(payload, lengths)
            parts: dict[str, tuple[list[Tensor], list[Tensor]]] = {
                n: ([], []) for n in self.indexed
            }
            for r, chunk in enumerate(gathered):
                pos = 0
                for name, table in self.indexed.items():
                    k = counts_by_name[name][r]
                    parts[name][0].append(chunk[pos : pos + k].long())
                    pos += k
                    parts[name][1].append(
                        chunk[pos : pos + k * table.width].reshape(k, table.width)
                    )
                    pos += k * table.width
            for name in self.indexed:
                indices[name] = torch.cat(parts[name][0])
                values[name] = torch.cat(parts[name][1]).to(self.dtype)
                if torch.unique(indices[name]).numel() != indices[name].numel():
                    raise ProblemError(
                        f"step {step}: pointwise constraint {name!r} got the same sample id on "
                        "more than one rank in one step; shard the data so each id is seen by "
                        "one rank per step (e.g. DistributedSampler or ecl.distributed.ShardedBatches)"
                    )
        if with_loss and loss is None:
            raise ProblemError("the problem has no objective and no constraints: nothing to train")
        global_ev = Evaluation(objective, values, {}, indices, int(global_size))
        return global_ev, loss, lagrangian.reshape(())

    @torch.no_grad()
    def _dual_step(self, ev: Evaluation) -> None:
        opt, form = self.dual_optimizer, self.formulation
        if self.dense.size:
            flat = self.dense.flatten(ev.values).detach().to(self.dtype)
            violation = flat - self.dense.target
            grad = form.dual_gradient(violation, self.dense.value, self.dense.inequality)
            delta, self.dual_state[_DENSE] = opt.update(
                grad, self.dual_state[_DENSE], self.dense_lr
            )
            self.dense.value.add_(delta)
            self.dense.project_()
        for name, table in self.indexed.items():
            index = ev.indices[name]
            violation = ev.values[name].detach().to(self.dtype) - table.target
            mu = table.gather(index)
            grad = form.dual_gradient(violation, mu, self.pointwise_inequality[name])
            state = {k: v.index_select(0, index) for k, v in self.dual_state[name].items()}
            delta, state = opt.update(grad, state, self.pointwise_lr[name])
            table.write(index, mu + delta)
            for key, rows in state.items():
                self.dual_state[name][key].index_copy_(0, index, rows)
        self.dual_steps += 1

    @torch.no_grad()
    def _record(self, ev: Evaluation, lagrangian: Tensor, lrs: list[float]) -> None:
        """Append one history row (a single ``cat``; no device synchronisation)."""
        head = torch.tensor([self.step, self.epoch, *lrs], dtype=torch.float64)
        objective = ev.objective.detach() if ev.objective is not None else self._nan
        pieces = [
            head.to(self.device, non_blocking=True),
            torch.stack([objective.to(lagrangian.dtype), lagrangian]),
        ]
        if self.dense.size:
            flat = self.dense.flatten(ev.values).detach()
            pieces += [flat, flat - self.dense.target.to(flat.dtype), self.dense.value]
        for name, table in self.indexed.items():
            value = ev.values[name].detach()
            violation = (value - table.target.to(value.dtype)).abs()
            mu = table.gather(ev.indices[name]).abs().max().reshape(1)
            pieces += [violation.mean().reshape(1), violation.max().reshape(1), table.summary(), mu]
        row = torch.cat([p.to(torch.float64) for p in pieces])
        self._last_row = row
        self.history.record(row)

    # ------------------------------------------------------------------ stopping
    def _should_stop(self, rule: StoppingRule) -> bool:
        data = self.history.tail(2 * rule.window)
        if len(data) < 2 * rule.window:
            return False
        cols = self.history.columns
        recent = data[rule.window :]
        for c in self.problem.constraints:
            tol = c.tolerance if rule.tolerance is None else rule.tolerance
            if c.pointwise:
                keys = [f"violation/{c.name}/max_abs"]
            else:
                keys = [f"violation/{n}" for n in c.component_names()]
            for key in keys:
                mean = float(recent[:, cols.index(key)].mean())
                if (abs(mean) if c.is_equality or c.pointwise else mean) > tol:
                    return False
        lag = cols.index("lagrangian")
        now, before = float(recent[:, lag].mean()), float(data[: rule.window, lag].mean())
        return abs(now - before) <= rule.lagrangian_rtol * max(1.0, abs(now))

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: model, optimizers, scheduler, multipliers,
        dual state, counters, RNG states (current and at the epoch's start), history."""
        batches_state = None
        if self._iterable is not None and hasattr(self._iterable, "state_dict"):
            batches_state = self._iterable.state_dict()
        return {
            "format": _CHECKPOINT_FORMAT,
            "problem": self.problem.fingerprint(),
            "model": copy.deepcopy(_unwrap(self.model).state_dict()),
            "primal_optimizer": copy.deepcopy(self.primal_optimizer.state_dict()),
            "scheduler": None
            if self.scheduler is None
            else copy.deepcopy(self.scheduler.state_dict()),
            "grad_scaler": None if self.scaler is None else copy.deepcopy(self.scaler.state_dict()),
            "multipliers": {
                _DENSE: self.dense.state_dict(),
                **{name: t.state_dict() for name, t in self.indexed.items()},
            },
            "dual_optimizer": type(self.dual_optimizer).__name__,
            "dual_state": {
                k: {n: v.clone() for n, v in s.items()} for k, s in self.dual_state.items()
            },
            "counters": {
                "step": self.step,
                "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch,
                "dual_steps": self.dual_steps,
            },
            "rng": {
                "current": _rng.serialize(_rng.capture()),
                "epoch_start": _rng.serialize(self._epoch_rng),
            },
            "batches": batches_state,
            "history": self.history.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the next ``fit`` continues exactly where it was."""
        if state.get("format") != _CHECKPOINT_FORMAT:
            raise ValueError(
                f"unsupported checkpoint format {state.get('format')!r}; expected "
                f"{_CHECKPOINT_FORMAT}"
            )
        if state["problem"] != self.problem.fingerprint():
            raise ProblemError(
                "the checkpoint was saved for different constraints: "
                f"{state['problem']} vs {self.problem.fingerprint()}; build the same problem "
                "before loading"
            )
        saved_dual = state.get("dual_optimizer", type(self.dual_optimizer).__name__)
        if saved_dual != type(self.dual_optimizer).__name__:
            raise ValueError(
                f"the checkpoint was saved with dual optimizer {saved_dual} but this solver uses "
                f"{type(self.dual_optimizer).__name__}; build the solver with the same dual "
                "optimizer to resume"
            )
        _unwrap(self.model).load_state_dict(state["model"])
        self.primal_optimizer.load_state_dict(state["primal_optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("grad_scaler") is not None:
            self.scaler.load_state_dict(state["grad_scaler"])
        self.dense.load_state_dict(state["multipliers"][_DENSE])
        for name, table in self.indexed.items():
            table.load_state_dict(state["multipliers"][name])
        for key, saved in state["dual_state"].items():
            self.dual_state[key] = {
                n: v.to(device=self.device, dtype=self.dtype) for n, v in saved.items()
            }
        counters = state["counters"]
        self.step, self.epoch = counters["step"], counters["epoch"]
        self.batch_in_epoch, self.dual_steps = counters["batch_in_epoch"], counters["dual_steps"]
        self._epoch_rng = state["rng"]["epoch_start"]
        _rng.restore(state["rng"]["current"])
        self.history.load_state_dict(state["history"])
        self._iterator, self._iterable = None, None
        self._replay = True
        self._pending_batches_state = state.get("batches")

    def save(self, path: str) -> None:
        """Write :meth:`state_dict` atomically with ``torch.save`` (rank 0 only when
        distributed; the other ranks wait for it)."""
        if self.comm is None or self.comm.rank == 0:
            save_checkpoint(self.state_dict(), path)
        if self.comm is not None:
            self.comm.barrier()

    def load(self, path: str) -> None:
        """Load a checkpoint written by :meth:`save` (``weights_only=True``)."""
        self.load_state_dict(load_checkpoint(path, map_location=self.device))

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> PrimalDual:
        """Move the model, optimizer state, multipliers and dual state (dtype: multipliers)."""
        if device is not None:
            self.device = torch.device(device)
            self.model.to(self.device)
            for state in self.primal_optimizer.state.values():
                for key, value in state.items():
                    if isinstance(value, Tensor) and value.dim() > 0:
                        state[key] = value.to(self.device)
        if dtype is not None:
            self.dtype = dtype
        self.dense.to(self.device, self.dtype)
        for table in self.indexed.values():
            table.to(self.device, self.dtype)
        self.dual_state = {
            k: {n: v.to(self.device, self.dtype) for n, v in s.items()}
            for k, s in self.dual_state.items()
        }
        self._build_rates_and_weights()
        self._nan = self._nan.to(self.device)
        return self


def _frozen(ev: Evaluation) -> Evaluation:
    """A detached copy of an evaluation's numbers (cheap: statistics, not activations)."""
    return Evaluation(
        None if ev.objective is None else ev.objective.detach().clone(),
        {k: v.detach().clone() for k, v in ev.values.items()},
        {},
        ev.indices,
        ev.batch_size,
    )


def _check_evaluation_finite(ev: Evaluation, where: str) -> None:
    terms = dict(ev.values)
    if ev.objective is not None:
        terms["objective"] = ev.objective
    flat = torch.cat([t.detach().reshape(-1).double() for t in terms.values()])
    if not bool(torch.isfinite(flat).all()):
        check_finite(terms, where)


def _check_indices(table: IndexedMultipliers, index: Tensor, where: str) -> None:
    table.check_index(index, where)
    if index.numel() > 1 and torch.unique(index).numel() != index.numel():
        raise ProblemError(
            f"{where}: batch[{table.constraint.index_key!r}] repeats sample ids, so pointwise "
            f"constraint {table.constraint.name!r} would update one multiplier twice in a step; "
            "sample without replacement within a batch"
        )


class _ProgressBar(Callback):
    """Progress with tqdm when installed (steps, objective, max |violation|), else a line
    every 10% of the run."""

    def __init__(self, epochs: int | None, max_steps: int | None, solver: PrimalDual) -> None:
        self.total = max_steps
        self.bar: Any = None
        self.every = 1

    def on_fit_start(self, solver: PrimalDual) -> None:
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover - tqdm is optional
            tqdm = None
        if tqdm is not None:
            self.bar = tqdm(total=self.total, unit="step", dynamic_ncols=True)
        self.every = max(1, (self.total or 1000) // 100)

    def on_step_end(self, solver: PrimalDual) -> None:
        if self.bar is not None:
            self.bar.update(1)
        if solver.step % self.every:
            return
        text = self._status(solver)
        if self.bar is not None:
            self.bar.set_postfix(text, refresh=False)
        elif self.total and solver.step % max(1, self.total // 10) == 0:
            print(f"step {solver.step}: {text}", flush=True)

    @staticmethod
    def _status(solver: PrimalDual) -> dict[str, str]:
        last = solver.latest()
        violations = [
            abs(v)
            for k, v in last.items()
            if k.startswith("violation/") and not k.endswith("mean_abs")
        ]
        return {
            "obj": f"{last.get('objective', math.nan):.4g}",
            "max|viol|": f"{max(violations, default=0.0):.3g}",
        }

    def on_fit_end(self, solver: PrimalDual, result: FitResult) -> None:
        if self.bar is not None:
            # A short fit can end inside tqdm's refresh interval; draw the final state once.
            if solver.latest():
                self.bar.set_postfix(self._status(solver))
            self.bar.close()
