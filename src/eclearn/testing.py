"""Constrained problems with known solutions and multipliers, for testing dual optimizers.

The classic convergence suite of constrained-optimisation libraries, written with eclearn's
public API: each :class:`ConvexCase` builds a fresh problem, model, batches and primal
optimizer, and knows its primal solution and KKT multipliers (in closed form, or from a
Newton solve of the KKT system). :func:`solve` runs a :class:`~eclearn.PrimalDual` on it and
reports the first step from which the primal point and the multipliers stay within a
tolerance. Use it to check a dual optimizer or formulation of your own::

    from eclearn.testing import convergence_cases, solve
    for case in convergence_cases():
        print(case.name, solve(case, dual=my_dual_factory).steps)

Sign convention (DESIGN.md): ``L = f + λᵀ(ĝ − c) + μᵀ(ĥ − b)`` with λ ≥ 0, μ free; a
pointwise constraint enters as the batch mean ``(1/B) Σ_i λ_i g_i``, so with an objective
that is itself a mean over the same rows its multipliers equal the per-row KKT multipliers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from eclearn.batches import Batches
from eclearn.dual import DualOptimizer
from eclearn.formulations import Formulation
from eclearn.problem import Equality, Inequality, Problem, ProblemError
from eclearn.solver.loop import PrimalDual

__all__ = ["ConvexCase", "Outcome", "convergence_cases", "solve"]

F64 = torch.float64


def _t(values: Any) -> Tensor:
    return torch.as_tensor(values, dtype=F64)


class Parameters(nn.Module):
    """A parameter vector ``θ``; ``forward`` returns it (as a fresh tensor, like a model)."""

    def __init__(self, init: Tensor) -> None:
        super().__init__()
        self.theta = nn.Parameter(_t(init).clone())

    def forward(self) -> Tensor:
        return self.theta * 1.0


def _theta(model: nn.Module) -> Tensor:
    theta = model.get_parameter("theta")
    return theta.detach()


@dataclass
class ConvexCase:
    """One test problem with its solution.

    ``build()`` returns ``(problem, model, batches)``; ``primal_lr`` is the primal SGD step
    (≈ 1/L of the objective); ``primal(model)`` maps the model to the point compared with
    ``solution`` (θ itself, or the distribution a softmax model represents);
    ``multipliers`` are the KKT multipliers by constraint name.
    """

    name: str
    description: str
    build: Callable[[], tuple[Problem, nn.Module, Any]]
    primal_lr: float
    solution: Tensor
    multipliers: dict[str, Tensor]
    primal: Callable[[nn.Module], Tensor] = field(default=lambda model: _theta(model))


@dataclass
class Outcome:
    """What :func:`solve` measured: ``steps`` is the first checked step from which the primal
    and multiplier errors stayed ≤ ``tol`` until the end (None when they did not), and
    ``primal_error``/``multiplier_error`` are the final max-abs errors."""

    case: str
    steps: int | None
    primal_error: float
    multiplier_error: float
    seconds: float

    @property
    def converged(self) -> bool:
        return self.steps is not None


def _max_error(actual: Tensor, expected: Tensor) -> float:
    if actual.numel() == 0:
        return 0.0
    return float((actual.detach().double() - expected.double()).abs().max())


class _Tracker:
    """Stopping criterion that records the errors every ``every`` steps and stops once both
    stayed ≤ ``tol`` for ``hold`` consecutive checks."""

    def __init__(self, case: ConvexCase, tol: float, every: int, hold: int) -> None:
        self.case, self.tol, self.every, self.hold = case, tol, every, hold
        self.since: int | None = None
        self.streak = 0
        self.errors = (math.inf, math.inf)

    def errors_of(self, solver: PrimalDual) -> tuple[float, float]:
        primal = _max_error(self.case.primal(solver.model), self.case.solution)
        mults = solver.multipliers
        dual = max(
            (_max_error(mults[name], value) for name, value in self.case.multipliers.items()),
            default=0.0,
        )
        return primal, dual

    def check(self, solver: PrimalDual, steps: int) -> str | None:
        if solver.step % self.every:
            return None
        self.errors = self.errors_of(solver)
        primal, dual = self.errors
        if not (math.isfinite(primal) and math.isfinite(dual)):
            return "diverged"
        if max(primal, dual) <= self.tol:
            if self.since is None:
                self.since = solver.step
            self.streak += 1
            if self.streak >= self.hold:
                return "converged"
        else:
            self.since, self.streak = None, 0
        return None


def solve(
    case: ConvexCase,
    dual: Callable[[], DualOptimizer | None] | None = None,
    *,
    formulation: Callable[[], Formulation] | None = None,
    primal: Callable[[Any, float], torch.optim.Optimizer] | None = None,
    max_steps: int = 10_000,
    tol: float = 1e-4,
    every: int = 50,
    hold: int = 4,
) -> Outcome:
    """Run ``PrimalDual`` on ``case`` for at most ``max_steps`` steps.

    ``dual``/``formulation``: factories (None → the solver's defaults); ``primal``:
    ``(parameters, lr) → optimizer`` (default SGD at the case's ``primal_lr``). The errors
    are checked every ``every`` steps; the run stops once they stayed ≤ ``tol`` for ``hold``
    checks in a row.
    """
    torch.manual_seed(0)
    problem, model, batches = case.build()
    make_primal = primal or (lambda params, lr: torch.optim.SGD(params, lr=lr))
    solver = PrimalDual(
        problem,
        model,
        make_primal(model.parameters(), case.primal_lr),
        dual() if dual is not None else None,
        formulation=formulation() if formulation is not None else None,
        dtype=F64,
    )
    tracker = _Tracker(case, tol, every, hold)
    start = time.perf_counter()
    try:
        solver.fit(batches, max_steps=max_steps, stopping=tracker, warn=False)
    except ProblemError:  # the iterates blew up (inf/NaN): not converged
        tracker.since = None
    seconds = time.perf_counter() - start
    primal_error, multiplier_error = tracker.errors_of(solver)
    if not math.isfinite(primal_error + multiplier_error):
        primal_error = multiplier_error = math.inf
    converged = tracker.since is not None and max(primal_error, multiplier_error) <= tol
    return Outcome(
        case.name,
        tracker.since if converged else None,
        primal_error,
        multiplier_error,
        seconds,
    )


# --- the cases ------------------------------------------------------------------------------


def _full_batch() -> list[dict[str, Tensor]]:
    return [{"x": torch.zeros(1, dtype=F64)}]


def _qp_dense() -> ConvexCase:
    """min ½‖θ − a‖² s.t. Gθ ≤ h: 6 variables, 4 inequalities, 2 active and 2 inactive.
    Built from its KKT point: a = θ* + Gᵀλ*, h = Gθ* on the active rows, Gθ* + 1 else."""
    gen = torch.Generator().manual_seed(1)
    g = torch.randn(4, 6, generator=gen, dtype=F64)
    theta = torch.randn(6, generator=gen, dtype=F64)
    lam = _t([1.5, 0.7, 0.0, 0.0])
    a = theta + g.T @ lam
    h = g @ theta + _t([0.0, 0.0, 1.0, 1.0])

    def evaluate(model, batch):
        x = model()
        return {"objective": 0.5 * ((x - a) ** 2).sum(), "ineq": g @ x}

    def build():
        return (
            Problem(evaluate, [Inequality("ineq", 4, bound=h)]),
            Parameters(torch.zeros(6)),
            _full_batch(),
        )

    return ConvexCase("qp-dense", "QP, 4 inequalities (2 active)", build, 0.2, theta, {"ineq": lam})


def _qp_pointwise(batch_size: int | None) -> ConvexCase:
    """min ½ mean_i (θ_i − a_i)² s.t. θ_i ≤ b_i for each of 40 rows (half active):
    θ* = min(a, b), λ_i* = [a_i − b_i]₊ (objective and constraint are both row means)."""
    n = 40
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(n, generator=gen, dtype=F64)
    b = a + torch.where(torch.arange(n) % 2 == 0, -1.0, 0.5).to(F64)

    def evaluate(model, batch):
        x = model()[batch["index"]]
        return {"objective": 0.5 * ((x - batch["a"]) ** 2).mean(), "cap": x - batch["b"]}

    def build():
        problem = Problem(evaluate, [Inequality("cap", pointwise=True, num_samples=n)])
        return (
            problem,
            Parameters(torch.zeros(n)),
            Batches({"a": a, "b": b}, batch_size=batch_size, shuffle=batch_size is not None),
        )

    rows = n if batch_size is None else batch_size
    name = "qp-pointwise" if batch_size is None else f"qp-pointwise-batch{batch_size}"
    what = "full batch" if batch_size is None else f"batches of {batch_size}"
    return ConvexCase(
        name,
        f"QP, 40 per-sample inequalities ({what})",
        build,
        0.5 * rows,
        torch.minimum(a, b),
        {"cap": (a - b).clamp_min(0.0)},
    )


def _min_norm() -> ConvexCase:
    """min ½‖θ‖² s.t. Aθ = b, A 100 × 200: θ* = Aᵀ(AAᵀ)⁻¹b, μ* = −(AAᵀ)⁻¹b."""
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(100, 200, generator=gen, dtype=F64) / math.sqrt(200)
    b = torch.randn(100, generator=gen, dtype=F64)
    mu = -torch.linalg.solve(a @ a.T, b)

    def evaluate(model, batch):
        x = model()
        return {"objective": 0.5 * (x**2).sum(), "eq": a @ x}

    def build():
        return (
            Problem(evaluate, [Equality("eq", 100, rhs=b)]),
            Parameters(torch.zeros(200)),
            _full_batch(),
        )

    return ConvexCase("min-norm", "min ‖θ‖², 100 equalities", build, 0.5, -a.T @ mu, {"eq": mu})


def _max_entropy() -> ConvexCase:
    """max H(p) over p = softmax(θ) on 8 atoms s.t. E_p[f] = m: p* ∝ exp(−μ* f), with μ*
    found by bisection (E_p[f] is decreasing in μ)."""
    f = torch.linspace(0.0, 1.0, 8, dtype=F64)
    target = 0.3

    def mean_at(mu: float) -> float:
        p = torch.softmax(-mu * f, 0)
        return float((p * f).sum())

    lo, hi = -50.0, 50.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if mean_at(mid) > target else (lo, mid)
    mu = 0.5 * (lo + hi)

    def evaluate(model, batch):
        p = torch.softmax(model(), 0)
        return {"objective": (p * torch.log(p)).sum(), "mean": (p * f).sum()}

    def build():
        return (
            Problem(evaluate, [Equality("mean", rhs=target)]),
            Parameters(torch.zeros(8)),
            _full_batch(),
        )

    return ConvexCase(
        "max-entropy",
        "maximum-entropy distribution, 1 moment equality",
        build,
        2.0,
        torch.softmax(-mu * f, 0),
        {"mean": _t([mu])},
        primal=lambda model: torch.softmax(_theta(model), 0),
    )


def _nonconvex_circle() -> ConvexCase:
    """min θ₁ + θ₂ s.t. θ₁² + θ₂² = 2 (nonconvex feasible set): θ* = (−1, −1), μ* = ½
    (the Lagrangian at μ* is convex, so dual ascent finds it from a start near the
    maximiser (1, 1)'s side)."""

    def evaluate(model, batch):
        x = model()
        return {"objective": x.sum(), "circle": (x**2).sum()}

    def build():
        return (
            Problem(evaluate, [Equality("circle", rhs=2.0)]),
            Parameters(_t([0.5, 0.2])),
            _full_batch(),
        )

    return ConvexCase(
        "nonconvex-circle",
        "linear objective on a circle (nonconvex equality)",
        build,
        0.1,
        _t([-1.0, -1.0]),
        {"circle": _t([0.5])},
    )


def _qcqp_pointwise() -> ConvexCase:
    """min ½ mean_i ‖θ_i − c_i‖² s.t. ‖θ_i‖² ≤ r_i² per row (30 rows in ℝ²): θ_i* is c_i
    projected on its ball, λ_i* = [‖c_i‖/r_i − 1]₊ / 2."""
    n = 30
    gen = torch.Generator().manual_seed(4)
    c = torch.randn(n, 2, generator=gen, dtype=F64)
    norm = c.norm(dim=1)
    r = norm * torch.where(torch.arange(n) % 3 == 0, 1.5, 0.6).to(F64)
    theta = c * torch.clamp(r / norm, max=1.0)[:, None]
    lam = (norm / r - 1.0).clamp_min(0.0) / 2

    def evaluate(model, batch):
        x = model().view(n, 2)[batch["index"]]
        return {
            "objective": 0.5 * ((x - batch["c"]) ** 2).sum(1).mean(),
            "ball": (x**2).sum(1) - batch["r"] ** 2,
        }

    def build():
        problem = Problem(evaluate, [Inequality("ball", pointwise=True, num_samples=n)])
        return problem, Parameters(torch.zeros(2 * n)), Batches({"c": c, "r": r})

    return ConvexCase(
        "qcqp-pointwise",
        "QCQP, 30 per-sample ball constraints (2/3 active)",
        build,
        0.5 * n,
        theta.reshape(-1),
        {"ball": lam},
    )


def _mixed() -> ConvexCase:
    """min ½‖θ − (2, 0)‖² s.t. θ₁ + θ₂ = 1, θ₁ ≤ 0.2: θ* = (0.2, 0.8), μ* = −0.8, λ* = 2.6."""
    a = _t([2.0, 0.0])

    def evaluate(model, batch):
        x = model()
        return {"objective": 0.5 * ((x - a) ** 2).sum(), "sum": x.sum(), "cap": x[0]}

    def build():
        problem = Problem(evaluate, [Equality("sum", rhs=1.0), Inequality("cap", bound=0.2)])
        return problem, Parameters(torch.zeros(2)), _full_batch()

    return ConvexCase(
        "equality-and-inequality",
        "QP, one equality and one active inequality",
        build,
        0.3,
        _t([0.2, 0.8]),
        {"sum": _t([-0.8]), "cap": _t([2.6])},
    )


def _badly_scaled() -> ConvexCase:
    """min ½‖θ − a‖² s.t. 10·θ₁ = 5 and 0.1·(θ₂ + θ₃) = 0.1: two equalities whose scales
    differ by 100 (KKT: θ = a − Aᵀμ, μ = (AAᵀ)⁻¹(Aa − b))."""
    a = _t([1.0, 2.0, -1.0])
    g = _t([[10.0, 0.0, 0.0], [0.0, 0.1, 0.1]])
    b = _t([5.0, 0.1])
    mu = torch.linalg.solve(g @ g.T, g @ a - b)

    def evaluate(model, batch):
        x = model()
        return {"objective": 0.5 * ((x - a) ** 2).sum(), "eq": g @ x}

    def build():
        return (
            Problem(evaluate, [Equality("eq", 2, rhs=b)]),
            Parameters(torch.zeros(3)),
            _full_batch(),
        )

    return ConvexCase(
        "badly-scaled", "two equalities scaled 10 and 0.1", build, 0.5, a - g.T @ mu, {"eq": mu}
    )


def _logistic_rate() -> ConvexCase:
    """A logistic regression whose mean predicted probability is prescribed (an equality,
    like a positive-rate constraint); the KKT point is found by Newton's method on
    ∇f + μ∇h = 0, h = 0 (f is strictly convex: ridge term)."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(200, 3, generator=gen, dtype=F64)
    y = (x @ _t([1.0, -2.0, 0.5]) + 0.3 * torch.randn(200, generator=gen, dtype=F64) > 0).to(F64)
    target = 0.35

    def terms(w: Tensor) -> tuple[Tensor, Tensor]:
        logits = x @ w[:3] + w[3]
        loss = nn.functional.binary_cross_entropy_with_logits(logits, y) + 0.05 * (w**2).sum()
        return loss, torch.sigmoid(logits).mean()

    def kkt(z: Tensor) -> Tensor:
        w, mu = z[:4], z[4]
        loss, rate = terms(w)
        lagrangian = loss + mu * (rate - target)
        (grad,) = torch.autograd.grad(lagrangian, w, create_graph=True)
        return torch.cat([grad, (rate - target).reshape(1)])

    z = torch.zeros(5, dtype=F64)
    for _ in range(50):
        jac = torch.autograd.functional.jacobian(kkt, z.requires_grad_())
        z = (z - torch.linalg.solve(jac, kkt(z))).detach()
    w_star, mu_star = z[:4], z[4:]

    def evaluate(model, batch):
        loss, rate = terms(model())
        return {"objective": loss, "rate": rate}

    def build():
        return (
            Problem(evaluate, [Equality("rate", rhs=target)]),
            Parameters(torch.zeros(4)),
            _full_batch(),
        )

    return ConvexCase(
        "logistic-rate",
        "logistic regression with a prescribed mean prediction",
        build,
        2.0,
        w_star,
        {"rate": mu_star},
    )


def convergence_cases(names: Sequence[str] | None = None) -> list[ConvexCase]:
    """The suite (10 cases), or the named ones."""
    cases = [
        _qp_dense(),
        _qp_pointwise(None),
        _qp_pointwise(10),
        _min_norm(),
        _max_entropy(),
        _nonconvex_circle(),
        _qcqp_pointwise(),
        _mixed(),
        _badly_scaled(),
        _logistic_rate(),
    ]
    if names is None:
        return cases
    by_name = {case.name: case for case in cases}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise KeyError(f"unknown convergence case(s) {unknown}; known: {sorted(by_name)}")
    return [by_name[name] for name in names]
