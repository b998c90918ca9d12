"""Problem declarations: the objective/constraint statistics a user's ``evaluate`` returns.

    minimise   E[ℓ]   subject to   E[g_i] ≤ c_i,   E[h_j] = b_j,   h_k(x) = 0 for every x

A :class:`Problem` pairs one user function ``evaluate(model, batch) -> dict`` (one forward
pass computes every term) with the declared constraints. It validates what ``evaluate``
returns — names, shapes, finiteness, pointwise indices — and turns it into
:class:`Evaluation` records the solver and :func:`eclearn.evaluate` consume.
"""

from __future__ import annotations

import copy
import inspect
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from eclearn.ratio import Ratio

__all__ = ["Constraint", "Equality", "Evaluation", "Inequality", "Problem", "ProblemError"]

OBJECTIVE = "objective"
_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


class ProblemError(ValueError):
    """Invalid declaration or invalid values returned by ``evaluate``."""


class Constraint:
    """Common declaration of an equality or inequality constraint.

    ``size``: number of components (vector-valued constraints have one multiplier each).
    ``pointwise``: one constraint (and multiplier) per training sample; ``evaluate`` then
    returns per-sample values of shape ``[B]`` or ``[B, size]`` and the batch carries the
    sample ids under ``index_key``. ``num_samples`` is the table length.
    ``init``: initial multiplier value. ``lr``: optional per-constraint dual learning rate
    (overrides the dual optimizer's). ``tolerance``: |violation| (equality) or violation
    (inequality) accepted as satisfied by stopping rules, diagnostics and verdicts.
    """

    kind: str = ""

    def __init__(
        self,
        name: str,
        size: int = 1,
        *,
        target: float | Sequence[float] | Tensor = 0.0,
        pointwise: bool = False,
        num_samples: int | None = None,
        index_key: str = "index",
        init: float | Sequence[float] | Tensor = 0.0,
        lr: float | None = None,
        tolerance: float = 1e-3,
    ) -> None:
        if not isinstance(name, str) or not _NAME_PATTERN.match(name) or name == OBJECTIVE:
            raise ProblemError(
                f"constraint name {name!r} is not allowed: use letters, digits, '_', '-', '.' "
                f"(not starting with a digit) and not the reserved name {OBJECTIVE!r}"
            )
        if not isinstance(size, int) or size < 1:
            raise ProblemError(f"constraint {name!r}: size must be a positive int, got {size!r}")
        if pointwise and (not isinstance(num_samples, int) or num_samples < 1):
            raise ProblemError(
                f"constraint {name!r} is pointwise: pass num_samples=<number of training "
                f"samples> (the length of its multiplier table), got {num_samples!r}"
            )
        if not pointwise and num_samples is not None:
            raise ProblemError(
                f"constraint {name!r}: num_samples is only meaningful with pointwise=True"
            )
        if lr is not None and not (isinstance(lr, (int, float)) and lr >= 0 and math.isfinite(lr)):
            raise ProblemError(f"constraint {name!r}: lr must be a finite number ≥ 0, got {lr!r}")
        if not (isinstance(tolerance, (int, float)) and tolerance >= 0):
            raise ProblemError(f"constraint {name!r}: tolerance must be ≥ 0, got {tolerance!r}")
        self.name = name
        self.size = size
        self.pointwise = pointwise
        self.num_samples = num_samples
        self.index_key = index_key
        self.lr = None if lr is None else float(lr)
        self.tolerance = float(tolerance)
        self.target = self._vector(target, "rhs" if self.kind == "equality" else "bound")
        self.init = self._vector(init, "init")
        if self.kind == "inequality" and bool((self.init < 0).any()):
            raise ProblemError(
                f"inequality {name!r}: init must be ≥ 0 (inequality multipliers are "
                f"non-negative), got {self.init.tolist()}"
            )

    def _vector(self, value: Any, what: str) -> Tensor:
        tensor = torch.as_tensor(value, dtype=torch.float64).detach().clone().reshape(-1)
        if tensor.numel() == 1:
            tensor = tensor.expand(self.size).clone()
        if tensor.numel() != self.size:
            raise ProblemError(
                f"constraint {self.name!r}: {what} has {tensor.numel()} entries but size={self.size}"
            )
        if not bool(torch.isfinite(tensor).all()):
            raise ProblemError(f"constraint {self.name!r}: {what} must be finite")
        return tensor

    @property
    def is_equality(self) -> bool:
        return self.kind == "equality"

    def tolerance_for(self, tolerance: float | Mapping[str, float] | None) -> float:
        """This constraint's tolerance under an override (one number or ``{name: tol}``)."""
        if isinstance(tolerance, Mapping):
            return float(tolerance.get(self.name, self.tolerance))
        return self.tolerance if tolerance is None else float(tolerance)

    def retarget(self, target: float | Sequence[float] | Tensor) -> Constraint:
        """A copy of this declaration with another rhs (equality) or bound (inequality)."""
        replaced = copy.copy(self)
        replaced.target = self._vector(target, "rhs" if self.is_equality else "bound")
        return replaced

    def violation(self, value: Tensor) -> Tensor:
        """Signed violation ``value − rhs`` (equality) or ``value − bound`` (inequality)."""
        return value - self.target.to(value)

    def satisfied(self, violation: Tensor, tolerance: float | None = None) -> Tensor:
        """Boolean per component: ``|v| ≤ tol`` (equality) or ``v ≤ tol`` (inequality)."""
        tol = self.tolerance if tolerance is None else tolerance
        return violation.abs() <= tol if self.is_equality else violation <= tol

    def component_names(self) -> list[str]:
        if self.size == 1:
            return [self.name]
        return [f"{self.name}[{i}]" for i in range(self.size)]

    def __repr__(self) -> str:
        extra = f", pointwise=True, num_samples={self.num_samples}" if self.pointwise else ""
        return f"{type(self).__name__}({self.name!r}, size={self.size}{extra})"


