"""Invalid declarations, arguments and values fail with messages that name the constraint,
the step and the fix."""

from __future__ import annotations

import math

import pytest
import torch

import eclearn as ecl

from .conftest import Vector, full_batch, sgd_solver, t64


def faulty(step: int, **bad):
    """An ``evaluate`` returning sane values, except ``bad`` (name → value) at call ``step``."""
    calls = {"n": 0}

    def evaluate(model, batch):
        calls["n"] += 1
        theta = model()
        out = {
            "objective": 0.5 * theta.pow(2).sum(),
            "eq": theta[:2] * 1.0,
            # per-sample values that do not index θ by the ids (bad ids must reach the core)
            "pw": theta[: len(batch["index"])] * 1.0,
        }
        if calls["n"] == step:
            out.update({k: (v(theta) if callable(v) else v) for k, v in bad.items()})
        return out

    return ecl.Problem(
        evaluate,
        [ecl.Equality("eq", 2), ecl.Equality("pw", pointwise=True, num_samples=5)],
    )


BATCH = [{"index": torch.tensor([0, 2, 4])}]


def fit(problem, batches=BATCH, steps=4, **kwargs):
    return sgd_solver(problem, Vector([1.0] * 5), lr=0.1, **kwargs).fit(batches, max_steps=steps)


# --- values returned by evaluate ----------------------------------------------------------
@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (
            {"eq": lambda th: th[:3] * 1.0},
            r"step 3: constraint 'eq' value has shape \(3,\).*size=2",
        ),
        (
            {"eq": lambda th: th[:4].reshape(2, 2)},
            r"step 3: constraint 'eq' value has shape \(2, 2\)",
        ),
        (
            {"pw": lambda th: th[:3].reshape(3, 1).expand(3, 2)},
            r"step 3: pointwise constraint 'pw' returned shape \(3, 2\); expected \[3\] or \[3, 1\]",
        ),
        (
            {"pw": lambda th: th[:2] * 1.0},
            r"step 3: pointwise constraint 'pw' returned shape \(2,\)",
        ),
        ({"objective": lambda th: th[:2] * 1.0}, r"step 3: 'objective' must be a scalar tensor"),
        (
            {"eq": [1.0, 2.0]},
            r"step 3: constraint 'eq' must be a tensor, an ecl.Ratio or an ecl.Proxy, got list",
        ),
        (
            {"extra": lambda th: th.sum()},
            r"step 3: evaluate returned \['extra'\], which no constraint declares",
        ),
    ],
    ids=[
        "too-long",
        "matrix",
        "pointwise-width",
        "pointwise-rows",
        "objective",
        "list",
        "undeclared",
    ],
)
def test_bad_values_name_the_constraint_and_the_step(bad, match):
    with pytest.raises(ecl.ProblemError, match=match):
        fit(faulty(3, **bad))


def test_missing_declared_constraint():
    def evaluate(model, batch):
        return {"objective": model().sum()}

    problem = ecl.Problem(evaluate, [ecl.Equality("eq")])
    with pytest.raises(ecl.ProblemError, match=r"step 1: evaluate did not return .*\['eq'\]"):
        fit(problem, full_batch())


def test_evaluate_must_return_a_dict():
    problem = ecl.Problem(lambda model, batch: model().sum())
    with pytest.raises(ecl.ProblemError, match="step 1: evaluate must return a dict of tensors"):
        fit(problem, full_batch())


@pytest.mark.parametrize(
    ("term", "value"),
    [
        ("objective", lambda th: th.sum() * math.nan),
        ("objective", lambda th: th.sum() + math.inf),
        ("eq", lambda th: th[:2] * t64([1.0, math.inf])),
        ("eq", lambda th: th[:2] * math.nan),
        ("pw", lambda th: th[:3] * t64([1.0, math.nan, 1.0])),
    ],
)
def test_nan_or_inf_names_the_term_and_the_step(term, value):
    with pytest.raises(ecl.ProblemError, match=rf"step 3: '{term}' has NaN or Inf values"):
        fit(faulty(3, **{term: value}))


# Guards a fixed core bug; before the fix: in mode='alternating' the re-evaluation after the primal
# step feeds the dual step unchecked; a NaN there poisons the multipliers and the history and is
# only reported a step later as 'multipliers' (or, for a pointwise table, as a bare NaN
# Lagrangian), never naming the term and the step
@pytest.mark.parametrize("term", ["eq", "pw"])
def test_nan_in_the_alternating_re_evaluation_names_the_term_and_the_step(term):
    problem = faulty(2, **{term: lambda th: th[: 2 if term == "eq" else 3] * math.nan})
    with pytest.raises(ecl.ProblemError, match=rf"step 1: '{term}' has NaN or Inf values"):
        fit(problem, mode="alternating")


