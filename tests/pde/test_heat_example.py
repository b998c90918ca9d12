"""Runs the code of docs/pde-second-example.md (the heat equation) on the pde helpers.

The page's Python blocks are executed as written, except the training block (marked in
the page as needing the core solver), which is only compiled. The exact solution must
give ~0 residuals through the page's functions, a wrong function must not.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from torch import nn

DOC = Path(__file__).resolve().parents[2] / "docs" / "pde-second-example.md"
SKIP_MARKER = "<!-- not run by tests: needs the core solver -->"
DTYPE = torch.float64


def _blocks() -> list[tuple[bool, str]]:
    """``(runnable, code)`` for every ```python block of the page, in order."""
    text = DOC.read_text(encoding="utf-8")
    found = []
    for match in re.finditer(r"```python\n(.*?)```", text, flags=re.S):
        before = text[: match.start()].rstrip().splitlines()
        found.append((not (before and before[-1].strip() == SKIP_MARKER), match.group(1)))
    return found


class Field(nn.Module):
    """A function of (x, t) wrapped as a network returning [n, 1]."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return self.fn(points).unsqueeze(1)


@pytest.fixture(scope="module")
def page() -> dict:
    blocks = _blocks()
    assert len(blocks) == 4 and [run for run, _ in blocks] == [True, True, False, True]
    namespace: dict = {}
    for runnable, code in blocks[:2]:
        assert runnable
        exec(compile(code, str(DOC), "exec"), namespace)
    compile(blocks[2][1], str(DOC), "exec")  # the training block must at least parse
    namespace["_final_block"] = blocks[3][1]
    return namespace


@pytest.fixture
def points() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    interior = torch.rand(300, 2, generator=gen, dtype=DTYPE)
    x, t = torch.rand(100, generator=gen, dtype=DTYPE), torch.rand(100, generator=gen, dtype=DTYPE)
    return {
        "pde": interior,
        "ic": torch.stack([x, torch.zeros_like(x)], 1),
        "bc_left": torch.stack([torch.zeros_like(t), t], 1),
        "bc_right": torch.stack([torch.ones_like(t), t], 1),
    }


def test_exact_solution_has_zero_residuals(page, points):
    model = Field(page["exact"])
    boundary = torch.cat([points["bc_left"], points["bc_right"]])
    assert page["pde_residual"](model, points["pde"]).abs().max() < 1e-12
    assert page["ic_residual"](model, points["ic"]).abs().max() < 1e-12
    assert page["bc_residual"](model, boundary).abs().max() < 1e-12
    terms = page["evaluate"](model, points)
    assert set(terms) == {"pde", "ic", "bc"} and all(v < 1e-24 for v in terms.values())


def test_exact_solution_matches_closed_form(page):
    pts = torch.tensor([[0.5, 0.0], [0.5, 1.0], [0.25, 0.3]], dtype=DTYPE)
    kappa = page["KAPPA"]
    expected = [1.0, math.exp(-kappa * math.pi**2), math.exp(-0.3 * kappa * math.pi**2) / 2**0.5]
    torch.testing.assert_close(page["exact"](pts), torch.tensor(expected, dtype=DTYPE))


@pytest.mark.parametrize(
    ("name", "fn", "bad"),
    [
        # wrong decay rate: satisfies IC and BC, not the PDE
        ("wrong decay", lambda p: torch.exp(-3 * p[:, 1]) * torch.sin(math.pi * p[:, 0]), {"pde"}),
        # steady sin(πx): right IC and BC, u_t = 0 ≠ κ u_xx
        ("steady", lambda p: torch.sin(math.pi * p[:, 0]), {"pde"}),
        # the κ-exact profile of a doubled frequency: PDE holds, IC is wrong
        (
            "wrong mode",
            lambda p: torch.exp(-0.4 * math.pi**2 * p[:, 1]) * torch.sin(2 * math.pi * p[:, 0]),
            {"ic"},
        ),
        # shifted: u = exact + 1 breaks both boundaries (and the IC)
        (
            "shifted",
            lambda p: 1.0 + torch.exp(-0.1 * math.pi**2 * p[:, 1]) * torch.sin(math.pi * p[:, 0]),
            {"ic", "bc"},
        ),
    ],
)
def test_wrong_functions_violate_exactly_the_expected_terms(page, points, name, fn, bad):
    assert page["KAPPA"] == 0.1  # the wrong-mode case is built for κ = 0.1
    terms = page["evaluate"](Field(fn), points)
    for key, value in terms.items():
        if key in bad:
            assert value > 1e-2, f"{name}: {key} residual should be large"
        else:
            assert value < 1e-24, f"{name}: {key} residual should vanish"


def test_residuals_train_a_network(page, points):
    from eclearn.pde import MLP

    torch.manual_seed(0)
    model = MLP(hidden=16, depth=2).to(DTYPE)
    loss = sum(page["evaluate"](model, points).values())
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_page_batches(page):
    torch.manual_seed(0)
    batch = next(iter(page["batches"]))
    assert {k: tuple(v.shape) for k, v in batch.items()} == {
        "pde": (1000, 2),
        "ic": (1000, 2),
        "bc_left": (250, 2),
        "bc_right": (250, 2),
    }
    assert torch.all(batch["ic"][:, 1] == 0)
    assert torch.all(batch["bc_left"][:, 0] == 0) and torch.all(batch["bc_right"][:, 0] == 1)
    terms = page["evaluate"](Field(page["exact"]), batch)  # default float32
    assert all(v < 1e-6 for v in terms.values())


def test_error_block_scores_the_exact_solution(page):
    namespace = dict(page, model=Field(page["exact"]))
    exec(compile(namespace.pop("_final_block"), str(DOC), "exec"), namespace)
    assert namespace["rel_l2"] < 1e-6
    namespace = dict(page, model=Field(lambda p: torch.zeros_like(p[:, 0])))
    exec(compile(namespace.pop("_final_block"), str(DOC), "exec"), namespace)
    assert namespace["rel_l2"] == pytest.approx(1.0)


# Guards a fixed core bug; before the fix: the solver measured the violations of
# mode="alternating" (and L-BFGS) steps under torch.no_grad(), where `partial` returned zeros,
# so the dual step saw a PDE residual of 0
@pytest.mark.parametrize("mode", ["alternating", "lbfgs"])
def test_solver_measures_the_pages_residuals_with_derivatives(page, points, mode):
    import eclearn as ecl
    from eclearn.pde import MLP

    torch.manual_seed(0)
    model = MLP(in_features=2, hidden=8, depth=2).to(DTYPE)
    names = ("pde", "ic", "bc")
    problem = ecl.Problem(page["evaluate"], [ecl.Equality(n) for n in names])
    if mode == "lbfgs":
        optimizer = torch.optim.LBFGS(model.parameters(), lr=1e-12, max_iter=1)
        solver = ecl.PrimalDual(problem, model, optimizer, dtype=DTYPE)
    else:  # lr 0: the model after the step is the model before it
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        solver = ecl.PrimalDual(problem, model, optimizer, mode="alternating", dtype=DTYPE)
    solver.fit([points], max_steps=1, warn=False)
    expected = page["evaluate"](model, points)
    row = solver.history.last()
    assert expected["pde"].item() > 1e-4  # an untrained network has a real residual
    for name in names:
        assert row[f"violation/{name}"] == pytest.approx(expected[name].item(), rel=1e-6)
