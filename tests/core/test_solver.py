"""The solver loop: per-constraint dual learning rates, multiplier ``init``, K primal steps
per dual step, simultaneous vs alternating evaluation, forward-pass counts, ``fit`` counters
and callbacks. Each expectation is a hand computation on a problem whose values are known."""

from __future__ import annotations

import pytest
import torch

import eclearn as ecl

from .conftest import F64, Vector, assert_close, full_batch, sgd_solver, t64


def constant_problem(pointwise_lr: float | None = None, c_lr: float | None = 0.3):
    """Constraint values that do not depend on θ (the primal lr is 0 anyway): one step of
    the dual optimizer then reads off exactly ``lr × violation``."""

    def evaluate(model, batch):
        zero = 0.0 * model().sum()  # keeps the graph connected to the parameters
        idx = batch["index"]
        return {
            "objective": 0.5 * model().pow(2).sum(),
            "a": zero + 1.0,
            "b": zero + t64([2.0, -1.0]),
            "c": zero + 0.5,
            "p": zero + (idx + 1).to(F64),
        }

    constraints = [
        ecl.Equality("a"),
        ecl.Equality("b", 2),
        ecl.Equality("c", lr=c_lr),
        ecl.Equality("p", pointwise=True, num_samples=5, lr=pointwise_lr),
    ]
    return ecl.Problem(evaluate, constraints)


BATCH = [{"index": torch.tensor([0, 3, 4])}]


def test_per_constraint_dual_learning_rates_take_effect():
    # "default" for a, the mapping for b and p, and c's own lr= wins over the mapping
    dual = ecl.dual.SGD({"default": 0.1, "b": 0.01, "c": 5.0, "p": 0.2})
    solver = sgd_solver(constant_problem(), Vector([1.0]), lr=0.0, dual=dual)
    solver.fit(BATCH, max_steps=1)
    mult = solver.multipliers
    assert_close(mult["a"], t64([0.1]))
    assert_close(mult["b"], t64([0.02, -0.01]))
    assert_close(mult["c"], t64([0.3 * 0.5]))
    assert_close(mult["p"], t64([0.2 * 1, 0, 0, 0.2 * 4, 0.2 * 5]))


def test_constraint_lr_overrides_a_plain_dual_lr_and_applies_to_pointwise_tables():
    solver = sgd_solver(
        constant_problem(pointwise_lr=1.5), Vector([1.0]), lr=0.0, dual=ecl.dual.SGD(0.1)
    )
    solver.fit(BATCH, max_steps=2)
    mult = solver.multipliers
    assert_close(mult["a"], t64([0.2]))
    assert_close(mult["b"], t64([0.4, -0.2]))
    assert_close(mult["c"], t64([2 * 0.3 * 0.5]))
    assert_close(mult["p"], t64([3.0, 0, 0, 12.0, 15.0]))


def test_per_constraint_lrs_with_adam():
    """Adam's first step is lr·g/(|g| + ε) per entry, so each entry moves by its own lr."""
    dual = ecl.dual.Adam({"default": 0.1, "b": 0.01, "p": 0.2}, eps=1e-8)
    solver = sgd_solver(constant_problem(), Vector([1.0]), lr=0.0, dual=dual)
    solver.fit(BATCH, max_steps=1)
    mult = solver.multipliers

    def step(lr, g):
        g = t64(g)
        return lr * g / (g.abs() + 1e-8)

    # Adam's moments are float32 for float64 multipliers: agreement to float32 precision
    assert_close(mult["a"], step(0.1, [1.0]), atol=1e-8)
    assert_close(mult["b"], step(0.01, [2.0, -1.0]), atol=1e-8)
    assert_close(mult["c"], step(0.3, [0.5]), atol=1e-8)
    expected = torch.cat([step(0.2, [1.0]), t64([0, 0]), step(0.2, [4.0, 5.0])])
    assert_close(mult["p"], expected, atol=1e-8)