# --- pointwise indices ----------------------------------------------------------------------
def test_missing_index_for_a_pointwise_constraint():
    with pytest.raises(
        ecl.ProblemError,
        match=r"step 1: pointwise constraint 'pw' needs the sample ids in batch\['index'\]",
    ):
        fit(faulty(0), [{"x": torch.zeros(3)}])
    with pytest.raises(
        ecl.ProblemError, match=r"evaluate: pointwise constraint 'pw' needs the sample ids"
    ):
        ecl.evaluate(faulty(0), Vector([1.0] * 5), [{"x": torch.zeros(3)}])


def test_missing_custom_index_key():
    def evaluate(model, batch):
        return {"objective": model().sum(), "ic": model()[batch["ic_ids"]]}

    problem = ecl.Problem(
        evaluate, [ecl.Equality("ic", pointwise=True, num_samples=5, index_key="ic_ids")]
    )
    with pytest.raises(
        ecl.ProblemError, match=r"batch\['ic_ids'\].*set index_key= on the constraint"
    ):
        fit(problem, [{"index": torch.tensor([0, 1])}])
    fit(problem, [{"ic_ids": torch.tensor([0, 1])}], steps=1)  # fine with the key


@pytest.mark.parametrize(
    ("index", "match"),
    [
        (
            [0, 5, 1],
            r"step 1: pointwise constraint 'pw' got sample id 5 in batch\['index'\], outside \[0, 5\)",
        ),
        ([-1, 2, 3], r"got sample id -1 .*outside \[0, 5\)"),
        ([0, 2, 0], r"step 1: batch\['index'\] repeats sample ids, so pointwise constraint 'pw'"),
    ],
    ids=["too-large", "negative", "repeated"],
)
def test_bad_sample_ids(index, match):
    with pytest.raises(ecl.ProblemError, match=match):
        fit(faulty(0), [{"index": torch.tensor(index)}])


def test_sample_ids_must_be_integers():
    with pytest.raises(
        ecl.ProblemError, match=r"must be a 1-D int64 tensor of sample ids, got torch.float32"
    ):
        fit(faulty(0), [{"index": torch.tensor([0.0, 1.0, 2.0])}])


# --- declarations -------------------------------------------------------------------------
def test_duplicate_constraint_names():
    with pytest.raises(ecl.ProblemError, match=r"duplicate constraint names \['a'\]"):
        ecl.Problem(lambda m, b: {}, [ecl.Equality("a"), ecl.Inequality("b"), ecl.Inequality("a")])


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: ecl.Inequality("g", init=-0.1), r"inequality 'g': init must be ≥ 0"),
        (lambda: ecl.Inequality("g", 2, init=[0.5, -1.0]), r"init must be ≥ 0 .*\[0.5, -1.0\]"),
        (lambda: ecl.Equality("objective"), "reserved names \\['extras', 'objective'\\]"),
        (lambda: ecl.Equality("1st"), "not allowed"),
        (lambda: ecl.Equality("h", 0), "size must be a positive int"),
        (lambda: ecl.Equality("h", pointwise=True), "pass num_samples="),
        (lambda: ecl.Equality("h", num_samples=3), "only meaningful with pointwise=True"),
        (lambda: ecl.Equality("h", 2, rhs=[1.0, 2.0, 3.0]), "rhs has 3 entries but size=2"),
        (lambda: ecl.Inequality("h", bound=math.inf), "bound must be finite"),
        (lambda: ecl.Equality("h", lr=-0.1), r"constraint 'h': lr must be a finite number ≥ 0"),
        (lambda: ecl.Equality("h", lr=math.nan), r"lr must be a finite number ≥ 0"),
        (lambda: ecl.Equality("h", tolerance=-1.0), "tolerance must be a finite number ≥ 0"),
        (lambda: ecl.Problem(lambda m, b: {}, ["h"]), "must be ecl.Equality or ecl.Inequality"),
    ],
)
def test_invalid_declarations(make, match):
    with pytest.raises(ecl.ProblemError, match=match):
        make()


def test_negative_equality_init_is_allowed():
    assert ecl.Equality("h", init=-2.0).init.tolist() == [-2.0]


