"""ecl.eager_optimizer: same optimizer, no torch._dynamo import (the cold-start cost)."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap

import pytest
import torch

import eclearn as ecl


def _quadratic(params: list[torch.nn.Parameter]) -> torch.Tensor:
    w, b = params
    return ((w - torch.arange(3.0)) ** 2).sum() + (b - 1.5) ** 2 + (w.sum() * b) ** 2


def _trajectory(cls: type, steps: int = 7, **options) -> list[torch.Tensor]:
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(()))]
    opt = cls(params, **options)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = _quadratic(params)
        loss.backward()
        return loss

    for _ in range(steps):
        opt.step(closure)
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize(
    ("cls", "options"),
    [
        (torch.optim.Adam, {"lr": 0.1, "weight_decay": 0.01}),
        (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}),
        (torch.optim.LBFGS, {"lr": 1.0, "max_iter": 5, "line_search_fn": "strong_wolfe"}),
    ],
)
def test_same_updates_as_the_torch_class(cls: type, options: dict) -> None:
    eager = ecl.eager_optimizer(cls)
    assert eager is not cls and issubclass(eager, cls)
    plain = _trajectory(cls, **options)
    fast = _trajectory(eager, **options)
    for a, b in zip(plain, fast, strict=True):
        assert torch.equal(a, b)


def test_state_dict_moves_between_the_classes_and_hooks_fire() -> None:
    param = torch.nn.Parameter(torch.ones(2))
    eager = ecl.eager_optimizer(torch.optim.Adam)([param], lr=0.1)
    calls = []
    eager.register_step_post_hook(lambda opt, args, kwargs: calls.append(1))
    for _ in range(3):
        eager.zero_grad()
        (param**2).sum().backward()
        eager.step()
    assert calls == [1, 1, 1]
    plain = torch.optim.Adam([torch.nn.Parameter(param.detach().clone())], lr=0.1)
    plain.load_state_dict(eager.state_dict())
    assert plain.state_dict()["state"][0]["step"] == 3
    # the class is importable by name, so optimizers pickle like torch's own
    assert type(pickle.loads(pickle.dumps(eager))) is type(eager)
    assert ecl.eager_optimizer(torch.optim.Adam) is type(eager)  # one class per parent


def test_step_runs_without_grad_so_parameters_stay_leaves() -> None:
    param = torch.nn.Parameter(torch.ones(2))
    opt = ecl.eager_optimizer(torch.optim.SGD)([param], lr=0.5)
    (param**2).sum().backward()
    opt.step()
    assert param.grad_fn is None and torch.equal(param.detach(), torch.zeros(2))


def test_a_fresh_fair_fit_never_imports_the_compiler_stack() -> None:
    # The cold-start target: building and stepping eclearn's internal optimizers (the fair
    # estimator's Adam and its L-BFGS warm start) must not import torch._dynamo (~1 s).
    code = textwrap.dedent(
        """
        import sys
        import numpy as np
        from eclearn.fairness import FairClassifier
        rng = np.random.default_rng(0)
        X = rng.normal(size=(300, 4)); g = rng.integers(0, 2, 300)
        y = (X[:, 0] + g > 0.5).astype(int)
        FairClassifier(max_iter=50, random_state=0).fit(X, y, sensitive_features=g)
        print("dynamo imported:", "torch._dynamo" in sys.modules)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    assert "dynamo imported: False" in out.stdout, out.stdout + out.stderr


def test_a_checkpoint_of_the_torch_class_resumes_with_the_eager_one(tmp_path) -> None:
    # Checkpoints record the algorithm ("Adam"), not the class: runs written before the
    # estimators switched to eager optimizers (or by a user's own Adam) still resume.
    def solver(cls: type) -> ecl.PrimalDual:
        torch.manual_seed(0)
        model = torch.nn.Linear(2, 1)
        def evaluate(m, b):
            pred = m(b["x"])
            return {"objective": (pred**2).mean(), "mean": pred.mean().reshape(1)}

        problem = ecl.Problem(evaluate, [ecl.Equality("mean", rhs=1.0)])
        return ecl.PrimalDual(problem, model, cls(model.parameters(), lr=0.05), ecl.dual.SGD(0.1))

    batch = {"x": torch.randn(16, 2, generator=torch.Generator().manual_seed(1))}
    plain = solver(torch.optim.Adam)
    plain.fit([batch], max_steps=5, warn=False)
    path = tmp_path / "plain.pt"
    plain.save(str(path))
    eager = solver(ecl.eager_optimizer(torch.optim.Adam))
    eager.load(str(path))
    assert eager.step == 5
    plain.fit([batch], max_steps=10, warn=False)
    eager.fit([batch], max_steps=10, warn=False)
    for a, b in zip(plain.model.parameters(), eager.model.parameters(), strict=True):
        assert torch.equal(a, b)
