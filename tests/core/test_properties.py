"""Property tests (hypothesis): projection of multipliers, indexed multiplier tables, Ratio
pooling, and the Batches stream."""

from __future__ import annotations

import itertools

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import eclearn as ecl
from eclearn.multipliers import DenseMultipliers, IndexedMultipliers

from .conftest import F64, Vector, assert_close, scripted, sgd_solver, t64

FAST = settings(max_examples=40, deadline=None)
finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


# --- projection -----------------------------------------------------------------------------
@FAST
@given(st.lists(st.tuples(st.booleans(), finite), min_size=1, max_size=12))
def test_projection_clamps_inequalities_and_leaves_equalities_bitwise(entries):
    constraints = [
        ecl.Equality(f"c{i}") if is_eq else ecl.Inequality(f"c{i}")
        for i, (is_eq, _) in enumerate(entries)
    ]
    dense = DenseMultipliers(constraints, dtype=F64)
    raw = t64([v for _, v in entries])
    dense.value.copy_(raw)
    dense.project_()
    for i, (is_eq, v) in enumerate(entries):
        got = dense[f"c{i}"].item()
        assert got == (v if is_eq else max(v, 0.0))
        assert np.signbit(got) == np.signbit(v) or not is_eq or v == 0


optimizers = st.sampled_from(["SGD", "Adam", "NuPI"])


def make_dual(kind: str, lr: float):
    return {
        "SGD": lambda: ecl.dual.SGD(lr),
        "Adam": lambda: ecl.dual.Adam(lr),
        "NuPI": lambda: ecl.dual.NuPI(lr, kp=0.7, ki=1.0, nu=0.2),
    }[kind]()


@settings(max_examples=25, deadline=None)
@given(
    optimizers,
    st.floats(0.01, 3.0),
    st.lists(st.lists(st.floats(-5, 5), min_size=2, max_size=2), min_size=1, max_size=6),
)
def test_after_any_dual_steps_inequalities_are_nonnegative_and_equalities_free(kind, lr, script):
    """Equality and inequality constraints (dense and pointwise) get the same violations:
    the equality multiplier is the plain running sum of the optimizer's steps, the
    inequality multiplier the same sum projected after every step."""
    steps = [{"eq": v, "ineq": v, "pw": v, "pw_eq": v} for v in script]
    problem = ecl.Problem(
        scripted(steps),
        [
            ecl.Equality("eq", 2),
            ecl.Inequality("ineq", 2),
            ecl.Inequality("pw", pointwise=True, num_samples=3),
            ecl.Equality("pw_eq", pointwise=True, num_samples=3),
        ],
    )
    solver = sgd_solver(problem, Vector([0.0]), lr=0.0, dual=make_dual(kind, lr))
    solver.fit([{"index": torch.tensor([2, 0])}], max_steps=len(script))
    reference = make_dual(kind, lr)
    state = reference.init_state(torch.zeros(2, dtype=F64))
    eq = torch.zeros(2, dtype=F64)
    ineq = torch.zeros(2, dtype=F64)
    for values in script:
        delta, state = reference.update(t64(values), state, torch.full((2,), lr, dtype=F64))
        eq, ineq = eq + delta, (ineq + delta).clamp_min(0)
    mult = solver.multipliers
    assert_close(mult["eq"], eq, atol=1e-12)
    assert_close(mult["ineq"], ineq, atol=1e-12)
    assert_close(mult["pw_eq"][[2, 0]], eq, atol=1e-12)
    assert_close(mult["pw"][[2, 0]], ineq, atol=1e-12)
    for column in ("multiplier/ineq[0]", "multiplier/ineq[1]"):
        assert (solver.history[column] >= 0).all()
    assert (mult["pw"] >= 0).all()


# --- indexed multiplier tables --------------------------------------------------------------
@st.composite
def table_writes(draw):
    n = draw(st.integers(1, 30))
    width = draw(st.integers(1, 3))
    writes = []
    for _ in range(draw(st.integers(1, 8))):
        index = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True))
        rows = draw(
            st.lists(
                st.lists(st.floats(-100, 100), min_size=width, max_size=width),
                min_size=len(index),
                max_size=len(index),
            )
        )
        writes.append((index, rows))
    return n, width, draw(st.booleans()), draw(st.floats(-2, 2)), writes


@FAST
@given(table_writes())
def test_writing_rows_changes_exactly_those_rows_and_keeps_the_sums(case):
    n, width, equality, init, writes = case
    if not equality:
        init = abs(init)
    kind = ecl.Equality if equality else ecl.Inequality
    table = IndexedMultipliers(
        kind("pw", width, pointwise=True, num_samples=n, init=init), dtype=F64
    )
    assert (table.table == init).all()
    # running sums accumulate rounding relative to every value they have held (overwriting
    # 91 by 0.05 cancels 91² in sum_sq), so the bound scales with that history
    scale = 1.0 + table.table.abs().sum().item()
    scale_sq = 1.0 + table.table.pow(2).sum().item()
    for index, rows in writes:
        before = table.table.clone()
        idx = torch.tensor(index)
        new = t64(rows)
        table.write(idx, new)
        expected = before.clone()
        expected[idx] = new if equality else new.clamp_min(0)
        assert torch.equal(table.table, expected)  # those rows, and only those
        full = table.table
        scale += before[idx].abs().sum().item() + full[idx].abs().sum().item()
        scale_sq += before[idx].pow(2).sum().item() + full[idx].pow(2).sum().item()
        assert abs(table.sum.item() - full.sum().item()) <= 1e-14 * scale
        assert abs(table.sum_sq.item() - full.pow(2).sum().item()) <= 1e-14 * scale_sq
        mean, norm = table.summary().tolist()
        assert abs(mean - full.mean().item()) <= 1e-14 * scale
        assert abs(norm**2 - full.norm().item() ** 2) <= 1e-14 * scale_sq
    assert torch.equal(table.gather(idx), table.table[idx])


