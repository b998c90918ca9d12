"""A user's own loop: ``train_step(batch)`` per batch, or ``lagrangian_step`` → backward →
optimizer step → ``dual_step`` — the same history, multipliers and checkpoints as ``fit``."""

from __future__ import annotations

import pytest
import torch

import eclearn as ecl

from .conftest import F64

X = torch.linspace(-1, 1, 16, dtype=F64).reshape(16, 1)
Y = 3 * X[:, 0] - 0.5


def make():
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1, dtype=F64)

    def evaluate(model, batch):
        pred = model(batch["x"]).squeeze(-1)
        return {
            "objective": ((pred - batch["y"]) ** 2).mean(),
            "mean": pred.mean().reshape(1),
            "fit": pred - batch["y"],
        }

    problem = ecl.Problem(
        evaluate,
        [ecl.Equality("mean", rhs=0.25), ecl.Inequality("fit", pointwise=True, num_samples=16)],
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return ecl.PrimalDual(problem, model, optimizer, ecl.dual.SGD(0.1))


def batches():
    return list(ecl.Batches({"x": X, "y": Y}, batch_size=4, shuffle=False))


def test_train_step_per_batch_equals_fit():
    a, b = make(), make()
    a.fit(batches(), epochs=3, warn=False)
    for _ in range(3):
        for batch in batches():
            record = b.train_step(batch)
    assert record.step == 12 and record.dual_step
    assert (a.history.to_numpy()[:, 2:] == b.history.to_numpy()[:, 2:]).all()  # not epoch
    for name in a.multipliers:
        assert torch.equal(a.multipliers[name], b.multipliers[name])


def test_lagrangian_step_then_dual_step_equals_train_step():
    a, b = make(), make()
    for batch in batches() * 2:
        a.train_step(batch)
        loss = b.lagrangian_step(batch)
        b.primal_optimizer.zero_grad()
        loss.backward()
        b.primal_optimizer.step()
        b.dual_step()
    assert (a.history.to_numpy() == b.history.to_numpy()).all()
    assert torch.equal(a.multipliers["fit"], b.multipliers["fit"])
    # checkpoints of a user loop resume like fit's
    c = make()
    c.load_state_dict(b.state_dict())
    assert c.step == 8 and torch.equal(c.multipliers["mean"], b.multipliers["mean"])


def test_half_steps_out_of_order_are_named():
    solver = make()
    with pytest.raises(RuntimeError, match="dual_step needs a step begun"):
        solver.dual_step()
    solver.lagrangian_step(batches()[0])
    with pytest.raises(RuntimeError, match="called twice without dual_step"):
        solver.lagrangian_step(batches()[0])
