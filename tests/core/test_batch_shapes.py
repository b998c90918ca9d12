"""Batches of every shape users have: dicts, tuples/lists from DataLoader(TensorDataset)
(named by keys= or passed positionally), ecl.Batches; clear errors for anything else and for
the silent mistakes (a detached constraint, an empty batch, a missing key)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import eclearn as ecl

from .conftest import F64, Vector

X = torch.linspace(-1, 1, 12, dtype=F64).reshape(12, 1)
Y = 2 * X[:, 0] + 1


def linear():
    torch.manual_seed(0)
    return torch.nn.Linear(1, 1, dtype=F64)


def positional(model, batch):
    x, y = batch
    pred = model(x).squeeze(-1)
    return {"objective": ((pred - y) ** 2).mean(), "mean": pred.mean().reshape(1)}


def named(model, batch):
    pred = model(batch["x"]).squeeze(-1)
    return {"objective": ((pred - batch["y"]) ** 2).mean(), "mean": pred.mean().reshape(1)}


def run(evaluate, batches, **fit):
    model = linear()
    problem = ecl.Problem(evaluate, [ecl.Equality("mean", rhs=0.5)])
    solver = ecl.PrimalDual(problem, model, torch.optim.SGD(model.parameters(), lr=0.1))
    solver.fit(batches, epochs=3, warn=False, **fit)
    return solver


def test_dataloader_batches_named_by_keys_train_like_dicts():
    loader = DataLoader(TensorDataset(X, Y), batch_size=4, shuffle=False)
    dicts = [{"x": X[i : i + 4], "y": Y[i : i + 4]} for i in range(0, 12, 4)]
    a = run(named, loader, keys=("x", "y"))
    b = run(named, dicts)
    assert (a.history.to_numpy() == b.history.to_numpy()).all()


def test_tuple_batches_are_passed_positionally_without_keys():
    loader = DataLoader(TensorDataset(X, Y), batch_size=4, shuffle=False)
    a = run(positional, loader)
    b = run(named, [{"x": X[i : i + 4], "y": Y[i : i + 4]} for i in range(0, 12, 4)])
    assert (a.history.to_numpy() == b.history.to_numpy()).all()
    report = ecl.evaluate(a.problem, a.model, loader)  # evaluate takes them too
    assert report.num_samples == 12


def test_keys_of_the_wrong_length_and_non_batches_are_named():
    loader = DataLoader(TensorDataset(X, Y), batch_size=4)
    with pytest.raises(
        ecl.ProblemError, match=r"a batch of 2 items cannot be named by keys=\['x'\]"
    ):
        run(named, loader, keys=("x",))
    with pytest.raises(ecl.ProblemError, match="a batch must be a dict of tensors"):
        run(named, [3.0])


def test_pointwise_constraints_need_named_batches():
    def evaluate(model, batch):
        return {"objective": model(batch[0]).mean(), "pw": model(batch[0]).squeeze(-1)}

    model = linear()
    problem = ecl.Problem(evaluate, [ecl.Equality("pw", pointwise=True, num_samples=12)])
    solver = ecl.PrimalDual(problem, model, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ecl.ProblemError, match="pointwise constraints look up their sample ids"):
        solver.fit([(X, Y)], max_steps=1, warn=False)


def test_a_detached_constraint_value_is_refused_with_the_fix():
    def evaluate(model, batch):
        theta = model()
        return {"objective": theta.pow(2).sum(), "h": theta.sum().detach().reshape(1)}

    model = Vector([1.0])
    solver = ecl.PrimalDual(
        ecl.Problem(evaluate, [ecl.Equality("h", rhs=3.0)]),
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
    )
    with pytest.raises(
        ecl.ProblemError, match=r"step 1: constraint\(s\) \['h'\] .*no gradient path.*ecl.Proxy"
    ):
        solver.fit([{"x": torch.zeros(1)}], max_steps=1, warn=False)


def test_an_empty_batch_and_a_missing_key_are_named():
    model = linear()
    problem = ecl.Problem(named, [ecl.Equality("mean", rhs=0.5)])
    solver = ecl.PrimalDual(problem, model, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ecl.ProblemError, match="step 1: the batch has 0 rows"):
        solver.fit([{"x": X[:0], "y": Y[:0]}], max_steps=1, warn=False)
    with pytest.raises(
        ecl.ProblemError, match=r"step 1: evaluate looked up batch key 'y'.*keys: \['x'\]"
    ):
        solver.fit([{"x": X}], max_steps=1, warn=False)


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the message on a machine without CUDA"
)
def test_asking_for_cuda_without_a_gpu_is_one_clear_error():
    model = linear()
    problem = ecl.Problem(named, [ecl.Equality("mean")])
    with pytest.raises(ValueError, match="no CUDA GPU"):
        ecl.PrimalDual(problem, model, torch.optim.SGD(model.parameters(), lr=0.1), device="cuda")


def test_a_compiled_models_checkpoint_loads_into_the_plain_model():
    model = linear()
    compiled = torch.compile(model, backend="eager")
    problem = ecl.Problem(named, [ecl.Equality("mean")])
    solver = ecl.PrimalDual(problem, compiled, torch.optim.SGD(model.parameters(), lr=0.1))
    solver.fit([{"x": X, "y": Y}], max_steps=2, warn=False)
    state = solver.state_dict()
    assert not any(k.startswith("_orig_mod.") for k in state["model"])
    plain = linear()
    plain.load_state_dict(state["model"])
    assert torch.equal(plain.weight, model.weight)
