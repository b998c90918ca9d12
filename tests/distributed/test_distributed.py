"""N processes × shard of the batch = 1 process × the whole batch (gloo on CPU).

All multi-process scenarios run in one spawn of 2 processes (start-up dominates); each
test checks one of its results against single-process runs.
"""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

import eclearn as ecl
from tests.distributed import workers

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is not available"
)

STEPS = 50


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    single_checkpoint = str(tmp / "half-1.pt")
    workers.run_single(STEPS // 2, save=single_checkpoint)
    mp.spawn(workers.scenarios, args=(2, str(tmp), STEPS, single_checkpoint), nprocs=2)
    return {
        "tmp": tmp,
        "ranks": [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in (0, 1)],
        "single": workers.run_single(STEPS),
    }


def assert_close(a, b):
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0, msg=key)


@pytest.mark.parametrize("name", ["two", "two_ddp"])
def test_two_processes_equal_one(runs, name):
    """Average equality, projected inequality, Ratio group rates with unequal per-rank
    counts, and a pointwise table: same parameters, multipliers and history."""
    assert_close(runs["single"], runs["ranks"][0][name])
    assert runs["single"]["mult/energy"].item() >= 0
    assert torch.count_nonzero(runs["single"]["mult/fit"]) == workers.N


def test_ranks_hold_identical_state(runs):
    for name in ("two", "two_ddp"):
        a, b = runs["ranks"][0][name], runs["ranks"][1][name]
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_save_with_two_resume_with_one(runs):
    resumed = workers.run_single(STEPS - STEPS // 2, load=str(runs["tmp"] / "half-2.pt"))
    assert_close(runs["single"], resumed)


def test_save_with_one_resume_with_two(runs):
    assert_close(runs["single"], runs["ranks"][0]["resumed_from_one"])


def test_ranks_disagreeing_on_constraints_fail(runs):
    for rank in (0, 1):
        assert "ranks disagree on the declared constraints" in runs["ranks"][rank]["mismatch"]


def test_repeated_index_across_ranks_fails(runs):
    for rank in (0, 1):
        assert "same sample id on more than one rank" in runs["ranks"][rank]["repeated"]


def test_evaluate_reduces_ratio_statistics_across_ranks(runs):
    """Ranks with 40 and 24 rows in batches of 7: the pooled report equals the full data."""
    solver = workers.build()
    full = workers.data()
    full["index"] = torch.arange(workers.N)
    expected = workers.report_numbers(ecl.evaluate(solver.problem, solver.model, [full]))
    for rank in (0, 1):
        got = runs["ranks"][rank]["evaluate"]
        for key in expected:
            torch.testing.assert_close(
                got[key].double(), expected[key].double(), atol=1e-12, rtol=0, msg=key
            )


def test_cli_nproc_two_equals_one_process(tmp_path, monkeypatch):
    """`eclearn run --nproc 2` (torchrun, gloo) reproduces the single-process run."""
    import json

    from eclearn.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    args = ["run", "toy", "--set", "epochs=3", "--set", "n_train=2048", "--no-progress"]
    assert main([*args, "--out", "one"]) == 0
    assert main([*args, "--out", "two", "--nproc", "2"]) == 0
    one = json.loads((tmp_path / "one/seed-0/metrics.json").read_text())
    two = json.loads((tmp_path / "two/seed-0/metrics.json").read_text())
    for key in ("param_error", "multiplier_error", "test_objective", "train_max_violation"):
        assert abs(one[key] - two[key]) < 1e-6, key