def test_multiplier_init_values_are_used():
    """init fills the multipliers, enters the first primal step and the first Lagrangian."""
    a = t64([1.0, -1.0])

    def evaluate(model, batch):
        theta = model()
        return {
            "objective": 0.5 * ((theta - a) ** 2).sum(),
            "e": theta * t64([1.0, 2.0]),  # ∂e/∂θ = diag(1, 2)
            "i": theta.sum(),
            "p": theta[batch["index"]],
        }

    problem = ecl.Problem(
        evaluate,
        [
            ecl.Equality("e", 2, rhs=[0.5, 0.5], init=[0.5, -2.0]),
            ecl.Inequality("i", bound=1.0, init=0.7),
            ecl.Equality("p", pointwise=True, num_samples=4, init=0.25),
        ],
    )
    theta0 = t64([0.2, 0.4])
    model = Vector(theta0)
    solver = sgd_solver(problem, model, lr=0.1, dual=ecl.dual.SGD(0.0))
    before = solver.multipliers
    assert_close(before["e"], t64([0.5, -2.0]))
    assert_close(before["i"], t64([0.7]))
    assert_close(before["p"], torch.full((4,), 0.25, dtype=F64))
    batch = {"index": torch.tensor([1, 0])}
    solver.fit([batch], max_steps=1)
    # L = f + μ_e·(e − ½) + λ(Σθ − 1) + ½ Σ_{i∈{1,0}} 0.25 θ_i
    f = 0.5 * ((theta0 - a) ** 2).sum()
    lagrangian = (
        f
        + (t64([0.5, -2.0]) * (theta0 * t64([1.0, 2.0]) - 0.5)).sum()
        + 0.7 * (theta0.sum() - 1.0)
        + 0.25 * theta0.sum() / 2
    )
    assert solver.history["lagrangian"][0] == pytest.approx(lagrangian.item(), abs=1e-12)
    grad = (theta0 - a) + t64([0.5, -2.0]) * t64([1.0, 2.0]) + 0.7 + 0.25 / 2
    assert_close(model.theta.detach(), theta0 - 0.1 * grad)
    after = solver.multipliers  # dual lr 0: unchanged
    for name in before:
        assert_close(after[name], before[name], atol=0)


def test_primal_steps_k_takes_one_dual_step_every_k_steps():
    solver = sgd_solver(
        constant_problem(c_lr=None), Vector([1.0]), lr=0.0, dual=ecl.dual.SGD(0.1), primal_steps=3
    )
    solver.fit(BATCH, max_steps=10)
    assert solver.dual_steps == 3
    expected = [0.0, 0.0, 0.1, 0.1, 0.1, 0.2, 0.2, 0.2, 0.3, 0.3]
    assert solver.history["multiplier/a"] == pytest.approx(expected, abs=1e-12)
    assert solver.history["multiplier/c"] == pytest.approx([0.5 * e for e in expected], abs=1e-12)


class Counting:
    """An ``evaluate`` that counts its calls and records the ``exact`` flag it gets."""

    def __init__(self) -> None:
        self.calls = 0
        self.exact: list[bool] = []

    def __call__(self, model, batch, exact: bool = True):
        self.calls += 1
        self.exact.append(exact)
        theta = model()
        return {"objective": 0.5 * (theta - 3.0).pow(2).sum(), "h": theta.sum()}


@pytest.mark.parametrize(
    ("mode", "k", "formulation", "per_10_steps"),
    [
        ("simultaneous", 1, None, 10),
        ("simultaneous", 3, None, 10),
        ("alternating", 1, None, 20),
        ("alternating", 2, None, 15),
        ("alternating", 1, "penalty", 10),  # no dual steps, nothing to re-evaluate
    ],
)
def test_evaluate_and_forward_counts(mode, k, formulation, per_10_steps):
    fn = Counting()
    problem = ecl.Problem(fn, [ecl.Equality("h", rhs=1.0)])
    model = Vector([0.0])
    form = ecl.Penalty(1.0) if formulation == "penalty" else None
    solver = sgd_solver(problem, model, lr=0.1, mode=mode, primal_steps=k, formulation=form)
    solver.fit(full_batch(), max_steps=10, warn=False)
    assert fn.calls == per_10_steps
    # one forward pass per evaluate: the solver never re-runs the model behind its back
    assert model.calls == per_10_steps
    assert fn.exact == [False] * per_10_steps  # training uses the surrogates


