"""PyTorch Lightning: train a ``LightningModule`` under an :class:`~eclearn.Problem`.

Mix :class:`ConstrainedModule` into a ``LightningModule`` (it must come first in the
bases) and declare the problem::

    import lightning as L
    from eclearn.integrations.lightning import ConstrainedModule

    class Fair(ConstrainedModule, L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(8, 1)

        def forward(self, x):
            return self.net(x)

        def configure_problem(self):                 # required
            return ecl.Problem(evaluate, [ecl.Equality("gap", rhs=0.0)])

        def configure_optimizers(self):              # the primal optimizer, as usual
            return torch.optim.Adam(self.parameters(), lr=1e-3)

        def configure_solver(self):                  # optional: PrimalDual's keywords
            return {"dual_optimizer": ecl.dual.SGD(0.05)}

    L.Trainer(max_steps=1000).fit(Fair(), dataloader)

What it does:

- **One Lightning step = one eclearn step.** The module uses Lightning's *manual
  optimization*; its ``training_step`` is :meth:`ConstrainedModule.constrained_step`:
  ``solver.lagrangian_step(batch)`` → ``manual_backward`` → optimizer step →
  ``solver.dual_step()`` (the core's two half-steps, :class:`~eclearn.PrimalDual`). We
  chose manual over automatic optimization because the dual step must follow exactly one
  primal step on the same batch: automatic optimization may skip, accumulate
  (``accumulate_grad_batches``) or re-run the closure (L-BFGS) the step, and a dual step
  hooked onto ``on_train_batch_end`` would then move the multipliers on batches whose
  Lagrangian was never stepped. Manual optimization makes the step visible and keeps
  Lightning's precision plugins, strategies and loggers.
- **Checkpoints.** ``on_save_checkpoint`` adds the solver's state (multipliers, dual
  optimizer state, counters, history, RNG states, stateful eclearn callbacks; not the
  model and optimizer, which Lightning already saves) under ``checkpoint["eclearn"]``;
  ``Trainer.fit(ckpt_path=...)`` restores it when training starts, so a resumed run
  continues bit for bit: the random generators are restored as the checkpoint is loaded,
  before Lightning builds the epoch's data iterator (exact at epoch ends; mid-epoch as
  far as Lightning resumes the data loader — a ``torchdata`` ``StatefulDataLoader``).
- **Logging.** Every step logs the history's ``objective``, ``lagrangian``,
  ``violation/<name>``, ``multiplier/<name>`` and pointwise ``excess/<c>/…`` columns with
  ``self.log`` (Lightning's loggers: CSV, TensorBoard, W&B, ...). The values are logged
  as tensors: no host synchronisation until the logger writes.
- **Distributed.** Under ``strategy="ddp"`` the solver detects the process group when it
  is built (at ``on_train_start``) and takes the core's distributed path
  (:func:`eclearn.solver.lagrangian.globalize`: one ``all_reduce`` of every statistic's
  numerator and denominator, the rank's linearised loss whose DDP-averaged gradient is the
  global Lagrangian's), so W processes with Lightning's ``DistributedSampler`` hold the
  multipliers one process computes on the global batch.

Lightning is imported only by :func:`require_lightning`; importing this module does not
need it (the mixin calls the ``LightningModule`` API of the class it is mixed into).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from eclearn import _rng
from eclearn.diagnostics import Diagnostic, DiagnosticWarning
from eclearn.problem import Problem
from eclearn.solver.loop import PrimalDual, StepRecord

__all__ = ["CHECKPOINT_KEY", "LOGGED", "ConstrainedModule", "require_lightning"]

CHECKPOINT_KEY = "eclearn"
"""Where the solver's state lives in a Lightning checkpoint."""

LOGGED: tuple[str, ...] = ("objective", "lagrangian", "violation/", "multiplier/", "excess/")
"""History columns (names or prefixes) that :class:`ConstrainedModule` logs every step."""

_NOT_HERE = {
    "scheduler": "return it from configure_optimizers (Lightning steps it)",
    "scheduler_interval": "set 'interval' in configure_optimizers' lr_scheduler config",
    "device": "Lightning places the module (Trainer(accelerator=...))",
    "process_group": "Lightning's strategy initialises it (Trainer(strategy='ddp'))",
    "autocast": "use Lightning's precision (Trainer(precision='bf16-mixed'))",
}


def require_lightning() -> Any:
    """The ``lightning.pytorch`` module (or the older ``pytorch_lightning``); raises an
    ``ImportError`` that says how to install it."""
    try:
        import lightning.pytorch as pl
    except ImportError:
        try:
            import pytorch_lightning as pl  # type: ignore[no-redef]
        except ImportError:
            raise ImportError(
                "eclearn.integrations.lightning needs PyTorch Lightning: "
                "pip install 'eclearn[lightning]' (or pip install lightning)"
            ) from None
    return pl


