"""Convex problems with closed-form KKT points, solved to 1e-4 in parameters AND multipliers.

Sign convention (DESIGN.md): ``L = f + λᵀ(ĝ − c) + μᵀ(ĥ − b)``, λ ≥ 0, μ free. Every
formulation and every dual optimizer is shown to converge on at least one of these.
"""

from __future__ import annotations

import pytest
import torch

import eclearn as ecl

from .conftest import (
    A_EQ,
    A_VEC,
    B_EQ,
    F64,
    Vector,
    active_inactive,
    assert_close,
    full_batch,
    mixed,
    sgd_solver,
    t64,
    vector_equality,
)

TOL = 1e-4


def assert_kkt(q, model, multipliers, tol=TOL):
    assert_close(model.theta.detach(), q.theta, atol=tol)
    for name, expected in q.multipliers.items():
        assert_close(multipliers[name], expected, atol=tol)


@pytest.mark.parametrize(
    "dual",
    [
        pytest.param(lambda: ecl.dual.SGD(lr=0.2), id="SGD"),
        pytest.param(lambda: ecl.dual.NuPI(lr=0.2, kp=0.5, ki=1.0), id="NuPI"),
        # Adam's steps are normalised, so it needs a small lr and more steps; on this
        # deterministic problem the second-moment memory makes the steps shrink and it
        # settles (7e-7 after 400 steps at lr=1e-2).
        pytest.param(lambda: ecl.dual.Adam(lr=1e-2), id="Adam"),
    ],
)
def test_vector_equality_kkt_point(dual):
    q = vector_equality()
    model = q.model()
    solver = sgd_solver(q.problem, model, lr=0.7, dual=dual())
    steps = 400 if isinstance(solver.dual_optimizer, ecl.dual.Adam) else 150
    result = solver.fit(full_batch(), max_steps=steps)
    # the closed form θ* = a − Aᵀμ*, μ* = (AAᵀ)⁻¹(Aa − b) is a KKT point of
    # L = ½‖θ − a‖² + μᵀ(Aθ − b): stationary and feasible
    assert_close(q.theta - A_VEC + A_EQ.T @ q.multipliers["eq"], torch.zeros(4, dtype=F64))
    assert_close(A_EQ @ q.theta, B_EQ)
    assert result.multipliers["eq"].shape == (2,)
    assert_kkt(q, model, result.multipliers)
    assert_close(A_EQ @ model.theta.detach(), B_EQ, atol=TOL)
    assert result.steps == steps and result.stop_reason == "max_steps"


def test_sign_convention_multiplier_opposes_the_objective_pull():
    """min ½(θ − 3)² s.t. θ = 1: the objective pulls θ up, so with L = f + μ(θ − 1) the
    multiplier must be μ* = −f'(1) = 2 > 0 (it would be −2 under L = f − μ h)."""

    def evaluate(model, batch):
        theta = model()
        return {"objective": 0.5 * (theta - 3.0).pow(2).sum(), "h": theta}

    problem = ecl.Problem(evaluate, [ecl.Equality("h", rhs=1.0)])
    model = Vector([0.0])
    result = sgd_solver(problem, model, lr=0.7, dual=ecl.dual.SGD(0.5)).fit(
        full_batch(), max_steps=120
    )
    assert_close(result.multipliers["h"], t64([2.0]), atol=TOL)
    assert_close(model.theta.detach(), t64([1.0]), atol=TOL)


@pytest.mark.parametrize(
    "formulation",
    [
        pytest.param(lambda: (ecl.Lagrangian(), ecl.dual.SGD(0.5), 0.7), id="Lagrangian"),
        # method of multipliers: dual step ρ on max(v, −λ/ρ)
        pytest.param(
            lambda: (ecl.AugmentedLagrangian(rho=1.0), ecl.dual.SGD(1.0), 0.5), id="AugLag"
        ),
    ],
)
def test_active_and_inactive_inequalities(formulation):
    form, dual, lr = formulation()
    q = active_inactive(inactive_init=1.0)
    model = q.model()
    solver = sgd_solver(q.problem, model, lr=lr, dual=dual, formulation=form)
    result = solver.fit(full_batch(), max_steps=150)
    assert_kkt(q, model, result.multipliers)
    assert result.multipliers["active"].item() > 1.0  # KKT value 1.5, strictly positive
    # the inactive multiplier started at 1 and is *exactly* zero: projected, not decayed
    assert result.multipliers["inactive"].item() == 0.0
    inactive = solver.history["multiplier/inactive"]
    assert (inactive >= 0).all()
    first_zero = int((inactive == 0).argmax())
    assert (
        first_zero > 0 and (inactive[:first_zero] > 0).all() and (inactive[first_zero:] == 0).all()
    )
    assert (solver.history["multiplier/active"] >= 0).all()


