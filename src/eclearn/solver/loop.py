"""The primal-dual solver: dual ascent over a sequence of unconstrained empirical problems.

Each *step* (:meth:`PrimalDual.train_step`) takes one batch, calls the problem's
``evaluate`` once (one forward pass for the objective and every constraint), builds the
formulation's primal loss (the empirical Lagrangian by default, :mod:`.lagrangian`) and
takes one step of the user's ``torch.optim`` optimizer. After every ``primal_steps``-th
step the multipliers take one dual step along the measured violations of that step's
forward pass (``mode="simultaneous"``) or of a fresh evaluation after the primal update
(``mode="alternating"``, and always for closure optimizers such as L-BFGS, whose step
re-evaluates the Lagrangian at fixed multipliers):

    μ ← μ + η (ĥ − b)      (equality, free)
    λ ← [λ + η (ĝ − c)]₊   (inequality, projected)

:meth:`PrimalDual.fit` is a thin loop over ``train_step`` with epochs, callbacks, stopping
criteria, model selection and progress. ``fit`` can be called repeatedly;
``epochs``/``max_steps`` always count *further* epochs/steps. ``state_dict`` holds
everything needed to resume bit for bit on CPU (:mod:`.state`).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from eclearn._io import load_checkpoint, save_checkpoint
from eclearn.diagnostics import Diagnostic, DiagnosticWarning, diagnose
from eclearn.distributed import Communicator
from eclearn.dual import DualOptimizer, NuPI
from eclearn.formulations import Formulation, Lagrangian
from eclearn.history import Columns, History
from eclearn.multipliers import Multipliers
from eclearn.problem import Evaluation, Problem, ProblemError, check_finite
from eclearn.solver.callbacks import (
    Callback,
    ProgressBar,
    SolverView,
    as_callbacks,
    callback_key,
    stateful,
)
from eclearn.solver.lagrangian import (
    DENSE,
    Coefficients,
    DualState,
    dual_update,
    globalize,
    primal_loss,
)
from eclearn.solver.state import load_solver_state, solver_state
from eclearn.solver.stopping import Criterion
from eclearn.solver.stream import BatchStream, prepare_batch

__all__ = ["FitResult", "PrimalDual", "StepRecord", "default_dual_optimizer"]


def default_dual_optimizer() -> DualOptimizer:
    """The dual optimizer a solver uses when none is given: νPI with ``lr=0.1, kp=0.5,
    ki=1`` — plain projected ascent at 0.1 plus a proportional term that damps the
    oscillation of ascent. Chosen on the convergence suite (:mod:`eclearn.testing`,
    ``benchmarks/convergence_suite.py``, docs/results/convergence.md): it solves every
    case to 1e-4 in primal and multipliers within 10 000 steps except constraints whose
    entries differ in scale by ~100× (there ``ecl.dual.Adam(lr=3e-3)``, which normalises
    each entry, or rescaling the constraint works); the former default ``Adam(1e-3)``
    missed two cases and was 3–20× slower on the rest."""
    return NuPI(lr=0.1, kp=0.5, ki=1.0)


@dataclass
class StepRecord:
    """What one :meth:`PrimalDual.train_step` did: the step number, the evaluation the
    primal step used (detached numbers), the Lagrangian (a 0-dim tensor; reading it
    synchronises with the device) and whether the multipliers moved."""

    step: int
    evaluation: Evaluation
    lagrangian: Tensor
    dual_step: bool


@dataclass
class FitResult:
    """What ``fit`` returns: final multipliers, the full history, diagnostics, counters,
    and the selected model when a selector was given (``select=``)."""

    multipliers: dict[str, Tensor]
    history: History
    diagnostics: list[Diagnostic]
    steps: int
    epochs: int
    stop_reason: str
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)
    selected: Any = None

    @property
    def stopped_early(self) -> bool:
        """Whether a stopping criterion or a callback ended the fit before its budget."""
        return self.stop_reason not in ("max_steps", "epochs")

    def summary(self) -> str:
        """A few lines: counters, final objective and violations, selection, diagnostics."""
        lines = [
            f"{self.steps} steps, {self.epochs} epochs, {self.seconds:.1f}s, stop: "
            f"{self.stop_reason}"
        ]
        last = self.history.last()
        for key in ("objective", "lagrangian"):
            if key in last and not math.isnan(last[key]):
                lines.append(f"  {key}: {last[key]:.6g}")
        for comp in self.history.schema.components:
            column = comp.excess_max if comp.pointwise else comp.violation
            if column is not None and column in last:
                lines.append(f"  {column}: {last[column]:.3g}")
        if self.selected is not None:
            lines.append(f"  selected: {getattr(self.selected, 'description', self.selected)}")
        lines += [f"  ! {d.message}" for d in self.diagnostics]
        return "\n".join(lines)


@dataclass
class _Pending:
    """A step between its forward pass and its dual update."""

    step: int
    batch: Any
    loss: Tensor
    lagrangian: Tensor
    evaluation: Evaluation
    coefficients: Coefficients


def _requires_closure(optimizer: torch.optim.Optimizer) -> bool:
    return isinstance(optimizer, torch.optim.LBFGS) or bool(
        getattr(optimizer, "requires_closure", False)
    )


class PrimalDual:
    """Primal-dual training of ``model`` on ``problem``.

    Args:
        problem: the :class:`~eclearn.Problem`.
        model: any ``nn.Module`` (passed to ``evaluate``; may be DDP-wrapped or compiled).
        primal_optimizer: any ``torch.optim.Optimizer`` over the model's parameters;
            closure optimizers (``torch.optim.LBFGS``) are stepped with a closure that
            re-evaluates the Lagrangian at fixed multipliers.
        dual_optimizer: :mod:`eclearn.dual` optimizer; default
            :func:`default_dual_optimizer`.
        formulation: :class:`~eclearn.Lagrangian` (default), ``Penalty``, ``AugmentedLagrangian``.
        primal_steps: K primal steps per dual step.
        mode: ``"simultaneous"`` or ``"alternating"`` (re-evaluates after the primal step).
        scheduler: optional LR scheduler of the primal optimizer, stepped every step or
            every epoch (``scheduler_interval``).
        device: where the model, multipliers and batches live (default: the model's).
        dtype: dtype of the multipliers (default float64: float32 updates round away near
            the optimum; the moments of Adam-like dual optimizers are kept in float32).
        grad_clip: optional max norm for the primal gradients.
        process_group: the ``torch.distributed`` group to reduce over (default: the
            global group when one is initialised with more than one process).
        autocast: run ``evaluate`` under ``torch.autocast`` with this dtype
            (``torch.bfloat16``/``torch.float16``; fp16 adds a gradient scaler).
        callbacks: callbacks run in every ``fit`` and every ``train_step``.
        batch_keys: names for the items of tuple/list batches (``DataLoader(TensorDataset)``).
        check_indices: check every pointwise batch's ids (range, no repeats); costs two
            host synchronisations per pointwise constraint and step.
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
        dtype: torch.dtype = torch.float64,
        grad_clip: float | None = None,
        process_group: Any = None,
        autocast: torch.dtype | None = None,
        callbacks: Sequence[Callback | Callable[[SolverView], Any]] = (),
        batch_keys: Sequence[str] | None = None,
        check_indices: bool = True,
    ) -> None:
        if not isinstance(problem, Problem):
            raise TypeError(f"PrimalDual needs an ecl.Problem, got {type(problem).__name__}")
        if not isinstance(model, nn.Module):
            raise TypeError(f"PrimalDual needs a torch nn.Module, got {type(model).__name__}")
        if not isinstance(primal_optimizer, torch.optim.Optimizer):
            raise TypeError("primal_optimizer must be a torch.optim.Optimizer instance")
        if mode not in ("simultaneous", "alternating"):
            raise ValueError(f"mode must be 'simultaneous' or 'alternating', got {mode!r}")
        if isinstance(primal_steps, bool) or not isinstance(primal_steps, int) or primal_steps < 1:
            raise ValueError(f"primal_steps must be an int ≥ 1, got {primal_steps!r}")
        if scheduler_interval not in ("step", "epoch"):
            raise ValueError(
                f"scheduler_interval must be 'step' or 'epoch', got {scheduler_interval!r}"
            )
        for group in primal_optimizer.param_groups:
            lr = group.get("lr", 0.0)
            if isinstance(lr, (int, float)) and not (math.isfinite(lr) and lr >= 0):
                raise ValueError(f"primal learning rate must be a finite number ≥ 0, got {lr}")
        if grad_clip is not None and not (math.isfinite(grad_clip) and grad_clip > 0):
            raise ValueError(f"grad_clip must be a finite positive number, got {grad_clip}")
        if dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            raise ValueError(f"dtype must be a floating-point torch dtype, got {dtype!r}")
        self.problem = problem
        self.model = model
        self.primal_optimizer = primal_optimizer
        self.dual_optimizer = (
            dual_optimizer if dual_optimizer is not None else default_dual_optimizer()
        )
        if not isinstance(self.dual_optimizer, DualOptimizer):
            raise TypeError(
                "dual_optimizer must be an eclearn.dual optimizer (ecl.dual.SGD, "
                f"ecl.dual.Adam, ecl.dual.NuPI), got {type(dual_optimizer).__name__}"
            )
        self._check_dual_names()
        self.formulation = formulation if formulation is not None else Lagrangian()
        if not isinstance(self.formulation, Formulation):
            raise TypeError(
                "formulation must be ecl.Lagrangian(), ecl.Penalty(...) or "
                f"ecl.AugmentedLagrangian(...), got {type(formulation).__name__}"
            )
        self.formulation.bind(problem.constraints)
        self.primal_steps = primal_steps
        self.mode = mode
        self.scheduler = scheduler
        self.scheduler_interval = scheduler_interval
        self.grad_clip = grad_clip
        self.device = self._resolve_device(device, model)
        self.model.to(self.device)
        self.dtype = dtype
        if autocast not in (None, torch.bfloat16, torch.float16):
            raise ValueError(
                f"autocast must be None, torch.bfloat16 or torch.float16, got {autocast}"
            )
        if autocast == torch.float16 and _requires_closure(primal_optimizer):
            raise ValueError("autocast=torch.float16 (gradient scaling) cannot step L-BFGS")
        self.autocast = autocast
        self.scaler = torch.amp.GradScaler(self.device.type) if autocast == torch.float16 else None
        self.comm = Communicator.detect(process_group)
        if self.comm is not None:
            self.comm.check_same(problem.fingerprint(), "the declared constraints")
        self.batch_keys = None if batch_keys is None else tuple(batch_keys)
        self.check_indices = bool(check_indices)

        self.multiplier_tables = Multipliers(problem, dtype=dtype, device=self.device)
        self.dual_state: DualState = {
            DENSE: self.dual_optimizer.init_state(self.multiplier_tables.dense.value)
        }
        for name, table in self.multiplier_tables.tables.items():
            self.dual_state[name] = self.dual_optimizer.init_state(table.table)
        self._coefficients: Coefficients | None = None
        self.history = History(self._schema(proxies=False))
        self._proxy_columns = False

        self.step = 0
        self.dual_steps = 0
        self.stream = BatchStream()
        self.last_step: StepRecord | None = None
        self.callbacks = as_callbacks(callbacks)
        self._active: list[Callback] = list(self.callbacks)
        self._pending_states: dict[str, Any] = {}
        self._retained: dict[str, Any] = {}
        self._stop_reason: str | None = None
        self._last_row: tuple[tuple[float, ...], list[Tensor]] | None = None
        self._nan = torch.tensor(math.nan, device=self.device)
        self._finite: Tensor | None = None
        self._pending: _Pending | None = None

    @property
    def closure(self) -> bool:
        """Whether the current primal optimizer is stepped with a closure (L-BFGS; for
        :class:`~eclearn.Phases`, the current phase's)."""
        return _requires_closure(self.primal_optimizer)

    # ------------------------------------------------------------------ set-up helpers
    @staticmethod
    def _resolve_device(device: torch.device | str | None, model: nn.Module) -> torch.device:
        if device is None:
            first = next(iter(model.parameters()), None)
            return first.device if first is not None else torch.device("cpu")
        resolved = torch.device(device)
        if resolved.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"device={str(device)!r} was asked for but this machine has no CUDA GPU "
                "(torch.cuda.is_available() is False); use device='cpu'"
            )
        if resolved.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"device={str(device)!r} was asked for but MPS is not available")
        return resolved

    def _check_dual_names(self) -> None:
        unknown = sorted(set(self.dual_optimizer.lrs) - set(self.problem.by_name) - {"default"})
        if unknown:
            raise ProblemError(
                f"the dual learning-rate mapping names {unknown}, which the problem does not "
                f"declare; declared: {sorted(self.problem.by_name)} (and 'default')"
            )

    def _schema(self, proxies: bool) -> Columns:
        return Columns.for_problem(
            self.problem, len(self.primal_optimizer.param_groups), proxies=proxies
        )

    def use_schema(self, columns: Columns) -> None:
        """Replace the (empty) history with one of these columns (proxies found, resume)."""
        if len(self.history):
            raise ProblemError(
                "evaluate started returning ecl.Proxy values after the history began; return "
                "the same kind of value (Proxy or not) for a constraint at every step"
            )
        self.history = History(columns)
        self._proxy_columns = "surrogate/objective" in columns.index

    @property
    def coefficients(self) -> Coefficients:
        """Per-entry dual learning rates and weights (rebuilt when the dual lr changes)."""
        opt = self.dual_optimizer
        current = self._coefficients
        if current is None or current.version != (id(opt), opt.version):
            self._check_dual_names()
            current = self._coefficients = Coefficients.build(
                self.problem, opt, self.formulation, self.dtype, self.device
            )
        return current

    # ------------------------------------------------------------------ public API
    @property
    def epoch(self) -> int:
        """Completed passes over the batches."""
        return self.stream.epoch

    @property
    def batch_in_epoch(self) -> int:
        """Batches served in the current pass."""
        return self.stream.batch_in_epoch

    @property
    def dense(self) -> Any:
        """The flat multiplier vector of the average constraints."""
        return self.multiplier_tables.dense

    @property
    def indexed(self) -> dict[str, Any]:
        """The per-sample multiplier tables of the pointwise constraints."""
        return self.multiplier_tables.tables

    @property
    def multipliers(self) -> dict[str, Tensor]:
        """Current multipliers by constraint name (copies): average → ``[size]``,
        pointwise → ``[num_samples]`` (or ``[num_samples, size]``)."""
        return self.multiplier_tables.as_dict()

    def set_multipliers(self, multipliers: Mapping[str, Tensor]) -> None:
        """Overwrite multipliers by name (shapes as in :attr:`multipliers`)."""
        self.multiplier_tables.set(multipliers)

    def lagrangian(self, batches: Iterable[Any], inference: bool = True) -> float:
        """The formulation's primal loss at the current model and multipliers, averaged over
        ``batches`` weighted by batch size (no training; autograd on if ``inference=False``)."""
        total, weight = 0.0, 0
        was_training = self.model.training
        self.model.eval()
        try:
            for raw in batches:
                batch = prepare_batch(raw, self.device, self.batch_keys, "lagrangian")
                with torch.set_grad_enabled(not inference):
                    ev = self.problem(self.model, batch, exact=False)
                    loss = primal_loss(
                        ev, self.multiplier_tables, self.formulation, self.coefficients
                    )
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
        head, pieces = self._last_row
        values = [float(v) for v in head] + torch.cat(
            [p.detach().double().reshape(-1) for p in pieces]
        ).tolist()  # (only when asked: one synchronisation)
        return dict(zip(self.history.columns, values, strict=True))

    def request_stop(self, reason: str = "callback") -> None:
        """Ask ``fit`` to stop after the current step (for callbacks)."""
        self._stop_reason = reason

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        batches: Iterable[Any],
        *,
        epochs: int | None = None,
        max_steps: int | None = None,
        callbacks: Sequence[Callback | Callable[[SolverView], Any]] = (),
        stopping: Criterion | Sequence[Criterion] | None = None,
        select: Callback | None = None,
        progress: bool = False,
        warn: bool = True,
        keys: Sequence[str] | None = None,
    ) -> FitResult:
        """Train for ``epochs`` further passes over ``batches`` and/or ``max_steps`` further
        steps (whichever ends first). ``batches`` is any re-iterable of batches (dicts, or
        tuples/lists named by ``keys``); an infinite one (e.g. a collocation sampler) needs
        ``max_steps``. ``stopping``: criteria (:class:`~eclearn.StoppingRule`,
        :class:`~eclearn.Patience`); ``select``: a model selector (``ecl.select.*``), whose
        choice is ``FitResult.selected``."""
        if epochs is None and max_steps is None:
            raise ValueError("fit needs epochs=N or max_steps=N (further epochs/steps to run)")
        for what, value in (("epochs", epochs), ("max_steps", max_steps)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0
            ):
                raise ValueError(f"{what} must be a non-negative int, got {value!r}")
        if isinstance(batches, (Mapping, Tensor)):
            raise TypeError(
                "fit(batches=...) takes an iterable of batches; wrap a single full batch in a "
                "list: fit([batch], ...)"
            )
        criteria: list[Criterion] = (
            []
            if stopping is None
            else list(stopping)
            if isinstance(stopping, Sequence)
            else [stopping]
        )
        for criterion in criteria:
            if not callable(getattr(criterion, "check", None)):
                raise TypeError(
                    "stopping must be ecl.StoppingRule / ecl.Patience (objects with "
                    f"check(solver, steps)), got {type(criterion).__name__}"
                )
        # the selector runs before the fit's own callbacks, so a checkpointing callback saves
        # its state after this step's judgement
        hooks = [*self.callbacks, *([select] if select is not None else [])]
        hooks += as_callbacks(callbacks)
        if progress:
            hooks.append(ProgressBar(max_steps))
        saved_keys = self.batch_keys
        if keys is not None:
            self.batch_keys = tuple(keys)
        step_limit = math.inf if max_steps is None else self.step + max_steps
        epoch_limit = math.inf if epochs is None else self.epoch + epochs
        start_step = self.step
        self._stop_reason = None
        reason = "max_steps" if max_steps is not None else "epochs"
        self._active = hooks
        self._retained = {}
        self._claim_states(hooks)
        self.model.train()
        began = time.perf_counter()  # fit time includes the hooks' start-up work
        try:
            for hook in hooks:
                hook.on_fit_start(self)
            while True:
                if self.step >= step_limit:
                    reason = "max_steps"
                    break
                if self.epoch >= epoch_limit:
                    reason = "epochs"
                    break
                batch = self.stream.next(batches)
                if batch is None:
                    self._end_epoch(hooks)
                    continue
                self.train_step(batch)
                if self.stream.end_if_complete(batches):  # the pass's last batch: count it now
                    self._end_epoch(hooks)
                steps = self.step - start_step
                for criterion in criteria:
                    fired = criterion.check(self, steps)
                    if fired is not None and self._stop_reason is None:
                        self._stop_reason = fired
                if self._stop_reason is not None:
                    reason = self._stop_reason
                    break
            seconds = time.perf_counter() - began
            diagnostics = self.diagnose(start=start_step)
            if warn:
                for d in diagnostics:
                    warnings.warn(d.message, DiagnosticWarning, stacklevel=2)
            result = FitResult(
                self.multipliers, self.history, diagnostics, self.step, self.epoch, reason, seconds
            )
            for hook in hooks:
                hook.on_fit_end(self, result)
        finally:
            # a checkpoint written after the fit still holds its callbacks' final state
            self._retained = {k: h.state_dict() for k, h in self._stateful(hooks).items()}  # type: ignore[attr-defined]
            self._active = list(self.callbacks)
            self.batch_keys = saved_keys
        return result

    def diagnose(self, start: int = 0) -> list[Diagnostic]:
        """:func:`eclearn.diagnose` of the history from step ``start`` on, with what this
        solver knows: whether its formulation moves multipliers, and which constraints have
        a dual learning rate of 0 (fixed weights)."""
        return diagnose(
            self.history,
            self.problem,
            start=start,
            updates_multipliers=self.formulation.updates_multipliers,
            fixed=self._fixed_multipliers(),
        )

    def _fixed_multipliers(self) -> set[str]:
        """Constraints whose dual learning rate is 0: their multipliers are fixed weights."""
        opt = self.dual_optimizer
        return {c.name for c in self.problem.constraints if opt.lr_for(c.name, c.lr) == 0}

    def _end_epoch(self, hooks: Sequence[Callback]) -> None:
        if self.scheduler is not None and self.scheduler_interval == "epoch":
            self.scheduler.step()
        for hook in hooks:
            hook.on_epoch_end(self)

    # ------------------------------------------------------------------ one step
    def train_step(self, batch: Any) -> StepRecord:
        """One primal step on ``batch`` (and, every ``primal_steps``-th step, one dual step);
        records one history row and runs the callbacks' ``on_evaluation``/``on_step_end``.
        This is the whole of a training step: a user's own loop may call it per batch."""
        pending = self._begin(batch)
        self._primal_update(pending.loss, pending.batch, pending.step)
        if self.scheduler is not None and self.scheduler_interval == "step":
            self.scheduler.step()
        return self._finish(pending)

    def lagrangian_step(self, batch: Any) -> Tensor:
        """First half of a step for loops that own the backward pass and the optimizer
        (Lightning, ``transformers.Trainer``, a hand-written loop): evaluate ``batch`` and
        return the primal loss to backpropagate — the empirical Lagrangian (formulation's
        loss) at the current multipliers. Then call ``loss.backward()``, step the optimizer
        and call :meth:`dual_step`; history, diagnostics and checkpoints are as with
        :meth:`train_step`. (Distributed: wrap the model in DDP so the backward pass averages
        the gradients.)"""
        if self._pending is not None:
            raise RuntimeError(
                f"lagrangian_step was called twice without dual_step (step {self._pending.step}"
                "); call solver.dual_step() after the optimizer step"
            )
        self._pending = self._begin(batch)
        return self._pending.loss

    def dual_step(self) -> StepRecord:
        """Second half of a step begun with :meth:`lagrangian_step`, after the user's
        optimizer step: the dual update (every ``primal_steps``-th step), the history row
        and the callbacks' ``on_step_end``."""
        if self._pending is None:
            raise RuntimeError("dual_step needs a step begun with solver.lagrangian_step(batch)")
        pending, self._pending = self._pending, None
        return self._finish(pending)

    def _begin(self, batch: Any) -> _Pending:
        step = self.step + 1
        where = f"step {step}"
        # ρ follows the dual steps (outer iterations); fixed penalties take none: the steps
        form = self.formulation
        form.at_step(self.dual_steps if form.updates_multipliers else self.step)
        coeffs = self.coefficients
        batch = prepare_batch(batch, self.device, self.batch_keys, where)
        ev = self._forward(batch, step)
        self._check_step(ev, step)
        if self.comm is None:
            loss = primal_loss(ev, self.multiplier_tables, self.formulation, coeffs)
            lagrangian = loss.detach()
            step_ev = ev.frozen()
        else:
            step_ev, global_loss, lagrangian = globalize(
                ev,
                self.problem,
                self.multiplier_tables,
                self.formulation,
                coeffs,
                self.comm,
                step,
                with_loss=True,
            )
            assert global_loss is not None
            loss = global_loss
        self._check_finite(ev, lagrangian, where)
        for hook in self._active:
            hook.on_evaluation(self, step_ev)
        return _Pending(step, batch, loss, lagrangian, step_ev, coeffs)

    def _finish(self, pending: _Pending) -> StepRecord:
        step = self.step = pending.step
        lrs = [g["lr"] for g in self.primal_optimizer.param_groups]
        record_ev = pending.evaluation
        moved = self.formulation.updates_multipliers and step % self.primal_steps == 0
        factor = self.dual_optimizer.factor(self.dual_steps)
        if moved and (self.mode == "alternating" or self.closure):
            record_ev = self._measure(pending.batch, step)
        dense = self.multiplier_tables.dense
        flat = violation = None
        if dense.size:  # one measurement for the dual step and the history row
            flat = dense.measured(record_ev)
            violation = dense.violation(flat.to(dense.value.dtype))
        if moved:
            dual_update(
                record_ev,
                self.multiplier_tables,
                self.dual_optimizer,
                self.dual_state,
                pending.coefficients,
                self.formulation,
                factor,
                violation,
            )
            self.dual_steps += 1
        self._record(record_ev, pending.lagrangian, lrs, factor, flat, violation)
        self.last_step = StepRecord(step, pending.evaluation, pending.lagrangian, moved)
        for hook in self._active:
            hook.on_step_end(self)
        return self.last_step

    def _forward(self, batch: Any, step: int, grad: bool = True) -> Evaluation:
        if grad != torch.is_grad_enabled():
            with torch.set_grad_enabled(grad):
                return self._forward(batch, step, grad)
        if self.autocast is None:
            return self.problem(self.model, batch, exact=False, step=step)
        with torch.autocast(self.device.type, dtype=self.autocast):
            return self.problem(self.model, batch, exact=False, step=step)

    def _check_step(self, ev: Evaluation, step: int) -> None:
        where = f"step {step}"
        if self.check_indices:
            for name, table in self.multiplier_tables.tables.items():
                index = ev.indices[name]
                table.check_index(index, where)
                if index.numel() > 1 and torch.unique(index).numel() != index.numel():
                    raise ProblemError(
                        f"{where}: batch[{table.constraint.index_key!r}] repeats sample ids, so "
                        f"pointwise constraint {name!r} would update one multiplier twice in a "
                        "step; sample without replacement within a batch"
                    )
        if ev.has_proxies != self._proxy_columns:
            self.use_schema(self._schema(proxies=ev.has_proxies))
        if not torch.is_grad_enabled():
            return
        detached = [name for name, value in ev.values.items() if not value.requires_grad]
        if detached:
            raise ProblemError(
                f"{where}: constraint(s) {detached} returned values with no gradient path to the "
                "model's parameters (requires_grad=False), so training would ignore them while "
                "their multipliers grow. Compute them from the model's output without "
                ".detach()/.item()/NumPy, or pair a non-differentiable statistic with a "
                "differentiable surrogate: ecl.Proxy(surrogate=..., exact=...)"
            )
        if ev.objective is not None and not ev.objective.requires_grad and not ev.values:
            raise ProblemError(
                f"{where}: the objective has no gradient path to the model's parameters "
                "(requires_grad=False): there is nothing to train"
            )

    def _check_finite(self, ev: Evaluation, lagrangian: Tensor, where: str) -> None:
        """Stop before the primal step on a NaN/Inf Lagrangian, naming the term. On the CPU
        every step (reading a number costs nothing there); on an accelerator the check would
        synchronise, so a device flag accumulates it and is read every 256 steps."""
        if self.device.type == "cpu":
            if not math.isfinite(float(lagrangian)):
                self._raise_not_finite(ev, lagrangian, where)
            return
        finite = torch.isfinite(lagrangian)
        self._finite = finite if self._finite is None else self._finite & finite
        if self.step % 256 == 255 and not bool(self._finite):
            self._raise_not_finite(ev, lagrangian, f"{where} (or up to 255 steps before)")

    def _unbounded_hint(self) -> str:
        """What to add to a NaN/Inf error under the plain Lagrangian, which is unbounded
        below along a constrained quantity the objective does not depend on."""
        if type(self.formulation) is not Lagrangian or not self.problem.constraints:
            return ""
        return (
            "; if the objective does not depend on a constrained quantity (e.g. boundary "
            "values under a PDE-residual objective) the Lagrangian is unbounded below along "
            "it and a line search (L-BFGS) runs off along it: use "
            "formulation=ecl.AugmentedLagrangian(rho=1)"
        )

    def _check_terms(self, terms: Mapping[str, Tensor], where: str) -> None:
        try:
            check_finite(terms, where)
        except ProblemError as error:
            hint = self._unbounded_hint()
            if not hint:
                raise
            raise ProblemError(str(error).rstrip(".") + hint) from None

    def _raise_not_finite(self, ev: Evaluation, lagrangian: Tensor, where: str) -> None:
        terms = dict(ev.values)
        if ev.objective is not None:
            terms = {"objective": ev.objective, **terms}
        self._check_terms(terms, where)
        self._check_terms({"multipliers": self.multiplier_tables.dense.value}, where)
        raise ProblemError(
            f"{where}: the Lagrangian is {float(lagrangian)}; lower the learning rates or check "
            f"the constraint scales{self._unbounded_hint()}"
        )

    def _loss_of(self, batch: Any, step: int) -> Tensor:
        """Re-evaluate the primal loss at fixed multipliers (closure optimizers)."""
        ev = self._forward(batch, step)
        if self.comm is None:
            return primal_loss(ev, self.multiplier_tables, self.formulation, self.coefficients)
        _, loss, _ = globalize(
            ev,
            self.problem,
            self.multiplier_tables,
            self.formulation,
            self.coefficients,
            self.comm,
            step,
            with_loss=True,
        )
        assert loss is not None
        return loss

    def _backward(self, loss: Tensor) -> None:
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

    def _primal_update(self, loss: Tensor, batch: Any, step: int) -> None:
        optimizer = self.primal_optimizer
        optimizer.zero_grad(set_to_none=True)
        if self.closure:
            first = [loss]

            def closure() -> Tensor:
                optimizer.zero_grad(set_to_none=True)
                current = first.pop() if first else self._loss_of(batch, step)
                self._backward(current)
                return current.detach()

            optimizer.step(closure)  # type: ignore[arg-type]  # LBFGS accepts a Tensor loss
            return
        self._backward(loss)
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def _measure(self, batch: Any, step: int) -> Evaluation:
        """A fresh evaluation after the primal update for the dual step.

        Autograd stays on but the trained parameters are frozen for the pass
        (``requires_grad=False``): an ordinary problem then builds no graph at all (as
        under ``torch.no_grad()``), while statistics built from derivatives with respect
        to the *input* (PDE residuals: ``coords.requires_grad_()`` and
        :func:`eclearn.pde.partial`) are still computed correctly."""
        with self._frozen_parameters():
            fresh = self._forward(batch, step, grad=True).frozen()
        if self.comm is not None:
            fresh = globalize(
                fresh,
                self.problem,
                self.multiplier_tables,
                self.formulation,
                self.coefficients,
                self.comm,
                step,
            )[0]
        terms = {name: fresh.measured(name) for name in fresh.values}
        if fresh.measured_objective is not None:
            terms["objective"] = fresh.measured_objective
        flat = torch.cat([t.reshape(-1).double() for t in terms.values()]) if terms else None
        if flat is not None and not bool(torch.isfinite(flat).all()):
            self._check_terms(terms, f"step {step}")
        return fresh

    @contextmanager
    def _frozen_parameters(self) -> Iterator[None]:
        """Set ``requires_grad=False`` on every trained parameter (the model's and the
        primal optimizer's) for the duration, restoring each flag afterwards."""
        seen: dict[int, Tensor] = {id(p): p for p in self.model.parameters()}
        for group in self.primal_optimizer.param_groups:
            seen.update((id(t), t) for t in group["params"])
        frozen = [p for p in seen.values() if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        # DDP prepares a gradient reduction after a forward pass under grad mode: there is no
        # backward pass here, so skip it
        ddp = isinstance(self.model, nn.parallel.DistributedDataParallel)
        try:
            with self.model.no_sync() if ddp else nullcontext():  # type: ignore[operator]
                yield
        finally:
            for p in frozen:
                p.requires_grad_(True)

    @torch.no_grad()
    def _record(
        self,
        ev: Evaluation,
        lagrangian: Tensor,
        lrs: list[float],
        factor: float,
        flat: Tensor | None,
        violation: Tensor | None,
    ) -> None:
        """Append one history row: the counters as plain numbers, the statistics as one
        ``cat`` on the device (no synchronisation)."""
        mults = self.multiplier_tables
        objective = ev.measured_objective
        pieces = [self._nan if objective is None else objective, lagrangian]
        dense = mults.dense
        if flat is not None and violation is not None:
            pieces += [flat, violation, dense.value]
        for name, table in mults.tables.items():
            excess = table.excess(ev.measured(name))
            mu = table.gather(ev.indices[name]).abs().max()
            pieces += [excess.mean(), excess.max(), table.summary(), mu]
        if self._proxy_columns:
            surrogate = self._nan if ev.objective is None else ev.objective.detach()
            pieces.append(surrogate)
            if dense.size:
                pieces.append(dense.flatten(ev.values).detach())
        head = (self.step, self.epoch, *lrs, factor)
        self._last_row = (head, pieces)
        self.history.record(pieces, head)

    # ------------------------------------------------------------------ callbacks' state
    def _stateful(self, hooks: Sequence[Callback]) -> dict[str, Callback]:
        keyed: dict[str, Callback] = {}
        for hook in hooks:
            if stateful(hook):
                keyed[callback_key(hook, keyed)] = hook
        return keyed

    def _claim_states(self, hooks: Sequence[Callback]) -> None:
        for key, hook in self._stateful(hooks).items():
            if key in self._pending_states:
                hook.load_state_dict(self._pending_states.pop(key))  # type: ignore[attr-defined]

    def callback_states(self) -> dict[str, Any]:
        """The state of every stateful callback now active, of those of the last fit, and of
        saved ones not yet claimed."""
        states = {**self._pending_states, **self._retained}
        for key, hook in self._stateful(self._active).items():
            states[key] = hook.state_dict()  # type: ignore[attr-defined]
        return states

    def restore_callback_states(self, states: Mapping[str, Any]) -> None:
        """Hand saved callback states to the active callbacks now, the rest when they start."""
        self._pending_states = dict(states)
        self._retained = {}
        self._claim_states(self._active)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly (see :mod:`eclearn.solver.state`)."""
        return solver_state(self)

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> None:
        """Restore a :meth:`state_dict`; the next step continues exactly where it was.
        ``strict=False`` accepts a checkpoint saved with other hyper-parameters."""
        load_solver_state(self, state, strict=strict)
        self._last_row = None

    def save(self, path: str) -> None:
        """Write :meth:`state_dict` atomically with ``torch.save`` (rank 0 only when
        distributed; the other ranks wait for it)."""
        if self.comm is None or self.comm.rank == 0:
            save_checkpoint(self.state_dict(), path)
        if self.comm is not None:
            self.comm.barrier()

    def load(self, path: str, strict: bool = True) -> None:
        """Load a checkpoint written by :meth:`save` (``weights_only=True``)."""
        self.load_state_dict(load_checkpoint(path, map_location=self.device), strict=strict)

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> PrimalDual:
        """Move the model, optimizer state, multipliers and dual state (dtype: multipliers)."""
        if device is not None:
            self.device = self._resolve_device(device, self.model)
            self.model.to(self.device)
            for state in self.primal_optimizer.state.values():
                for key, value in state.items():
                    if isinstance(value, Tensor) and value.dim() > 0:
                        state[key] = value.to(self.device)
        if dtype is not None:
            self.dtype = dtype
        self.multiplier_tables.to(self.device, self.dtype)
        fresh = {DENSE: self.dual_optimizer.init_state(self.multiplier_tables.dense.value)}
        for name, table in self.multiplier_tables.tables.items():
            fresh[name] = self.dual_optimizer.init_state(table.table)
        self.dual_state = {
            key: {n: v.to(device=self.device, dtype=fresh[key][n].dtype) for n, v in s.items()}
            for key, s in self.dual_state.items()
        }
        self._coefficients = None
        self._nan = self._nan.to(self.device)
        return self