# --- Ratio pooling --------------------------------------------------------------------------
@st.composite
def partitioned(draw):
    n = draw(st.integers(1, 40))
    size = draw(st.integers(1, 3))
    num = draw(
        st.lists(
            st.lists(st.integers(-50, 50), min_size=size, max_size=size), min_size=n, max_size=n
        )
    )
    den = draw(
        st.lists(st.lists(st.integers(0, 5), min_size=size, max_size=size), min_size=n, max_size=n)
    )
    cuts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=n - 1)) if n > 1 else set())
    return t64(num), t64(den), [0, *cuts, n]


@FAST
@given(partitioned())
def test_ratio_parts_sum_to_the_whole(case):
    num, den, bounds = case
    parts = [ecl.Ratio(num[a:b].sum(0), den[a:b].sum(0)) for a, b in itertools.pairwise(bounds)]
    pooled = parts[0]
    for part in parts[1:]:
        pooled = pooled + part
    whole = ecl.Ratio(num.sum(0), den.sum(0))
    assert torch.equal(pooled.numerator, whole.numerator)  # integer-valued: exact
    assert torch.equal(pooled.denominator, whole.denominator)
    total_den = den.sum(0)
    expected = torch.where(
        total_den > 0, num.sum(0) / total_den.clamp_min(1), torch.zeros_like(total_den)
    )
    assert_close(pooled.value, expected, atol=1e-12)


@FAST
@given(
    st.lists(st.integers(0, 2), min_size=2, max_size=30),
    st.data(),
)
def test_evaluate_pools_any_partition_into_the_full_data_values(groups, data):
    """Group rates returned as Ratio and a plain mean, over any split into batches."""
    n = len(groups)
    g = torch.tensor(groups)
    x = torch.linspace(-1, 1, n, dtype=F64)
    cuts = sorted(data.draw(st.sets(st.integers(1, n - 1), max_size=n - 1)))
    bounds = [0, *cuts, n]
    batches = [{"x": x[a:b], "g": g[a:b]} for a, b in itertools.pairwise(bounds)]

    def evaluate(model, batch):
        onehot = torch.nn.functional.one_hot(batch["g"], 3).to(F64)
        return {
            "objective": (batch["x"] ** 2).mean(),
            "rate": ecl.Ratio(batch["x"] @ onehot, onehot.sum(0)),
            "mean": batch["x"].mean(),
        }

    problem = ecl.Problem(evaluate, [ecl.Equality("rate", 3), ecl.Equality("mean")])
    report = ecl.evaluate(problem, torch.nn.Identity(), batches)
    onehot = torch.nn.functional.one_hot(g, 3).to(F64)
    counts = onehot.sum(0)
    rates = torch.where(counts > 0, (x @ onehot) / counts.clamp_min(1), torch.zeros(3, dtype=F64))
    assert_close(report["rate"].value, rates, atol=1e-12)
    assert_close(report["mean"].value, x.mean().reshape(1), atol=1e-12)
    assert abs(report.objective - (x**2).mean().item()) <= 1e-12
    assert report.num_samples == n


# --- Batches --------------------------------------------------------------------------------
@FAST
@given(
    st.integers(1, 40),
    st.one_of(st.none(), st.integers(1, 50)),
    st.booleans(),
    st.booleans(),
    st.integers(0, 2**31),
)
def test_batches_serve_every_row_once_per_epoch(n, batch_size, shuffle, drop_last, seed):
    torch.manual_seed(seed)
    x = torch.arange(n, dtype=F64) * 10 + 0.5
    y = torch.randn(n, 2)
    batches = ecl.Batches(
        {"x": x, "y": y}, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last
    )
    size = n if batch_size is None else batch_size
    for _epoch in range(2):
        served = list(batches)
        assert len(served) == len(batches)
        ids = (
            torch.cat([b["index"] for b in served]) if served else torch.zeros(0, dtype=torch.long)
        )
        assert ids.dtype == torch.int64
        for b in served:
            assert 1 <= len(b["index"]) <= size
            assert torch.equal(b["x"], x[b["index"]])  # the index column names the rows
            assert torch.equal(b["y"], y[b["index"]])
        if drop_last:
            assert len(ids) == (n // size) * size and len(set(ids.tolist())) == len(ids)
            assert all(len(b["index"]) == size for b in served)
        else:
            assert sorted(ids.tolist()) == list(range(n))  # every row exactly once
        if not shuffle:
            assert ids.tolist() == list(range(len(ids)))


def test_batches_keep_a_given_index_column_and_shuffle_between_epochs():
    torch.manual_seed(0)
    ids = torch.arange(100, 120)
    batches = ecl.Batches({"x": torch.zeros(20), "index": ids}, batch_size=5)
    first = torch.cat([b["index"] for b in batches])
    second = torch.cat([b["index"] for b in batches])
    assert sorted(first.tolist()) == list(range(100, 120))
    assert not torch.equal(first, second)


def test_batches_input_errors():
    import pytest

    with pytest.raises(ValueError, match="needs at least one tensor"):
        ecl.Batches({})
    with pytest.raises(ValueError, match="same number of rows"):
        ecl.Batches({"x": torch.zeros(3), "y": torch.zeros(4)})
    with pytest.raises(ValueError, match="batch_size must be positive"):
        ecl.Batches({"x": torch.zeros(3)}, batch_size=0)
