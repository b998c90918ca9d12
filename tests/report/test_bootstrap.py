"""The vectorised row bootstrap of ``ecl.certify`` equals re-evaluating every resample,
whichever path it takes (additive statistics, vmapped chunks, or the loop)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import eclearn as ecl
import eclearn.certify

certify_module = sys.modules["eclearn.certify"]
ROWS = 120


def batch():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(ROWS, 3, generator=gen)
    group = torch.randint(0, 3, (ROWS,), generator=gen)
    onehot = torch.nn.functional.one_hot(group, 3).float()
    return {"x": x, "group": group, "onehot": onehot, "contrast": onehot / onehot.sum(0)}


def additive(model, b):
    out = model(b["x"]).squeeze(-1)
    hard = (out > 0).float()
    return {
        "mean": out.mean().reshape(1),  # pooled: a mean
        "rates": ecl.Ratio(hard @ b["onehot"], b["onehot"].sum(0)),  # pooled: a Ratio
        "weighted": hard @ b["contrast"],  # summed: fixed per-row weights
    }


def nonadditive(model, b):
    out = model(b["x"]).squeeze(-1)
    rates = (torch.sigmoid(out) @ b["onehot"]) / b["onehot"].sum(0).clamp_min(1)
    return {"spread": (rates - torch.sigmoid(out).mean()).reshape(3), "var": out.var().reshape(1)}


def syncing(model, b):
    out = model(b["x"]).squeeze(-1)
    if float(out.abs().max()) > 1e6:  # a host synchronisation: vmap cannot trace it
        raise AssertionError
    return {"mean": out.mean().reshape(1)}


PROBLEMS = {
    "additive": (
        additive,
        [ecl.Equality("mean"), ecl.Equality("rates", size=3), ecl.Equality("weighted", size=3)],
    ),
    "nonadditive": (nonadditive, [ecl.Equality("spread", size=3), ecl.Inequality("var")]),
    "syncing": (syncing, [ecl.Equality("mean")]),
}
EXPECTED_PATH = {"additive": "additive", "nonadditive": "vmapped", "syncing": "looped"}


@pytest.mark.parametrize("kind", sorted(PROBLEMS))
def test_each_path_equals_the_loop(kind, monkeypatch):
    evaluate, constraints = PROBLEMS[kind]
    problem = ecl.Problem(evaluate, constraints)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    taken = []
    for name in ("additive", "vmapped", "looped"):
        fn = getattr(certify_module, f"_{name}_resamples")

        def spy(*args, _fn=fn, _name=name):
            result = _fn(*args)
            if result is not None:
                taken.append(_name)
            return result

        monkeypatch.setattr(certify_module, f"_{name}_resamples", spy)
    rng = np.random.default_rng(3)
    fast = certify_module._row_bootstrap(problem, model, batch(), 300, rng, True)
    assert taken == [EXPECTED_PATH[kind]]
    monkeypatch.undo()
    # the reference: every resample evaluated on its own, with the same draws
    picks = torch.from_numpy(np.random.default_rng(3).integers(0, ROWS, size=(300, ROWS)))
    b = batch()
    for i in (0, 1, 137, 299):
        sample = {k: v[picks[i]] for k, v in b.items()}
        with torch.no_grad():
            ev = problem(model, sample, exact=True)
        for c in problem.average:
            np.testing.assert_allclose(
                fast[c.name][i], ev.measured(c.name).double().numpy(), rtol=1e-5, atol=1e-6
            )


def test_certify_uses_it_and_is_fast():
    import time

    problem = ecl.Problem(additive, PROBLEMS["additive"][1])
    model = torch.nn.Linear(3, 1)
    start = time.process_time()
    multipliers = {c.name: torch.zeros(c.size) for c in problem.average}
    cert = ecl.certify(problem, model, multipliers, [batch()], [batch()], n_resamples=2000)
    assert time.process_time() - start < 2.0
    assert set(cert.constraints) == {"mean", "rates", "weighted"}