@pytest.mark.parametrize(
    "setup",
    [
        pytest.param(lambda: ({}, ecl.dual.SGD(0.25)), id="simultaneous"),
        pytest.param(lambda: ({"mode": "alternating"}, ecl.dual.SGD(0.25)), id="alternating"),
        pytest.param(
            lambda: ({"formulation": ecl.AugmentedLagrangian(1.0)}, ecl.dual.SGD(0.5)),
            id="AugLag",
        ),
        pytest.param(lambda: ({}, ecl.dual.NuPI(0.25, kp=0.2, ki=1.0)), id="NuPI"),
    ],
)
def test_equality_and_inequality_together(setup):
    kwargs, dual = setup()
    q = mixed()
    model = q.model()
    result = sgd_solver(q.problem, model, lr=0.5 if kwargs else 0.7, dual=dual, **kwargs).fit(
        full_batch(), max_steps=150
    )
    assert_kkt(q, model, result.multipliers)
    assert result.multipliers["sum"].item() < 0  # equality multipliers are free


def test_primal_steps_between_dual_steps_still_converge():
    q = mixed()
    model = q.model()
    solver = sgd_solver(q.problem, model, lr=0.7, dual=ecl.dual.SGD(0.25), primal_steps=3)
    result = solver.fit(full_batch(), max_steps=300)
    assert solver.dual_steps == 100
    assert_kkt(q, model, result.multipliers)


# --- pointwise equality constraints --------------------------------------------------------
N_POINTS = 6
A_PTS = t64([1.0, -0.5, 2.0, 0.0, 0.3, -1.2])
C_PTS = t64([0.5, 0.5, -1.0, 1.5, 0.0, 0.2])


def test_pointwise_full_batch_with_coupled_objective():
    """f(θ) = ½‖θ − a‖² + ½κ(Σθ)², h_i = θ_i − c_i = 0 for every i.

    The pointwise term is the batch mean (1/N) Σ μ_i h_i, so stationarity reads
    ∂_i f(c) + μ_i / N = 0, i.e. μ_i* = −N (c_i − a_i + κ Σ c): N times the multipliers of
    the same constraints written as a sum.
    """
    kappa = 0.5

    def evaluate(model, batch):
        theta = model()
        idx = batch["index"]
        objective = 0.5 * ((theta - A_PTS) ** 2).sum() + 0.5 * kappa * theta.sum() ** 2
        return {"objective": objective, "fit": theta[idx] - C_PTS[idx]}

    problem = ecl.Problem(evaluate, [ecl.Equality("fit", pointwise=True, num_samples=N_POINTS)])
    model = Vector(torch.zeros(N_POINTS))
    solver = sgd_solver(problem, model, lr=0.3, dual=ecl.dual.SGD(0.5 * N_POINTS))
    batch = [{"index": torch.arange(N_POINTS)}]
    result = solver.fit(batch, max_steps=250)
    sum_form = -(C_PTS - A_PTS + kappa * C_PTS.sum())
    assert result.multipliers["fit"].shape == (N_POINTS,)
    assert_close(model.theta.detach(), C_PTS, atol=TOL)
    assert_close(result.multipliers["fit"], N_POINTS * sum_form, atol=TOL)


@pytest.mark.parametrize("batch_size", [None, 4], ids=["full-batch", "mini-batch"])
def test_pointwise_minibatch_and_full_batch_share_the_kkt_point(batch_size, seeded):
    """Per-batch objective N·mean_S ½(θ_i − a_i)² + ½κ(Σ_S (θ_i − c_i))² (an unbiased estimate
    of ½‖θ − a‖²; the coupling term vanishes at θ = c for every batch S, so the KKT point
    is a fixed point of every mini-batch step): μ_i* = N (a_i − c_i) for any batch size."""
    n, kappa = 12, 0.1
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(n, generator=gen, dtype=F64)
    c = torch.randn(n, generator=gen, dtype=F64)

    def evaluate(model, batch):
        theta = model()
        idx = batch["index"]
        residual = theta[idx] - batch["c"]
        objective = n * (0.5 * (theta[idx] - batch["a"]) ** 2).mean()
        objective = objective + 0.5 * kappa * residual.sum() ** 2
        return {"objective": objective, "fit": residual}

    problem = ecl.Problem(evaluate, [ecl.Equality("fit", pointwise=True, num_samples=n)])
    batches = ecl.Batches({"a": a, "c": c}, batch_size=batch_size, shuffle=True)
    model = Vector(torch.zeros(n))
    # the same per-row dynamics for any batch size B: primal lr ∝ B/N, dual lr ∝ B
    rows = n if batch_size is None else batch_size
    solver = sgd_solver(problem, model, lr=0.5 * rows / n, dual=ecl.dual.SGD(0.5 * rows))
    per_row = 120  # dual updates of each row
    result = solver.fit(batches, epochs=per_row)
    assert result.epochs == per_row and result.steps == per_row * len(batches)
    assert_close(model.theta.detach(), c, atol=TOL)
    assert_close(result.multipliers["fit"], n * (a - c), atol=TOL)