class Equality(Constraint):
    """``E[h] = rhs`` (or ``h(x) = rhs`` for every sample with ``pointwise=True``); free multiplier."""

    kind = "equality"

    def __init__(
        self,
        name: str,
        size: int = 1,
        *,
        rhs: float | Sequence[float] | Tensor = 0.0,
        pointwise: bool = False,
        num_samples: int | None = None,
        index_key: str = "index",
        init: float | Sequence[float] | Tensor = 0.0,
        lr: float | None = None,
        tolerance: float = 1e-3,
    ) -> None:
        super().__init__(
            name,
            size,
            target=rhs,
            pointwise=pointwise,
            num_samples=num_samples,
            index_key=index_key,
            init=init,
            lr=lr,
            tolerance=tolerance,
        )

    @property
    def rhs(self) -> Tensor:
        return self.target


class Inequality(Constraint):
    """``E[g] ≤ bound`` (or per sample with ``pointwise=True``); multiplier kept ≥ 0."""

    kind = "inequality"

    def __init__(
        self,
        name: str,
        size: int = 1,
        *,
        bound: float | Sequence[float] | Tensor = 0.0,
        pointwise: bool = False,
        num_samples: int | None = None,
        index_key: str = "index",
        init: float | Sequence[float] | Tensor = 0.0,
        lr: float | None = None,
        tolerance: float = 1e-3,
    ) -> None:
        super().__init__(
            name,
            size,
            target=bound,
            pointwise=pointwise,
            num_samples=num_samples,
            index_key=index_key,
            init=init,
            lr=lr,
            tolerance=tolerance,
        )

    @property
    def bound(self) -> Tensor:
        return self.target


@dataclass
class Evaluation:
    """Validated output of one ``evaluate`` call.

    ``values[name]``: average constraints → ``[size]`` tensor (the batch statistic);
    pointwise constraints → ``[B, size]`` per-sample values. ``ratios`` keeps the
    ``Ratio`` parts of average constraints that were returned as ratios (for exact
    pooling). ``indices[name]``: the ``[B]`` sample ids of pointwise constraints.
    ``batch_size``: rows in the batch (weights plain means when pooling batches).
    """

    objective: Tensor | None
    values: dict[str, Tensor]
    ratios: dict[str, Ratio]
    indices: dict[str, Tensor]
    batch_size: int


