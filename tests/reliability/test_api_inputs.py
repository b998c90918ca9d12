"""Bad inputs to the Python API that used to be accepted silently or answered from deep
inside: each is now an error at the step it happens, naming what is wrong and the fix."""

from __future__ import annotations

import pytest
import torch

import eclearn as ecl
from eclearn.problem import ProblemError

torch.manual_seed(0)
X, Y = torch.randn(64, 3), torch.randn(64)


def fitted(evaluate, batches, **kwargs):
    model = torch.nn.Linear(3, 1)
    solver = ecl.PrimalDual(
        ecl.Problem(evaluate, [ecl.Equality("mean_prediction")]),
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        **kwargs,
    )
    return solver.fit(batches, max_steps=3, warn=False)


def regression(model, batch):
    pred = model(batch["x"]).squeeze(-1)
    return {"objective": ((pred - batch["y"]) ** 2).mean(), "mean_prediction": pred.mean()}


def detached(model, batch):
    out = regression(model, batch)
    return {**out, "mean_prediction": out["mean_prediction"].detach()}


def wrong_key(model, batch):
    pred = model(batch["x"]).squeeze(-1)
    return {"objective": ((pred - batch["target"]) ** 2).mean(), "mean_prediction": pred.mean()}


CASES = [
    (
        "detached constraint",
        detached,
        [{"x": X, "y": Y}],
        r"step 1: constraint\(s\) \['mean_prediction'\] returned values with no gradient path",
    ),
    (
        "size-0 batch",
        regression,
        [{"x": X[:0], "y": Y[:0]}],
        "step 1: the batch has 0 rows",
    ),
    (
        "missing batch key",
        wrong_key,
        [{"x": X, "y": Y}],
        r"step 1: evaluate looked up batch key 'target', which the batch does not have "
        r"\(keys: \['x', 'y'\]\)",
    ),
    (
        "tuple batch read by name",
        regression,
        [(X, Y)],
        r"step 1: evaluate indexed the batch by name, but the batch is a tuple of 2 tensors .* "
        r"keys=",
    ),
    (
        "not a batch",
        regression,
        [42],
        "step 1: a batch must be a dict of tensors",
    ),
]


@pytest.mark.parametrize(("case", "evaluate", "batches", "match"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_error(case, evaluate, batches, match):
    with pytest.raises(ProblemError, match=match) as caught:
        fitted(evaluate, batches)
    assert "\n" not in str(caught.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_names_the_fix():
    model = torch.nn.Linear(3, 1)
    with pytest.raises(ValueError, match=r"no CUDA GPU .* use device='cpu'"):
        ecl.PrimalDual(
            ecl.Problem(regression, [ecl.Equality("mean_prediction")]),
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            device="cuda",
        )
