"""The deprecated primal-recovery API (``ecl.CandidateRecorder`` + ``ecl.recover``) keeps
working for one release, with a DeprecationWarning; ``ecl.select`` replaces it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import eclearn as ecl


class Constant(nn.Module):
    def __init__(self, value: float = 0.0) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.tensor([value], dtype=torch.float64))

    def forward(self, x):
        return self.value.expand(x.shape[0])


def problem(target=0.5, tol=0.01):
    def evaluate(model, batch):
        out = model(batch["x"])
        # objective rewards small outputs; the constraint wants mean output = target
        return {"objective": out.mean(), "mean": out.mean().reshape(1)}

    return ecl.Problem(evaluate, [ecl.Equality("mean", rhs=target, tolerance=tol)])


def recorder_with(values, steps=None):
    rec = ecl.CandidateRecorder(every=1, max_candidates=10)
    steps = steps or list(range(1, len(values) + 1))
    for s, v in zip(steps, values, strict=True):
        rec.candidates.append(
            ecl.recovery.Candidate(s, {"value": torch.tensor([v], dtype=torch.float64)})
        )
    return rec


VALID = [{"x": torch.zeros(10, 1)}]

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.mark.filterwarnings("error::DeprecationWarning")
def test_the_old_names_warn_and_point_to_ecl_select():
    with pytest.warns(DeprecationWarning, match="ecl.select"):
        rec = ecl.CandidateRecorder(every=1, max_candidates=10)
    rec.candidates.append(
        ecl.recovery.Candidate(1, {"value": torch.tensor([0.5], dtype=torch.float64)})
    )
    with pytest.warns(DeprecationWarning, match="fit\\(select=ecl.select"):
        ecl.recover(problem(), Constant(), rec, VALID, rule="best")


def test_best_picks_feasible_candidate_with_best_objective():
    rec = recorder_with([0.2, 0.505, 0.5, 0.9])
    out = ecl.recover(problem(), Constant(), rec, VALID, rule="best")
    assert out.step == 3  # 0.5 and 0.505 are feasible; the objective prefers... 0.5 < 0.505
    assert float(out.model.value.detach()) == pytest.approx(0.5)
    assert "feasible within tolerance" in out.description


def test_best_without_feasible_candidate_says_so():
    rec = recorder_with([0.2, 0.45, 0.9])
    out = ecl.recover(problem(), Constant(), rec, VALID, rule="best")
    assert float(out.model.value.detach()) == pytest.approx(0.45)
    assert "no candidate of 3 is feasible" in out.description


def test_mixture_satisfies_constraints_in_expectation():
    rec = recorder_with([0.2, 0.9, 0.95])
    out = ecl.recover(problem(), Constant(), rec, VALID, rule="mixture", seed=3)
    weights = torch.tensor(out.weights, dtype=torch.float64)
    values = torch.tensor([0.2, 0.9, 0.95], dtype=torch.float64)[[s - 1 for s in out.steps]]
    assert abs(float((weights * values).sum()) - 0.5) <= 0.01 + 1e-9
    assert weights.sum() == pytest.approx(1.0)
    # 0.2 and 0.9 mix is cheapest: expected objective is minimised at mean exactly 0.49
    x = torch.zeros(20000, 1)
    assert float(out.model.expected(x).detach().mean()) == pytest.approx(0.49, abs=1e-6)
    # randomized but reproducible under the seed
    first = out.model(x).clone()
    out.model.reset()
    assert torch.equal(first, out.model(x))
    assert abs(float(first.mean()) - 0.49) < 0.02


def test_mixture_infeasible_raises():
    rec = recorder_with([0.8, 0.9])
    with pytest.raises(ValueError, match="no mixture of the candidates"):
        ecl.recover(problem(), Constant(), rec, VALID, rule="mixture")


def test_recorder_keeps_bounded_spread_set_and_exact_average():
    model = Constant(0.0)
    evaluate_problem = problem()
    solver = ecl.PrimalDual(
        evaluate_problem,
        model,
        torch.optim.SGD(model.parameters(), lr=0.01),
        ecl.dual.SGD(0.5),
        dtype=torch.float64,
    )
    rec = ecl.CandidateRecorder(every=2, max_candidates=4, average_from=11)
    seen = []
    solver.fit(
        VALID,
        max_steps=40,
        callbacks=[rec, lambda s: seen.append(float(model.value.detach()))],
        warn=False,
    )
    assert len(rec.candidates) <= 4
    # a regular grid spanning the run: every multiple of the final spacing up to step 40
    assert [c.step for c in rec.candidates] == list(range(rec.every, 41, rec.every))
    avg = rec.average_state(model)["value"]
    assert float(avg) == pytest.approx(sum(seen[10:]) / 30, abs=1e-12)
    last = ecl.recover(evaluate_problem, model, rec, VALID, rule="last")
    assert last.model is model and last.step == 40
    averaged = ecl.recover(evaluate_problem, model, rec, VALID, rule="average")
    assert float(averaged.model.value.detach()) == pytest.approx(float(avg))
    assert "average of the last 30 iterates" in averaged.description


def test_unknown_rule():
    with pytest.raises(ValueError, match="rule must be one of"):
        ecl.recover(problem(), Constant(), recorder_with([0.5]), VALID, rule="oracle")