class ConstrainedModule:
    """Mixin for a ``LightningModule`` that trains under a constrained problem.

    Subclasses implement :meth:`configure_problem` (and ``configure_optimizers`` for the
    primal optimizer, as in any ``LightningModule``); :meth:`configure_solver` returns
    optional :class:`~eclearn.PrimalDual` keywords (``dual_optimizer``, ``formulation``,
    ``primal_steps``, ``mode``, ``dtype``, ``grad_clip``, ``batch_keys``, ``callbacks``,
    ``check_indices``). The solver (:attr:`solver`) is built when training starts, with
    the module itself as the model, so ``evaluate(model, batch)`` receives the module.

    Hooks this mixin defines call ``super()``; a subclass that overrides
    ``on_train_start``, ``on_train_epoch_end``, ``on_train_end``, ``on_save_checkpoint``
    or ``on_load_checkpoint`` must call ``super()`` too. ``training_step`` may be
    overridden: call :meth:`constrained_step` from it (or the solver's half-steps).
    """

    log_constraints: ClassVar[Sequence[str] | bool] = LOGGED
    """History columns (names or ``prefix/``) to log every step; ``False`` logs none."""

    diagnostics: list[Diagnostic]

    # ------------------------------------------------------------------ user hooks
    def configure_problem(self) -> Problem:
        """The :class:`~eclearn.Problem` to train under (called once, when training starts)."""
        raise NotImplementedError(
            f"{type(self).__name__} mixes in ConstrainedModule but does not define "
            "configure_problem(self) -> ecl.Problem"
        )

    def configure_solver(self) -> Mapping[str, Any]:
        """Keyword arguments for :class:`~eclearn.PrimalDual` (default: none)."""
        return {}

    # ------------------------------------------------------------------ the solver
    @property
    def automatic_optimization(self) -> bool:
        """Always ``False``: one training step is one primal and one dual step."""
        return False

    @automatic_optimization.setter
    def automatic_optimization(self, value: bool) -> None:
        if value:
            raise ValueError(
                "ConstrainedModule uses manual optimization (one training step = one primal "
                "step and one dual step); automatic_optimization cannot be switched on"
            )

    @property
    def solver(self) -> PrimalDual:
        """The :class:`~eclearn.PrimalDual` solver (built at ``on_train_start``)."""
        solver = self.__dict__.get("_eclearn_solver")
        if solver is None:
            raise RuntimeError(
                "the eclearn solver is built when training starts (on_train_start of "
                "Trainer.fit); it does not exist yet"
            )
        return solver

    @property
    def has_solver(self) -> bool:
        """Whether :attr:`solver` exists (training has started once)."""
        return self.__dict__.get("_eclearn_solver") is not None

    def _primal_optimizer(self) -> torch.optim.Optimizer:
        module: Any = self
        optimizers = module.optimizers(use_pl_optimizer=False)
        if isinstance(optimizers, (list, tuple)):
            if len(optimizers) != 1:
                raise ValueError(
                    "ConstrainedModule trains with one primal optimizer; configure_optimizers "
                    f"returned {len(optimizers)} (use parameter groups for several rates)"
                )
            optimizers = optimizers[0]
        return optimizers

    def _build_solver(self) -> PrimalDual:
        optimizer = self._primal_optimizer()
        solver: PrimalDual | None = self.__dict__.get("_eclearn_solver")
        if solver is not None:  # a further Trainer.fit: Lightning made a new optimizer
            solver.primal_optimizer = optimizer
            return solver
        problem = self.configure_problem()
        if not isinstance(problem, Problem):
            raise TypeError(
                f"configure_problem must return an ecl.Problem, got {type(problem).__name__}"
            )
        options = dict(self.configure_solver() or {})
        refused = sorted(set(options) & set(_NOT_HERE))
        if refused:
            raise ValueError(
                "configure_solver: "
                + "; ".join(
                    f"{key}= is not used under Lightning: {_NOT_HERE[key]}" for key in refused
                )
            )
        solver = PrimalDual(problem, self, optimizer, **options)  # type: ignore[arg-type]
        if solver.closure:
            raise ValueError(
                f"{type(optimizer).__name__} needs a closure that re-evaluates the Lagrangian; "
                "train it with ecl.PrimalDual.fit instead of Lightning"
            )
        self.__dict__["_eclearn_solver"] = solver
        return solver

    # ------------------------------------------------------------------ the step
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """One constrained step (:meth:`constrained_step`)."""
        return self.constrained_step(batch)

    def constrained_step(self, batch: Any) -> Tensor:
        """Primal step on the Lagrangian of ``batch``, then the dual step; logs the step's
        violations and multipliers; returns the Lagrangian (detached)."""
        module: Any = self
        solver = self.solver
        solver.stream.epoch = int(module.trainer.current_epoch)  # the history's epoch column
        optimizer = module.optimizers()
        if isinstance(optimizer, (list, tuple)):
            optimizer = optimizer[0]
        loss = solver.lagrangian_step(batch)
        optimizer.zero_grad()
        module.manual_backward(loss)
        if solver.grad_clip is not None:
            module.clip_gradients(
                optimizer, gradient_clip_val=solver.grad_clip, gradient_clip_algorithm="norm"
            )
        optimizer.step()
        record = solver.dual_step()
        self._step_schedulers("step")
        self.log_solver(record)
        return record.lagrangian

    def _step_schedulers(self, interval: str) -> None:
        module: Any = self
        trainer = module.trainer
        for config in trainer.lr_scheduler_configs:
            if config.interval != interval:
                continue
            if config.reduce_on_plateau:
                raise ValueError(
                    "ConstrainedModule steps LR schedulers itself (manual optimization) and "
                    "cannot step ReduceLROnPlateau, which needs a monitored value; override "
                    "training_step/on_train_epoch_end and call scheduler.step(value) there"
                )
            count = trainer.global_step if interval == "step" else trainer.current_epoch + 1
            if count % config.frequency == 0:
                config.scheduler.step()

    def log_solver(self, record: StepRecord | None = None) -> None:
        """``self.log`` the latest history row's :attr:`log_constraints` columns (tensors,
        so nothing synchronises with the device here)."""
        module: Any = self
        if not self.log_constraints or not module.trainer.loggers:
            return
        solver = self.solver
        row = solver._last_row  # the step's history pieces, still on the device
        if row is None:
            return
        head, pieces = row
        columns = solver.history.columns
        chosen = self.__dict__.get("_eclearn_logged")
        if chosen is None or chosen[0] is not columns:
            wanted = LOGGED if self.log_constraints is True else tuple(self.log_constraints)
            no_objective = record is not None and record.evaluation.objective is None
            picked = [
                (i - len(head), name)
                for i, name in enumerate(columns)
                if i >= len(head)
                and any(name == w or (w.endswith("/") and name.startswith(w)) for w in wanted)
                and not (no_objective and name == "objective")
            ]
            chosen = self.__dict__["_eclearn_logged"] = (columns, picked)
        dtype = torch.float32 if solver.device.type == "mps" else torch.float64
        flat = torch.cat([p.detach().reshape(-1).to(dtype) for p in pieces])
        module.log_dict(
            {name: flat[j] for j, name in chosen[1]},
            on_step=True,
            on_epoch=False,
            prog_bar=False,
            logger=True,
        )

    # ------------------------------------------------------------------ Lightning hooks
    def on_train_start(self) -> None:
        solver = self._build_solver()
        saved = self.__dict__.pop("_eclearn_saved", None)
        if saved is not None:
            self._restore(solver, saved)
        self.__dict__["_eclearn_start"] = solver.step
        parent: Any = super()
        if hasattr(parent, "on_train_start"):
            parent.on_train_start()

    def on_train_epoch_end(self) -> None:
        self._step_schedulers("epoch")
        parent: Any = super()
        if hasattr(parent, "on_train_epoch_end"):
            parent.on_train_epoch_end()

    def on_train_end(self) -> None:
        """Diagnose the fit (as ``PrimalDual.fit`` does): ``self.diagnostics``, and each
        as a :class:`~eclearn.DiagnosticWarning` on rank 0."""
        if self.has_solver:
            solver = self.solver
            self.diagnostics = solver.diagnose(start=int(self.__dict__.get("_eclearn_start", 0)))
            module: Any = self
            if module.trainer.is_global_zero:
                for d in self.diagnostics:
                    warnings.warn(d.message, DiagnosticWarning, stacklevel=2)
        parent: Any = super()
        if hasattr(parent, "on_train_end"):
            parent.on_train_end()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.has_solver:
            state = self.solver.state_dict()
            # Lightning's checkpoint holds them already ("state_dict", "optimizer_states")
            state["model"] = None
            state["primal_optimizer"] = None
            checkpoint[CHECKPOINT_KEY] = state
        elif self.__dict__.get("_eclearn_saved") is not None:
            checkpoint[CHECKPOINT_KEY] = self.__dict__["_eclearn_saved"]
        parent: Any = super()
        if hasattr(parent, "on_save_checkpoint"):
            parent.on_save_checkpoint(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get(CHECKPOINT_KEY)
        if saved is not None:
            # The random generators now, before Lightning builds the epoch's data iterator
            # (its sampler draws its seed from them); the rest when training starts.
            _rng.restore(saved["rng"])
            self.__dict__["_eclearn_saved"] = saved
        parent: Any = super()
        if hasattr(parent, "on_load_checkpoint"):
            parent.on_load_checkpoint(checkpoint)

    def _restore(self, solver: PrimalDual, saved: Mapping[str, Any]) -> None:
        """Load the solver's part of a Lightning checkpoint. Lightning has restored the
        model and the optimizer already; their current states stand in for the entries
        the checkpoint leaves out."""
        module: Any = self
        state = dict(saved)
        if state.get("model") is None:
            state["model"] = module.state_dict()
        if state.get("primal_optimizer") is None:
            state["primal_optimizer"] = solver.primal_optimizer.state_dict()
        # restored in on_load_checkpoint; the data iterator has drawn from them since
        state["rng"] = _rng.serialize(_rng.capture())
        solver.load_state_dict(state)