def _batch_size(batch: Mapping[str, Any]) -> int:
    for value in batch.values():
        if isinstance(value, Tensor) and value.dim() > 0:
            return int(value.shape[0])
    return 1


class Problem:
    """A constrained learning problem: ``evaluate`` plus the declared constraints.

    ``evaluate(model, batch[, exact=...]) -> dict`` returns ``"objective"`` (a scalar;
    omit it for a feasibility problem) and one entry per constraint name: a tensor, or a
    :class:`~eclearn.Ratio` for average constraints that are ratios of sums. If it
    accepts an ``exact`` keyword, training calls it with ``exact=False`` (smooth
    surrogates) and :func:`eclearn.evaluate` with ``exact=True`` (the real statistics).
    """

    def __init__(
        self,
        evaluate: Callable[..., Mapping[str, Any]],
        constraints: Sequence[Constraint] = (),
    ) -> None:
        if not callable(evaluate):
            raise ProblemError("Problem(evaluate, ...): evaluate must be callable(model, batch)")
        constraints = list(constraints)
        for c in constraints:
            if not isinstance(c, Constraint) or not c.kind:
                raise ProblemError(
                    f"Problem constraints must be ecl.Equality or ecl.Inequality, got {c!r}"
                )
        names = [c.name for c in constraints]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ProblemError(
                f"duplicate constraint names {duplicates}: every constraint needs its own name"
            )
        self.evaluate_fn = evaluate
        self.constraints: list[Constraint] = constraints
        self.by_name: dict[str, Constraint] = {c.name: c for c in constraints}
        self.average: list[Constraint] = [c for c in constraints if not c.pointwise]
        self.pointwise: list[Constraint] = [c for c in constraints if c.pointwise]
        try:
            params = inspect.signature(evaluate).parameters
        except (TypeError, ValueError):
            params = {}
        self._takes_exact = "exact" in params or any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
        )

    def __repr__(self) -> str:
        return f"Problem({getattr(self.evaluate_fn, '__name__', 'evaluate')}, {self.constraints})"

    def fingerprint(self) -> list[dict[str, Any]]:
        """Plain description of the declarations (saved in checkpoints, compared on load)."""
        return [
            {
                "name": c.name,
                "kind": c.kind,
                "size": c.size,
                "pointwise": c.pointwise,
                "num_samples": c.num_samples,
            }
            for c in self.constraints
        ]

    def __call__(
        self, model: Any, batch: Mapping[str, Any], *, exact: bool = False, step: int | None = None
    ) -> Evaluation:
        """Run ``evaluate`` once and validate its output."""
        if not isinstance(batch, Mapping):
            raise ProblemError(
                f"{self._where(step)}: a batch must be a dict of tensors, got {type(batch).__name__}"
            )
        for c in self.pointwise:
            if c.index_key not in batch:
                raise ProblemError(
                    f"{self._where(step)}: pointwise constraint {c.name!r} needs the sample ids "
                    f"in batch[{c.index_key!r}] (int64), but the batch has keys {sorted(batch)}; "
                    "add them (ecl.Batches does) or set index_key= on the constraint"
                )
        if self._takes_exact:
            out = self.evaluate_fn(model, batch, exact=exact)
        else:
            out = self.evaluate_fn(model, batch)
        return self.validate(out, batch, step=step)

    def _where(self, step: int | None) -> str:
        return "evaluate" if step is None else f"step {step}"

    def validate(
        self, out: Mapping[str, Any], batch: Mapping[str, Any], *, step: int | None = None
    ) -> Evaluation:
        where = self._where(step)
        if not isinstance(out, Mapping):
            raise ProblemError(
                f"{where}: evaluate must return a dict of tensors, got {type(out).__name__}"
            )
        unknown = sorted(set(out) - set(self.by_name) - {OBJECTIVE})
        if unknown:
            raise ProblemError(
                f"{where}: evaluate returned {unknown}, which no constraint declares; declared: "
                f"{sorted(self.by_name)} (and 'objective'). Declare them or drop them."
            )
        missing = [c.name for c in self.constraints if c.name not in out]
        if missing:
            raise ProblemError(
                f"{where}: evaluate did not return the declared constraint(s) {missing}"
            )
        objective = out.get(OBJECTIVE)
        ratios: dict[str, Ratio] = {}
        if objective is not None:
            if isinstance(objective, Ratio):
                ratios[OBJECTIVE] = Ratio(
                    objective.numerator.reshape(()), objective.denominator.reshape(())
                )
                objective = objective.value
            if not isinstance(objective, Tensor) or objective.numel() != 1:
                raise ProblemError(
                    f"{where}: 'objective' must be a scalar tensor, got "
                    f"{getattr(objective, 'shape', type(objective).__name__)}"
                )
            objective = objective.reshape(())
        values: dict[str, Tensor] = {}
        indices: dict[str, Tensor] = {}
        size = _batch_size(batch)
        for c in self.constraints:
            raw = out[c.name]
            if c.pointwise:
                values[c.name], indices[c.name] = self._pointwise(c, raw, batch, where)
                continue
            if isinstance(raw, Ratio):
                num = _as_shape(c, raw.numerator, where, "numerator")
                den = _as_shape(c, raw.denominator.to(num.dtype), where, "denominator")
                ratios[c.name] = Ratio(num, den)
                raw = ratios[c.name].value
            if not isinstance(raw, Tensor):
                raise ProblemError(
                    f"{where}: constraint {c.name!r} must be a tensor or ecl.Ratio, got "
                    f"{type(raw).__name__}"
                )
            values[c.name] = _as_shape(c, raw, where, "value")
        return Evaluation(objective, values, ratios, indices, size)

    def _pointwise(
        self, c: Constraint, raw: Any, batch: Mapping[str, Any], where: str
    ) -> tuple[Tensor, Tensor]:
        if not isinstance(raw, Tensor):
            raise ProblemError(
                f"{where}: pointwise constraint {c.name!r} must be a tensor of per-sample values, "
                f"got {type(raw).__name__}"
            )
        index = batch[c.index_key]
        if (
            not isinstance(index, Tensor)
            or index.dim() != 1
            or index.dtype not in (torch.int64, torch.int32)
        ):
            raise ProblemError(
                f"{where}: batch[{c.index_key!r}] for pointwise constraint {c.name!r} must be a "
                f"1-D int64 tensor of sample ids, got "
                f"{getattr(index, 'dtype', type(index).__name__)} {getattr(index, 'shape', '')}"
            )
        n = index.shape[0]
        if raw.dim() == 1 and c.size == 1 and raw.shape[0] == n:
            value = raw.reshape(n, 1)
        elif raw.dim() == 2 and tuple(raw.shape) == (n, c.size):
            value = raw
        else:
            raise ProblemError(
                f"{where}: pointwise constraint {c.name!r} returned shape {tuple(raw.shape)}; "
                f"expected [{n}] or [{n}, {c.size}] (one row per id in batch[{c.index_key!r}])"
            )
        return value, index.long()


def _as_shape(c: Constraint, value: Tensor, where: str, what: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise ProblemError(f"{where}: constraint {c.name!r} {what} must be a tensor")
    if value.numel() != c.size or (value.dim() > 1 and max(value.shape) != c.size):
        raise ProblemError(
            f"{where}: constraint {c.name!r} {what} has shape {tuple(value.shape)} but the "
            f"constraint is declared with size={c.size}; return a tensor of shape [{c.size}]"
        )
    return value.reshape(c.size)


def check_finite(terms: Mapping[str, Tensor], where: str) -> None:
    """Raise naming the first term with NaN/Inf entries (called only when the loss is not finite)."""
    for name, value in terms.items():
        if not bool(torch.isfinite(value.detach()).all()):
            raise ProblemError(
                f"{where}: {name!r} has NaN or Inf values ({value.detach().flatten()[:5].tolist()}"
                "...). Check the model output and the statistic; lower the learning rates if "
                "training diverged."
            )