# --- learning rates and solver arguments ----------------------------------------------------
@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: ecl.dual.SGD(-0.1), r"dual lr must be a finite number ≥ 0, got -0.1"),
        (lambda: ecl.dual.Adam(-1e-3), r"dual lr must be a finite number ≥ 0"),
        (lambda: ecl.dual.NuPI(-1.0), r"dual lr must be a finite number ≥ 0"),
        (lambda: ecl.dual.SGD(math.inf), r"dual lr must be a finite number ≥ 0, got inf"),
        (
            lambda: ecl.dual.SGD({"default": 0.1, "eq": -2.0}),
            r"dual lr for 'eq' must be a finite number ≥ 0",
        ),
        (lambda: ecl.AugmentedLagrangian(rho=0.0), "rho must be a finite positive number"),
        (lambda: ecl.Penalty(power=3), "power must be 1 or 2"),
    ],
)
def test_invalid_dual_settings(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_negative_primal_learning_rate():
    model = Vector([1.0])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.param_groups[0]["lr"] = -0.1  # torch checks at construction only
    with pytest.raises(
        ValueError, match=r"primal learning rate must be a finite number ≥ 0, got -0.1"
    ):
        ecl.PrimalDual(faulty(0), model, opt)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"mode": "sequential"}, ValueError, "mode must be 'simultaneous' or 'alternating'"),
        ({"primal_steps": 0}, ValueError, r"primal_steps must be an int ≥ 1"),
        (
            {"scheduler_interval": "batch"},
            ValueError,
            "scheduler_interval must be 'step' or 'epoch'",
        ),
        ({"grad_clip": 0.0}, ValueError, "grad_clip must be a finite positive number"),
        ({"dual_optimizer": "adam"}, TypeError, "dual_optimizer must be an eclearn.dual optimizer"),
    ],
)
def test_invalid_solver_arguments(kwargs, error, match):
    model = Vector([1.0])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(error, match=match):
        ecl.PrimalDual(faulty(0), model, opt, **kwargs)


def test_invalid_solver_positionals():
    model = Vector([1.0])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match=r"needs an ecl\.Problem"):
        ecl.PrimalDual(lambda m, b: {}, model, opt)
    with pytest.raises(TypeError, match=r"needs a torch nn\.Module"):
        ecl.PrimalDual(faulty(0), lambda x: x, opt)
    with pytest.raises(TypeError, match=r"must be a torch\.optim\.Optimizer"):
        ecl.PrimalDual(faulty(0), model, ecl.dual.SGD(0.1))


def test_penalty_weights_naming_an_unknown_constraint():
    model = Vector([1.0] * 5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(
        ecl.ProblemError,
        match=r"Penalty weights name \['nope'\], which the problem does not declare",
    ):
        ecl.PrimalDual(
            faulty(0), model, opt, formulation=ecl.Penalty({"eq": 1.0, "pw": 1.0, "nope": 2.0})
        )
    with pytest.raises(ecl.ProblemError, match=r"Penalty weights give no weight for \['pw'\]"):
        ecl.PrimalDual(faulty(0), model, opt, formulation=ecl.Penalty({"eq": 1.0}))
    with pytest.raises(
        ecl.ProblemError, match=r"Penalty weight for 'eq' must be ≥ 0 with 1 or 2 entries"
    ):
        ecl.PrimalDual(
            faulty(0), model, opt, formulation=ecl.Penalty({"eq": [1.0, -1.0], "default": 1.0})
        )


# Guards a fixed core bug; before the fix: a per-constraint dual lr mapping may name constraints the
# problem does not declare (a typo silently falls back to 'default'), unlike Penalty weights
def test_dual_lr_mapping_naming_an_unknown_constraint():
    model = Vector([1.0] * 5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises((ValueError, ecl.ProblemError), match="eqq"):
        ecl.PrimalDual(faulty(0), model, opt, ecl.dual.SGD({"default": 0.1, "eqq": 5.0}))


# --- fit ------------------------------------------------------------------------------------
def test_fit_needs_a_length():
    solver = sgd_solver(faulty(0), Vector([1.0] * 5), lr=0.1)
    with pytest.raises(ValueError, match="fit needs epochs=N or max_steps=N"):
        solver.fit(BATCH)
    with pytest.raises(ValueError, match="epochs must be a non-negative int, got -1"):
        solver.fit(BATCH, epochs=-1)
    with pytest.raises(ValueError, match=r"max_steps must be a non-negative int, got 2\.5"):
        solver.fit(BATCH, max_steps=2.5)
    with pytest.raises(TypeError, match=r"wrap a single full batch in a list: fit\(\[batch\]"):
        solver.fit(BATCH[0], max_steps=1)
    with pytest.raises(ValueError, match="produced no batches in an epoch"):
        solver.fit([], max_steps=1)
    assert solver.step == 0


def test_nothing_to_train():
    problem = ecl.Problem(lambda model, batch: {})
    with pytest.raises(ecl.ProblemError, match="no objective and no constraints: nothing to train"):
        fit(problem, full_batch())