@pytest.mark.parametrize(("mode", "seen"), [("simultaneous", 1.0), ("alternating", 2.0)])
def test_alternating_dual_step_uses_the_post_step_violation(mode, seen):
    """min ½(θ − 3)² s.t. θ = 0 from θ₀ = 1, primal lr ½: θ₁ = 1 − ½(1 − 3) = 2. The
    simultaneous dual step reads h(θ₀) = 1, the alternating one h(θ₁) = 2."""
    fn = Counting()
    problem = ecl.Problem(fn, [ecl.Equality("h")])
    model = Vector([1.0])
    solver = sgd_solver(problem, model, lr=0.5, dual=ecl.dual.SGD(0.1), mode=mode)
    solver.fit(full_batch(), max_steps=1)
    assert model.theta.item() == 2.0
    assert solver.multipliers["h"].item() == pytest.approx(0.1 * seen, abs=1e-15)
    assert solver.history["value/h"][0] == seen


# Guards a fixed core bug; before the fix: the simultaneous dual step and the history read the
# constraint values after optimizer.step(); values that alias a parameter (evaluate returning
# model.theta or a view of it) have been updated in place by then
def test_simultaneous_dual_step_uses_pre_step_values_that_alias_parameters():
    class Raw(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.theta = torch.nn.Parameter(t64([1.0]))

    def evaluate(model, batch):  # the constraint is on the parameter itself
        return {"objective": 0.5 * (model.theta - 3.0).pow(2).sum(), "h": model.theta}

    problem = ecl.Problem(evaluate, [ecl.Equality("h")])
    solver = sgd_solver(problem, Raw(), lr=0.5, dual=ecl.dual.SGD(0.1))
    solver.fit(full_batch(), max_steps=1)
    assert solver.history["value/h"][0] == 1.0
    assert solver.multipliers["h"].item() == pytest.approx(0.1, abs=1e-15)


def test_epochs_count_further_epochs_and_max_steps_further_steps():
    batches = [{"x": torch.zeros(1)}] * 4
    fn = Counting()
    problem = ecl.Problem(fn, [ecl.Equality("h", rhs=1.0)])
    solver = sgd_solver(problem, Vector([0.0]), lr=0.1)
    r1 = solver.fit(batches, epochs=1)
    assert (r1.steps, r1.epochs, r1.stop_reason) == (4, 1, "epochs")
    r2 = solver.fit(batches, epochs=2)
    assert (r2.steps, r2.epochs) == (12, 3)
    r3 = solver.fit(batches, max_steps=5)
    assert (r3.steps, r3.epochs, r3.stop_reason) == (17, 4, "max_steps")
    r4 = solver.fit(batches, max_steps=0)
    assert r4.steps == 17
    epochs = solver.history["epoch"]
    assert list(solver.history["step"]) == list(range(1, 18))
    assert list(epochs) == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4 + [4]
    # whichever ends first
    r5 = solver.fit(batches, epochs=5, max_steps=2)
    assert (r5.steps, r5.stop_reason) == (19, "max_steps")


def test_callbacks_and_request_stop():
    events: list[str] = []

    class Hooks(ecl.Callback):
        def on_fit_start(self, solver):
            events.append("start")

        def on_epoch_end(self, solver):
            events.append(f"epoch{solver.epoch}")

        def on_fit_end(self, solver, result):
            events.append(f"end{result.steps}")

    def stop_at_5(solver):
        if solver.step == 5:
            solver.request_stop("enough")

    problem = ecl.Problem(Counting(), [ecl.Equality("h", rhs=1.0)])
    solver = sgd_solver(problem, Vector([0.0]), lr=0.1)
    result = solver.fit([{"x": torch.zeros(1)}] * 2, epochs=10, callbacks=[Hooks(), stop_at_5])
    assert result.stop_reason == "enough" and result.stopped_early
    assert result.steps == 5
    assert events == ["start", "epoch1", "epoch2", "end5"]
    assert solver.latest()["step"] == 5.0


def test_stopping_rule_stops_a_solved_problem():
    problem = ecl.Problem(Counting(), [ecl.Equality("h", rhs=1.0)])
    solver = sgd_solver(problem, Vector([0.0]), lr=0.5, dual=ecl.dual.SGD(0.5))
    rule = ecl.StoppingRule(window=10, lagrangian_rtol=1e-6, check_every=5)
    result = solver.fit(full_batch(), max_steps=500, stopping=rule)
    assert result.stop_reason == "converged"
    assert 20 <= result.steps < 500
    assert abs(solver.latest()["violation/h"]) <= 1e-3


def two_kinds_problem():
    def evaluate(model, batch):
        theta = model()
        residual = batch["x"] @ theta - batch["y"]
        return {
            "objective": residual.pow(2).mean(),
            "h": theta.sum(),
            "g": theta[:1] * 1.0,
            "pw": theta[batch["index"]] * 1.0,
        }

    return ecl.Problem(
        evaluate,
        [
            ecl.Equality("h", rhs=1.0),
            ecl.Inequality("g"),
            ecl.Equality("pw", pointwise=True, num_samples=2),
        ],
    )


X4 = t64([[1.0, 0.0], [0.5, 2.0], [-1.0, 1.0], [0.0, 3.0]])
Y4 = t64([1.0, -1.0, 0.5, 2.0])
UNEVEN = [{"x": X4[:1], "y": Y4[:1], "index": torch.tensor([0])}]


def test_set_multipliers_by_name():
    solver = sgd_solver(two_kinds_problem(), Vector([0.2, -0.3]), lr=0.1)
    solver.set_multipliers({"h": t64([-1.5]), "g": t64([-2.0]), "pw": t64([0.25, -0.75])})
    mult = solver.multipliers
    assert mult["h"].item() == -1.5  # equality: free
    assert mult["g"].item() == 0.0  # inequality: projected
    assert mult["pw"].tolist() == [0.25, -0.75]
    with pytest.raises(KeyError, match=r"no constraint 'nope'; declared: \['g', 'h', 'pw'\]"):
        solver.set_multipliers({"nope": t64([1.0])})
    solver.fit(UNEVEN, max_steps=1)  # the table summaries start from the new values
    assert solver.history["multiplier/pw/mean"][0] == pytest.approx(
        solver.multipliers["pw"].mean().item(), abs=1e-15
    )


# Guards a fixed core bug; before the fix: set_multipliers projects the dense vector but not the
# pointwise tables, so a pointwise inequality can be given negative multipliers
def test_set_multipliers_projects_pointwise_inequalities():
    def evaluate(model, batch):
        return {"objective": model().sum(), "pw": model()[batch["index"]]}

    problem = ecl.Problem(evaluate, [ecl.Inequality("pw", pointwise=True, num_samples=3)])
    solver = sgd_solver(problem, Vector([0.0, 0.0, 0.0]), lr=0.1)
    solver.set_multipliers({"pw": t64([1.0, -2.0, 3.0])})
    assert solver.multipliers["pw"].tolist() == [1.0, 0.0, 3.0]


def test_lagrangian_is_the_batch_size_weighted_primal_loss():
    theta = t64([0.2, -0.3])
    model = Vector(theta)
    solver = sgd_solver(two_kinds_problem(), model, lr=0.1)
    solver.set_multipliers({"h": t64([0.5]), "g": t64([2.0]), "pw": t64([1.0, -3.0])})
    batches = [
        {"x": X4[:1], "y": Y4[:1], "index": torch.tensor([0])},
        {"x": X4[1:], "y": Y4[1:], "index": torch.tensor([1, 0])},
    ]
    # batch 1 (1 row):  obj₁ + ½(Σθ − 1) + 2θ₀ + (1·θ₀)/1
    # batch 2 (3 rows): obj₂ + ½(Σθ − 1) + 2θ₀ + (−3·θ₁ + 1·θ₀)/2
    obj1 = (X4[:1] @ theta - Y4[:1]).pow(2).mean()
    obj2 = (X4[1:] @ theta - Y4[1:]).pow(2).mean()
    common = 0.5 * (theta.sum() - 1.0) + 2.0 * theta[0]
    l1 = obj1 + common + theta[0]
    l2 = obj2 + common + (-3.0 * theta[1] + theta[0]) / 2
    expected = (1 * l1 + 3 * l2) / 4
    model.train()
    assert solver.lagrangian(batches) == pytest.approx(expected.item(), abs=1e-14)
    assert model.training and solver.step == 0 and torch.equal(model.theta.detach(), theta)
    with pytest.raises(ValueError, match="produced no batches"):
        solver.lagrangian([])