# --- feasibility problems (no objective) ---------------------------------------------------
def test_feasibility_equality_reaches_min_norm_solution():
    """No objective, Aθ = b from θ₀ = 0 with the augmented Lagrangian: gradient steps stay
    in the row space of A, so θ → Aᵀ(AAᵀ)⁻¹b, and μ* = 0 (∇f = 0, A has full row rank)."""

    def evaluate(model, batch):
        return {"eq": A_EQ @ model()}

    problem = ecl.Problem(evaluate, [ecl.Equality("eq", 2, rhs=B_EQ)])
    model = Vector(torch.zeros(4))
    solver = sgd_solver(
        problem, model, lr=0.2, dual=ecl.dual.SGD(0.5), formulation=ecl.AugmentedLagrangian(1.0)
    )
    result = solver.fit(full_batch(), max_steps=200)
    min_norm = A_EQ.T @ torch.linalg.solve(A_EQ @ A_EQ.T, B_EQ)
    assert_close(model.theta.detach(), min_norm, atol=TOL)
    assert_close(result.multipliers["eq"], torch.zeros(2, dtype=F64), atol=TOL)
    assert torch.isnan(torch.as_tensor(solver.history["objective"])).all()


def test_feasibility_inequality_with_lagrangian_ends_feasible_with_zero_multiplier():
    """No objective, θ ≤ 1 from θ₀ = 3: λ grows until θ is pushed inside, then is projected
    back to exactly 0 and θ stops."""

    def evaluate(model, batch):
        return {"cap": model()}

    problem = ecl.Problem(evaluate, [ecl.Inequality("cap", bound=1.0)])
    model = Vector([3.0])
    result = sgd_solver(problem, model, lr=0.5, dual=ecl.dual.SGD(0.5)).fit(
        full_batch(), max_steps=60
    )
    assert model.theta.item() <= 1.0
    assert result.multipliers["cap"].item() == 0.0
    lagrangian = result.history["lagrangian"]
    assert lagrangian[-1] == 0.0  # λ·(θ − 1) with λ = 0


# --- penalty formulation: the penalised optimum, not the constrained one -------------------
def test_penalty_power2_gives_the_penalised_optimum():
    """½‖θ − a‖² + Σ_j w_j (A_jθ − b_j)²  →  (I + 2AᵀWA) θ = a + 2AᵀWb; multipliers frozen."""
    w = t64([1.0, 0.5])
    q = vector_equality(init=[0.3, -0.7])
    model = q.model()
    solver = sgd_solver(
        q.problem,
        model,
        lr=0.1,
        dual=ecl.dual.SGD(1.0),
        formulation=ecl.Penalty({"eq": w.tolist()}, power=2),
    )
    result = solver.fit(full_batch(), max_steps=250, warn=False)
    W = torch.diag(w)
    expected = torch.linalg.solve(
        torch.eye(4, dtype=F64) + 2 * A_EQ.T @ W @ A_EQ, A_VEC + 2 * A_EQ.T @ W @ B_EQ
    )
    assert_close(model.theta.detach(), expected, atol=TOL)
    assert (model.theta.detach() - q.theta).abs().max() > 0.1  # not the constrained optimum
    assert (A_EQ @ model.theta.detach() - B_EQ).abs().max() > 0.1  # still violated
    assert_close(result.multipliers["eq"], t64([0.3, -0.7]), atol=0)
    assert solver.dual_steps == 0


def test_penalty_power1_with_default_weight_and_an_inequality():
    """½(θ₁ − 2)² + w|θ₁ − 0.5| → θ₁ = 2 − w (soft threshold, w < 1.5);
    ½(θ₂ + 1)² + w'[θ₂ − (−2)]₊ → θ₂ = −1 − w' (w' < 1)."""
    a = t64([2.0, -1.0])

    def evaluate(model, batch):
        theta = model()
        return {"objective": 0.5 * ((theta - a) ** 2).sum(), "eq": theta[0], "ub": theta[1]}

    problem = ecl.Problem(evaluate, [ecl.Equality("eq", rhs=0.5), ecl.Inequality("ub", bound=-2.0)])
    model = Vector([0.0, 0.0])
    penalty = ecl.Penalty({"default": 0.5, "ub": 0.25}, power=1)
    sgd_solver(problem, model, lr=0.5, formulation=penalty).fit(
        full_batch(), max_steps=60, warn=False
    )
    assert_close(model.theta.detach(), t64([1.5, -1.25]), atol=TOL)
