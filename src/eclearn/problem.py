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
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from eclearn.measures import excess
from eclearn.statistics import Proxy, Ratio

__all__ = ["Constraint", "Equality", "Evaluation", "Inequality", "Problem", "ProblemError"]

OBJECTIVE = "objective"
EXTRAS = "extras"
_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_RESERVED = frozenset({OBJECTIVE, EXTRAS})


class ProblemError(ValueError):
    """Invalid declaration or invalid values returned by ``evaluate``."""


class Constraint:
    """Common declaration of an equality or inequality constraint (use the subclasses).

    ``size``: number of components (vector-valued constraints have one multiplier each).
    ``pointwise``: one constraint (and multiplier) per training sample; ``evaluate`` then
    returns per-sample values of shape ``[B]`` or ``[B, size]`` and the batch carries the
    sample ids under ``index_key``. ``num_samples`` is the table length.
    ``init``: initial multiplier value. ``lr``: optional per-constraint dual learning rate
    (overrides the dual optimizer's). ``tolerance``: the excess (``|v|`` for equalities,
    ``[v]₊`` for inequalities, :mod:`eclearn.measures`) accepted as satisfied by stopping
    rules, diagnostics, selection and verdicts.
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
        sign: float = 1.0,
    ) -> None:
        if not isinstance(name, str) or not _NAME_PATTERN.match(name) or name in _RESERVED:
            raise ProblemError(
                f"constraint name {name!r} is not allowed: use letters, digits, '_', '-', '.' "
                f"(not starting with a digit) and not the reserved names {sorted(_RESERVED)}"
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
        if not (
            isinstance(tolerance, (int, float))
            and not isinstance(tolerance, bool)
            and math.isfinite(tolerance)
            and tolerance >= 0
        ):
            raise ProblemError(
                f"constraint {name!r}: tolerance must be a finite number ≥ 0, got {tolerance!r}"
            )
        self.name = name
        self.size = size
        self.pointwise = pointwise
        self.num_samples = num_samples
        self.index_key = index_key
        self.lr = None if lr is None else float(lr)
        self.tolerance = float(tolerance)
        self.sign = float(sign)
        self.shape = torch.Size([size])
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
        """True for an :class:`Equality` (free multiplier), False for an :class:`Inequality`."""
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
        """Signed violation ``value − rhs`` (equality) or ``value − bound`` (inequality;
        ``bound − value`` for a ``≥`` inequality): positive means violated."""
        v = value - self.target.to(value)
        return v if self.sign == 1.0 else v * self.sign

    def satisfied(self, violation: Tensor, tolerance: float | None = None) -> Tensor:
        """Boolean per component: ``|v| ≤ tol`` (equality) or ``v ≤ tol`` (inequality)."""
        tol = self.tolerance if tolerance is None else tolerance
        return excess(violation, not self.is_equality) <= tol

    def describe(self) -> dict[str, Any]:
        """Plain description: name, kind, size, pointwise, tolerance, target, direction."""
        return {
            "name": self.name,
            "kind": self.kind,
            "size": self.size,
            "pointwise": self.pointwise,
            "num_samples": self.num_samples,
            "tolerance": self.tolerance,
            "target": self.target.tolist(),
            "sense": "==" if self.is_equality else ("<=" if self.sign > 0 else ">="),
        }

    def component_names(self) -> list[str]:
        """History labels of the components: ``name`` or ``name[i]``."""
        if self.size == 1:
            return [self.name]
        return [f"{self.name}[{i}]" for i in range(self.size)]

    def __repr__(self) -> str:
        extra = f", pointwise=True, num_samples={self.num_samples}" if self.pointwise else ""
        if self.sign < 0:
            extra += ", sense='>='"
        return f"{type(self).__name__}({self.name!r}, size={self.size}{extra})"


class Equality(Constraint):
    """An equality constraint, ``E[h(f_θ(x), y)] = b`` (average) or ``h(f_θ(x), y) = b`` for
    every training sample (``pointwise=True``).

    It enters the empirical Lagrangian as ``μᵀ(ĥ − b)`` with a *free* multiplier ``μ``
    (any sign): the dual step is ``μ ← μ + η (ĥ − b)``. At a solution ``μ`` prices the
    constraint: moving ``b`` by ``Δb`` changes the optimal objective by about ``−μᵀΔb``
    (see :func:`eclearn.certify`). ``evaluate`` returns ``ĥ`` under this constraint's name: a
    ``[size]`` tensor, an :class:`~eclearn.Ratio`, or an :class:`~eclearn.Proxy`; pointwise
    constraints return per-sample rows and need sample ids in ``batch[index_key]``.

    ``rhs``: ``b`` (a number or ``size`` numbers). Other arguments: see :class:`Constraint`.
    """

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
        """The right-hand side ``b`` (float64, one entry per component)."""
        return self.target


class Inequality(Constraint):
    """An inequality constraint, ``E[g(f_θ(x), y)] ≤ c`` (average) or per sample
    (``pointwise=True``); ``sense=">="`` declares ``E[g] ≥ c`` instead.

    It enters the Lagrangian as ``λᵀ(ĝ − c)`` (``λᵀ(c − ĝ)`` for ``≥``) with ``λ ≥ 0``: the
    dual step is ``λ ← [λ + η (ĝ − c)]₊``, so the multiplier grows while the constraint is
    violated and decays to 0 when it holds with slack (complementary slackness). Slack is
    never counted as a violation (excess ``[ĝ − c]₊``).

    ``bound``: ``c`` (a number or ``size`` numbers). Other arguments: see :class:`Constraint`.
    """

    kind = "inequality"

    def __init__(
        self,
        name: str,
        size: int = 1,
        *,
        bound: float | Sequence[float] | Tensor = 0.0,
        sense: str = "<=",
        pointwise: bool = False,
        num_samples: int | None = None,
        index_key: str = "index",
        init: float | Sequence[float] | Tensor = 0.0,
        lr: float | None = None,
        tolerance: float = 1e-3,
    ) -> None:
        if sense not in ("<=", ">="):
            raise ProblemError(
                f"inequality {name!r}: sense must be '<=' (value ≤ bound) or '>=' "
                f"(value ≥ bound), got {sense!r}"
            )
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
            sign=1.0 if sense == "<=" else -1.0,
        )

    @property
    def bound(self) -> Tensor:
        """The bound ``c`` (float64, one entry per component)."""
        return self.target

    @property
    def sense(self) -> str:
        """``"<="`` or ``">="``."""
        return "<=" if self.sign > 0 else ">="


@dataclass
class Evaluation:
    """Validated output of one ``evaluate`` call.

    ``objective`` and ``values`` are what the primal step differentiates (the ``surrogate``
    part of an :class:`~eclearn.Proxy`): average constraints → ``[size]``, pointwise →
    ``[B, size]`` per-sample rows. ``exact`` / ``exact_objective`` hold the detached
    ``exact`` parts of the entries returned as proxies; :meth:`measured` gives the value the
    dual step, history, stopping and selection use. ``ratios`` / ``exact_ratios`` keep the
    :class:`~eclearn.Ratio` parts (for exact pooling, :meth:`sums`). ``indices[name]``: the
    ``[B]`` sample ids of pointwise constraints. ``batch_size``: rows in the batch.
    ``extras``: whatever ``evaluate`` returned under ``"extras"`` (passed through untouched,
    e.g. per-class sums a callback logs).
    """

    objective: Tensor | None
    values: dict[str, Tensor]
    ratios: dict[str, Ratio]
    indices: dict[str, Tensor]
    batch_size: int
    exact: dict[str, Tensor] = field(default_factory=dict)
    exact_ratios: dict[str, Ratio] = field(default_factory=dict)
    exact_objective: Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def has_proxies(self) -> bool:
        """Whether any entry was returned as an :class:`~eclearn.Proxy`."""
        return bool(self.exact) or self.exact_objective is not None

    def measured(self, name: str) -> Tensor:
        """The value the dual step uses: the exact part of a proxy, else the value (detached)."""
        exact = self.exact.get(name)
        return exact if exact is not None else self.values[name].detach()

    @property
    def measured_objective(self) -> Tensor | None:
        """The objective the history and selection use (the exact part of a proxy)."""
        if self.exact_objective is not None:
            return self.exact_objective
        return None if self.objective is None else self.objective.detach()

    def sums(self, name: str, exact: bool = True) -> tuple[Tensor, Tensor]:
        """``(numerator, denominator)`` that pool this average statistic (or ``"objective"``)
        over batches and processes: a :class:`~eclearn.Ratio`'s own parts, a plain mean of
        ``B`` rows as ``(B·v, B)``. ``exact=False`` takes the surrogate part of a proxy.
        Not detached (the distributed primal loss differentiates the surrogate's sums)."""
        use_exact = exact and (
            name in self.exact or (name == OBJECTIVE and self.exact_objective is not None)
        )
        ratios = self.exact_ratios if use_exact else self.ratios
        if name in ratios:
            ratio = ratios[name]
            return ratio.numerator, ratio.denominator.to(ratio.numerator.dtype)
        if name == OBJECTIVE:
            value = self.exact_objective if use_exact else self.objective
        else:
            value = self.exact[name] if use_exact else self.values[name]
        assert value is not None
        size = float(self.batch_size)
        return value * size, torch.full_like(value, size).detach()

    def frozen(self) -> Evaluation:
        """A detached copy of the numbers (statistics, not activations): a value that is a
        parameter or a view of one would change with the primal step, so it is cloned; a
        freshly computed value is only detached."""
        return Evaluation(
            None if self.objective is None else _snapshot(self.objective),
            {k: _snapshot(v) for k, v in self.values.items()},
            {k: r.detach() for k, r in self.ratios.items()},
            self.indices,
            self.batch_size,
            {k: v.clone() for k, v in self.exact.items()},
            dict(self.exact_ratios),
            None if self.exact_objective is None else self.exact_objective.clone(),
            self.extras,
        )


def _snapshot(value: Tensor) -> Tensor:
    detached = value.detach()
    fresh = value.grad_fn is not None and value._base is None
    return detached if fresh else detached.clone()


def _batch_size(batch: Any) -> int:
    values = batch.values() if isinstance(batch, Mapping) else batch
    for value in values:
        if isinstance(value, Tensor) and value.dim() > 0:
            return int(value.shape[0])
    return 1


class Problem:
    """A constrained learning problem: ``evaluate`` plus the declared constraints.

    ``evaluate(model, batch[, exact=...]) -> dict`` returns ``"objective"`` (a scalar;
    omit it for a feasibility problem) and one entry per constraint name: a tensor, an
    :class:`~eclearn.Ratio` for average statistics that are ratios of sums, or an
    :class:`~eclearn.Proxy` pairing a differentiable surrogate with the exact statistic.
    An optional ``"extras"`` entry (any object) is passed through to callbacks.
    If ``evaluate`` accepts an ``exact`` keyword, training calls it with ``exact=False``
    and :func:`eclearn.evaluate` with ``exact=True`` (the real statistics).
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
        self._allowed = set(self.by_name) | {OBJECTIVE, EXTRAS}
        params: Mapping[str, inspect.Parameter]
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

    def describe(self) -> list[dict[str, Any]]:
        """Every declaration in full (:meth:`Constraint.describe`): what run directories store."""
        return [c.describe() for c in self.constraints]

    def __call__(
        self, model: Any, batch: Mapping[str, Any], *, exact: bool = False, step: int | None = None
    ) -> Evaluation:
        """Run ``evaluate`` once and validate its output. ``batch`` is a dict of tensors, or
        a tuple/list of tensors passed to ``evaluate`` as it is (pointwise constraints need a
        dict: their sample ids are looked up by key)."""
        if not isinstance(batch, Mapping) and (
            not isinstance(batch, (tuple, list)) or self.pointwise
        ):
            hint = (
                " (pointwise constraints look up their sample ids by key; name the items "
                "with keys=...)"
                if self.pointwise and isinstance(batch, (tuple, list))
                else " or a tuple/list of tensors"
            )
            raise ProblemError(
                f"{self._where(step)}: a batch must be a dict of tensors{hint}, got "
                f"{type(batch).__name__}"
            )
        for c in self.pointwise:
            if c.index_key not in batch:
                raise ProblemError(
                    f"{self._where(step)}: pointwise constraint {c.name!r} needs the sample ids "
                    f"in batch[{c.index_key!r}] (int64), but the batch has keys {sorted(batch)}; "
                    "add them (ecl.Batches does) or set index_key= on the constraint"
                )
        try:
            if self._takes_exact:
                out = self.evaluate_fn(model, batch, exact=exact)
            else:
                out = self.evaluate_fn(model, batch)
        except KeyError as err:
            key = err.args[0] if err.args else "?"
            if not isinstance(batch, Mapping) or not isinstance(key, str) or key in batch:
                raise
            raise ProblemError(
                f"{self._where(step)}: evaluate looked up batch key {key!r}, which the batch does "
                f"not have (keys: {sorted(map(str, batch))}); add it to the batches or fix the "
                "key in evaluate"
            ) from err
        except TypeError as err:
            positional = isinstance(batch, (tuple, list)) and "indices must be integers" in str(err)
            if not positional:
                raise
            raise ProblemError(
                f"{self._where(step)}: evaluate indexed the batch by name, but the batch is a "
                f"{type(batch).__name__} of {len(batch)} tensors (e.g. from "
                "DataLoader(TensorDataset(...))); name its parts with fit(..., keys=('x', "
                "'y', ...)) or index it by position in evaluate"
            ) from err
        return self.validate(out, batch, step=step)

    def _where(self, step: int | None) -> str:
        return "evaluate" if step is None else f"step {step}"

    def validate(
        self, out: Mapping[str, Any], batch: Any, *, step: int | None = None
    ) -> Evaluation:
        """Check what ``evaluate`` returned and turn it into an :class:`Evaluation`."""
        where = self._where(step)
        if not isinstance(out, Mapping):
            raise ProblemError(
                f"{where}: evaluate must return a dict of tensors, got {type(out).__name__}"
            )
        if not self._allowed.issuperset(out):
            unknown = sorted(set(out) - self._allowed)
            raise ProblemError(
                f"{where}: evaluate returned {unknown}, which no constraint declares; declared: "
                f"{sorted(self.by_name)} (and 'objective', 'extras'). Declare them or drop them."
            )
        if len(out) - (OBJECTIVE in out) - (EXTRAS in out) != len(self.constraints):
            missing = [c.name for c in self.constraints if c.name not in out]
            raise ProblemError(
                f"{where}: evaluate did not return the declared constraint(s) {missing}"
            )
        size = _batch_size(batch)
        if size == 0:
            raise ProblemError(
                f"{where}: the batch has 0 rows, so no statistic can be estimated from it; "
                "drop empty batches (e.g. DataLoader(drop_last=True) or a larger batch)"
            )
        ev = Evaluation(None, {}, {}, {}, size)
        raw_objective = out.get(OBJECTIVE)
        if raw_objective is not None:
            if type(raw_objective) is Tensor and raw_objective.dim() == 0:
                ev.objective = raw_objective  # the common case, checked without detours
            else:
                ev.objective = self._objective(raw_objective, ev, where)
        extras = out.get(EXTRAS)
        if extras is not None:
            ev.extras = extras if isinstance(extras, dict) else {"value": extras}
        for c in self.constraints:
            raw = out[c.name]
            if type(raw) is Tensor and not c.pointwise and raw.shape == c.shape:
                ev.values[c.name] = raw  # the common case: a [size] tensor
                continue
            if c.pointwise:
                self._pointwise(c, raw, batch, ev, where)
                continue
            if isinstance(raw, Proxy):
                value, ratio = _average(c, raw.surrogate, where, "surrogate")
                exact_value, exact_ratio = _average(c, raw.exact, where, "exact")
                ev.exact[c.name] = exact_value.detach()
                if exact_ratio is not None:
                    ev.exact_ratios[c.name] = exact_ratio.detach()
            else:
                value, ratio = _average(c, raw, where, "value")
            ev.values[c.name] = value
            if ratio is not None:
                ev.ratios[c.name] = ratio
        return ev

    @staticmethod
    def _objective(raw: Any, ev: Evaluation, where: str) -> Tensor:
        def scalar(part: Any, what: str, exact: bool) -> Tensor:
            if isinstance(part, Ratio):
                ratio = Ratio(part.numerator.reshape(()), part.denominator.reshape(()))
                (ev.exact_ratios if exact else ev.ratios)[OBJECTIVE] = (
                    ratio.detach() if exact else ratio
                )
                part = ratio.value
            if not isinstance(part, Tensor) or part.numel() != 1:
                raise ProblemError(
                    f"{where}: 'objective'{what} must be a scalar tensor, got "
                    f"{getattr(part, 'shape', type(part).__name__)}"
                )
            return part.reshape(())

        if isinstance(raw, Proxy):
            ev.exact_objective = scalar(raw.exact, " (exact part)", True).detach()
            return scalar(raw.surrogate, " (surrogate part)", False)
        return scalar(raw, "", False)

    def _pointwise(
        self, c: Constraint, raw: Any, batch: Mapping[str, Any], ev: Evaluation, where: str
    ) -> None:
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
        if isinstance(raw, Proxy):
            ev.values[c.name] = _rows(c, raw.surrogate, n, where, " (surrogate part)")
            ev.exact[c.name] = _rows(c, raw.exact, n, where, " (exact part)").detach()
        else:
            ev.values[c.name] = _rows(c, raw, n, where, "")
        ev.indices[c.name] = index if index.dtype == torch.int64 else index.long()


def _rows(c: Constraint, raw: Any, n: int, where: str, what: str) -> Tensor:
    if not isinstance(raw, Tensor):
        raise ProblemError(
            f"{where}: pointwise constraint {c.name!r}{what} must be a tensor of per-sample "
            f"values, got {type(raw).__name__}"
        )
    if raw.dim() == 1 and c.size == 1 and raw.shape[0] == n:
        return raw.reshape(n, 1)
    if raw.dim() == 2 and tuple(raw.shape) == (n, c.size):
        return raw
    raise ProblemError(
        f"{where}: pointwise constraint {c.name!r}{what} returned shape {tuple(raw.shape)}; "
        f"expected [{n}] or [{n}, {c.size}] (one row per id in batch[{c.index_key!r}])"
    )


def _average(c: Constraint, raw: Any, where: str, what: str) -> tuple[Tensor, Ratio | None]:
    """The ``[size]`` value of an average statistic and its Ratio parts (if a Ratio)."""
    if isinstance(raw, Ratio):
        num = _as_shape(c, raw.numerator, where, f"{what} numerator")
        den = _as_shape(c, raw.denominator.to(num.dtype), where, f"{what} denominator")
        ratio = Ratio(num, den)
        return ratio.value, ratio
    if not isinstance(raw, Tensor):
        raise ProblemError(
            f"{where}: constraint {c.name!r} must be a tensor, an ecl.Ratio or an ecl.Proxy, "
            f"got {type(raw).__name__}"
        )
    return _as_shape(c, raw, where, what), None


def _as_shape(c: Constraint, value: Tensor, where: str, what: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise ProblemError(f"{where}: constraint {c.name!r} {what} must be a tensor")
    if value.numel() != c.size or (value.dim() > 1 and max(value.shape) != c.size):
        raise ProblemError(
            f"{where}: constraint {c.name!r} {what} has shape {tuple(value.shape)} but the "
            f"constraint is declared with size={c.size}; return a tensor of shape [{c.size}]"
        )
    return value if value.dim() == 1 else value.reshape(c.size)


def check_finite(terms: Mapping[str, Tensor], where: str) -> None:
    """Raise naming the first term with NaN/Inf entries (called only when the loss is not finite)."""
    for name, value in terms.items():
        if not bool(torch.isfinite(value.detach()).all()):
            raise ProblemError(
                f"{where}: {name!r} has NaN or Inf values ({value.detach().flatten()[:5].tolist()}"
                "...). Check the model output and the statistic; lower the learning rates if "
                "training diverged."
            )
