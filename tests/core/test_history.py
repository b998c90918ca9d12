"""History: column names (history.py's docstring), the numbers recorded per step, CSV/JSONL
export round trips, and the per-sample table summaries kept from running sums."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import eclearn as ecl

from .conftest import F64, Vector, full_batch, reseed, sgd_solver, t64

A = t64([[1.0, 2.0], [0.0, -1.0]])


def mixed_problem(rhs=(0.5, -0.5)):
    def evaluate(model, batch):
        theta = model()
        idx = batch["index"]
        return {
            "objective": 0.5 * theta.pow(2).sum(),
            "eq": A @ theta[:2],
            "ineq": theta.sum(),
            "pw": theta[idx] - 1.0,
        }

    return ecl.Problem(
        evaluate,
        [
            ecl.Equality("eq", 2, rhs=list(rhs)),
            ecl.Inequality("ineq", bound=-1.0),
            ecl.Equality("pw", pointwise=True, num_samples=4),
        ],
    )


def test_column_names_follow_the_documented_scheme():
    solver = sgd_solver(mixed_problem(), Vector([0.0] * 4), lr=0.1)
    expected = {
        "step",
        "epoch",
        "lr",
        "dual_lr",
        "objective",
        "lagrangian",
        "value/eq[0]",
        "value/eq[1]",
        "value/ineq",
        "violation/eq[0]",
        "violation/eq[1]",
        "violation/ineq",
        "multiplier/eq[0]",
        "multiplier/eq[1]",
        "multiplier/ineq",
        "excess/pw/mean",
        "excess/pw/max",
        "multiplier/pw/mean",
        "multiplier/pw/norm",
        "multiplier/pw/batch_max_abs",
    }
    assert set(solver.history.columns) == expected
    assert len(solver.history.columns) == len(expected)
    assert solver.history.columns[:2] == ["step", "epoch"]
    assert solver.history.select("multiplier/eq") == ["multiplier/eq[0]", "multiplier/eq[1]"]
    assert "value/ineq" in solver.history and "value/pw" not in solver.history


def test_one_lr_column_per_parameter_group():
    model = Vector([0.0] * 4)
    extra = torch.nn.Parameter(torch.zeros(1, dtype=F64))
    opt = torch.optim.SGD([{"params": [model.theta]}, {"params": [extra], "lr": 0.5}], lr=0.1)
    solver = ecl.PrimalDual(mixed_problem(), model, opt, dtype=F64)
    assert "lr" not in solver.history.columns
    assert {"lr/0", "lr/1"} <= set(solver.history.columns)
    solver.fit([{"index": torch.tensor([0, 1])}], max_steps=2)
    assert solver.history["lr/0"].tolist() == [0.1, 0.1]
    assert solver.history["lr/1"].tolist() == [0.5, 0.5]


def test_first_row_records_the_step_by_hand():
    theta0 = t64([0.5, -1.0, 2.0, 0.25])
    model = Vector(theta0)
    eta = 0.3
    solver = sgd_solver(mixed_problem(), model, lr=0.1, dual=ecl.dual.SGD(eta))
    solver.fit([{"index": torch.tensor([3, 1])}], max_steps=1)
    row = solver.history.last()
    eq = A @ theta0[:2]
    eq_violation = eq - t64([0.5, -0.5])
    ineq_violation = theta0.sum() + 1.0
    pw_violation = theta0[[3, 1]] - 1.0
    assert row["step"] == 1 and row["epoch"] == 0 and row["lr"] == 0.1
    assert row["objective"] == pytest.approx(0.5 * theta0.pow(2).sum().item(), abs=1e-15)
    assert row["lagrangian"] == pytest.approx(row["objective"], abs=1e-15)  # multipliers were 0
    for i in range(2):
        assert row[f"value/eq[{i}]"] == pytest.approx(eq[i].item(), abs=1e-15)
        assert row[f"violation/eq[{i}]"] == pytest.approx(eq_violation[i].item(), abs=1e-15)
        # the multiplier column holds the value after the step's dual update
        assert row[f"multiplier/eq[{i}]"] == pytest.approx(eta * eq_violation[i].item(), abs=1e-15)
    assert row["violation/ineq"] == pytest.approx(ineq_violation.item(), abs=1e-15)
    assert row["multiplier/ineq"] == pytest.approx(eta * ineq_violation.item(), abs=1e-15)
    table = torch.zeros(4, dtype=F64)
    table[[3, 1]] = eta * pw_violation
    assert row["dual_lr"] == 1.0  # no dual schedule
    # a pointwise equality's excess is |v| per sample
    assert row["excess/pw/mean"] == pytest.approx(pw_violation.abs().mean().item(), abs=1e-15)
    assert row["excess/pw/max"] == pytest.approx(pw_violation.abs().max().item(), abs=1e-15)
    assert row["multiplier/pw/mean"] == pytest.approx(table.mean().item(), abs=1e-15)
    assert row["multiplier/pw/norm"] == pytest.approx(table.norm().item(), abs=1e-15)
    assert row["multiplier/pw/batch_max_abs"] == pytest.approx(table.abs().max().item(), abs=1e-15)
    assert solver.latest() == row


def test_csv_and_jsonl_round_trip(tmp_path):
    def evaluate(model, batch):  # a feasibility problem: the objective column is NaN
        return {"eq": A @ model()}

    problem = ecl.Problem(evaluate, [ecl.Equality("eq", 2, rhs=[1 / 3, -2 / 7])])
    solver = sgd_solver(
        problem, Vector([0.1, 0.2]), lr=0.05, formulation=ecl.AugmentedLagrangian(1.0)
    )
    solver.fit(full_batch(), max_steps=7)
    data = solver.history.to_numpy()
    assert np.isnan(data[:, solver.history.columns.index("objective")]).all()

    back = ecl.History.read_csv(solver.history.to_csv(tmp_path / "h.csv"))
    assert back.columns == solver.history.columns
    assert np.array_equal(back.to_numpy(), data, equal_nan=True)  # repr() round-trips floats

    path = solver.history.to_jsonl(tmp_path / "h.jsonl")
    lines = path.read_text().splitlines()
    assert len(lines) == 7
    for line, row in zip(lines, data, strict=True):
        record = json.loads(line)
        assert list(record) == solver.history.columns
        assert record["objective"] is None  # NaN → null
        values = [math.nan if v is None else v for v in record.values()]
        assert np.array_equal(np.array(values), row, equal_nan=True)


def test_empty_history_round_trips(tmp_path):
    history = ecl.History(["step", "x"])
    back = ecl.History.read_csv(history.to_csv(tmp_path / "e.csv"))
    assert back.columns == ["step", "x"] and len(back) == 0
    assert history.to_jsonl(tmp_path / "e.jsonl").read_text() == ""


# Guards a fixed core bug; before the fix: history._format calls int(value) on ±inf (OverflowError),
# so to_csv fails on a history holding an infinite multiplier or value
def test_csv_round_trips_infinities(tmp_path):
    history = ecl.History(["a", "b"])
    history.record(t64([math.inf, -math.inf]))
    back = ecl.History.read_csv(history.to_csv(tmp_path / "inf.csv"))
    assert back.to_numpy().tolist() == [[math.inf, -math.inf]]


def test_blocks_tail_and_state_dict():
    history = ecl.History(["i", "square"])
    for i in range(600):  # crosses the 256-row block boundary twice
        history.record(t64([i, i * i]))
    data = history.to_numpy()
    assert len(history) == 600 and data[:, 0].tolist() == list(range(600))
    assert np.array_equal(history.tail(300), data[-300:])
    assert np.array_equal(history.tail(5000), data)
    history.record(t64([600, 360000]))
    assert history.tail(1).tolist() == [[600.0, 360000.0]]
    copy = ecl.History(["i", "square"])
    copy.load_state_dict(history.state_dict())
    assert np.array_equal(copy.to_numpy(), history.to_numpy())
    with pytest.raises(ValueError, match="columns in the checkpoint differ"):
        ecl.History(["i", "cube"]).load_state_dict(history.state_dict())
    with pytest.raises(ValueError, match="history row has 3 entries for 2 columns"):
        history.record(t64([1.0, 2.0, 3.0]))
    with pytest.raises(KeyError, match="no history column 'cube'"):
        history["cube"]


def test_pointwise_summaries_from_running_sums_match_the_table():
    """After many mini-batch steps (projected inequality rows included) the mean and norm
    columns equal a direct computation on the table, step by step, to 1e-9 relative."""
    reseed(0)
    n = 37
    gen = torch.Generator().manual_seed(5)
    target = 1.0 + torch.randn(n, generator=gen, dtype=F64)

    def evaluate(model, batch):
        theta = model()
        idx = batch["index"]
        return {
            "objective": 0.5 * theta.pow(2).sum(),
            "eq": theta[idx] - batch["t"],
            "ineq": batch["t"] - theta[idx] - 0.5,
        }

    problem = ecl.Problem(
        evaluate,
        [
            ecl.Equality("eq", pointwise=True, num_samples=n, init=0.3),
            ecl.Inequality("ineq", pointwise=True, num_samples=n),
        ],
    )
    solver = sgd_solver(problem, Vector(torch.zeros(n)), lr=0.3, dual=ecl.dual.Adam(0.05))
    direct: list[list[float]] = []

    def record(s):
        rows = []
        for name in ("eq", "ineq"):
            table = s.indexed[name].table
            rows += [table.mean().item(), table.norm().item()]
        direct.append(rows)

    batches = ecl.Batches({"t": target}, batch_size=8, shuffle=True)
    solver.fit(batches, max_steps=150, callbacks=[record], warn=False)  # not converged yet
    direct_arr = np.array(direct)
    history = solver.history
    logged = np.stack(
        [history[f"multiplier/{n}/{s}"] for n in ("eq", "ineq") for s in ("mean", "norm")], 1
    )
    np.testing.assert_allclose(logged, direct_arr, rtol=1e-9, atol=0)
    ineq = solver.multipliers["ineq"]
    assert (ineq >= 0).all() and (ineq == 0).any() and (ineq > 0).any()
