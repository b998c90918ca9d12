"""ecl.evaluate: exact pooling over uneven batches (plain means weighted by batch size, Ratio
statistics by their sums), verdicts at a tolerance, pointwise reports, the ``exact`` flag,
autograd and the model's mode."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import eclearn as ecl

from .conftest import F64, assert_close, t64

X = t64([[0.5, 1.0], [-1.0, 0.2], [2.0, -0.5], [0.1, 0.1], [-0.3, -2.0],
         [1.5, 0.7], [-0.8, 1.2], [0.0, -0.4], [1.1, 1.1], [-2.0, 0.3]])  # fmt: skip
Y = t64([1.0, -0.5, 0.7, 0.0, -1.2, 1.4, 0.3, -0.1, 0.9, -1.5])
G = torch.tensor([0, 0, 1, 0, 2, 0, 1, 0, 0, 1])  # unbalanced groups
SIZES = [3, 5, 2]  # uneven batches; group 2 appears in one batch only


class Recorder:
    def __init__(self) -> None:
        self.exact: list[bool] = []
        self.training: list[bool] = []
        self.grad: list[bool] = []

    def __call__(self, model, batch, exact: bool = True):
        self.exact.append(exact)
        self.training.append(model.training)
        self.grad.append(torch.is_grad_enabled())
        out = model(batch["x"]).squeeze(-1)
        onehot = nn.functional.one_hot(batch["g"], 3).to(F64)
        hit = (out > 0).to(F64) if exact else torch.sigmoid(out)
        return {
            "objective": ((out - batch["y"]) ** 2).mean(),
            "mean_out": out.mean(),
            "rate": ecl.Ratio(hit @ onehot, onehot.sum(0)),
            "pw": out - batch["y"],
        }


def model() -> nn.Module:
    net = nn.Sequential(nn.Linear(2, 1), nn.Dropout(0.5)).to(F64)
    with torch.no_grad():
        net[0].weight.copy_(t64([[0.8, -0.6]]))
        net[0].bias.fill_(0.1)
    return net


def batches(sizes=SIZES):
    out, start = [], 0
    for size in sizes:
        rows = slice(start, start + size)
        out.append(
            {"x": X[rows], "y": Y[rows], "g": G[rows], "index": torch.arange(start, start + size)}
        )
        start += size
    return out


def full_values(net):
    with torch.no_grad():
        out = net[0](X).squeeze(-1)
    onehot = nn.functional.one_hot(G, 3).to(F64)
    return {
        "objective": ((out - Y) ** 2).mean(),
        "mean_out": out.mean(),
        "rate": ((out > 0).to(F64) @ onehot) / onehot.sum(0),
        "pw": out - Y,
    }


def problem(recorder, mean_rhs=0.0, rate_bound=0.5):
    return ecl.Problem(
        recorder,
        [
            ecl.Equality("mean_out", rhs=mean_rhs),
            ecl.Inequality("rate", 3, bound=rate_bound),
            ecl.Equality("pw", pointwise=True, num_samples=10, tolerance=0.5),
        ],
    )


def test_pooled_values_equal_the_full_data_values():
    net = model()
    report = ecl.evaluate(problem(Recorder()), net, batches())
    full = full_values(net)
    assert report.num_samples == 10
    assert report.objective == pytest.approx(full["objective"].item(), abs=1e-14)
    assert_close(report["mean_out"].value, full["mean_out"].reshape(1), atol=1e-14)
    assert_close(report["rate"].value, full["rate"], atol=1e-14)
    assert_close(report["pw"].value, full["pw"].reshape(10, 1), atol=1e-14)
    # and the data makes naive pooling wrong: the mean of batch means, the mean of batch rates
    per_batch = [ecl.evaluate(problem(Recorder()), net, [b]) for b in batches()]
    naive_mean = sum(r["mean_out"].value for r in per_batch) / 3
    naive_rate = sum(r["rate"].value for r in per_batch) / 3
    assert (naive_mean - full["mean_out"]).abs().item() > 1e-3
    assert (naive_rate - full["rate"]).abs().max().item() > 1e-2


def test_pooling_does_not_depend_on_the_split():
    net = model()
    reports = [ecl.evaluate(problem(Recorder()), net, batches(s)) for s in ([10], [1] * 10, [4, 6])]
    for r in reports[1:]:
        assert r.objective == pytest.approx(reports[0].objective, abs=1e-14)
        assert_close(r["rate"].value, reports[0]["rate"].value, atol=1e-14)
        assert_close(r["mean_out"].value, reports[0]["mean_out"].value, atol=1e-14)


def test_verdicts_at_scalar_and_per_constraint_tolerances():
    net = model()
    full = full_values(net)
    # mean_out misses its rhs by 0.05; rate's bound sits between the group rates
    rates = full["rate"]
    bound = float(rates.min() + rates.max()) / 2
    p = problem(Recorder(), mean_rhs=full["mean_out"].item() + 0.05, rate_bound=bound)
    report = ecl.evaluate(p, net, batches())
    assert_close(report["mean_out"].violation, t64([-0.05]), atol=1e-12)
    assert report["mean_out"].tolerance == 1e-3 and not report["mean_out"].feasible
    assert_close(report["rate"].violation, rates - bound, atol=1e-14)
    assert report["rate"].satisfied.tolist() == (rates - bound <= 1e-3).tolist()
    assert not report["rate"].feasible and not report.feasible

    loose = ecl.evaluate(p, net, batches(), tolerance=0.1)
    assert loose["mean_out"].feasible and loose["mean_out"].tolerance == 0.1
    gap = float(rates.max()) - bound
    assert loose["rate"].feasible == (gap <= 0.1)

    mapped = ecl.evaluate(p, net, batches(), tolerance={"mean_out": 0.06, "rate": 1.0})
    assert mapped["mean_out"].feasible and mapped["rate"].feasible
    assert mapped["pw"].tolerance == 0.5  # the constraint's own tolerance=
    tight = ecl.evaluate(p, net, batches(), tolerance={"mean_out": 0.04})
    assert not tight["mean_out"].feasible and tight["rate"].tolerance == 1e-3


def test_pointwise_report():
    net = model()
    report = ecl.evaluate(problem(Recorder()), net, batches())
    pw = report["pw"]
    residual = full_values(net)["pw"].abs()
    assert pw.pointwise and pw.kind == "equality"
    assert pw.value.shape == (10, 1) and pw.satisfied.shape == (10, 1)
    assert pw.extra["num_samples"] == 10
    assert pw.extra["mean_excess"] == pytest.approx(residual.mean().item(), abs=1e-14)
    assert pw.extra["max_excess"] == pytest.approx(residual.max().item(), abs=1e-14)
    assert pw.extra["fraction_satisfied"] == pytest.approx((residual <= 0.5).double().mean().item())
    assert 0 < pw.extra["fraction_satisfied"] < 1 and not pw.feasible
    as_dict = report.to_dict()
    assert as_dict["constraints"]["pw"]["max_excess"] == pw.extra["max_excess"]
    assert as_dict["constraints"]["rate"]["value"] == report["rate"].value.tolist()
    assert "INFEASIBLE" in str(report) and "pw (equality)" in str(report)


def test_exact_flag_grad_mode_and_model_mode():
    recorder = Recorder()
    net = model()
    net.train()
    ecl.evaluate(problem(recorder), net, batches())
    assert recorder.exact == [True] * 3
    assert recorder.training == [False] * 3  # eval mode: dropout off
    assert recorder.grad == [False] * 3
    assert net.training  # restored

    recorder = Recorder()
    net.eval()
    surrogate = ecl.evaluate(problem(recorder), net, batches(), exact=False, inference=False)
    assert recorder.exact == [False] * 3 and recorder.grad == [True] * 3
    assert not net.training  # left in eval mode, as it was
    onehot = nn.functional.one_hot(G, 3).to(F64)
    with torch.no_grad():
        smooth = (torch.sigmoid(net[0](X).squeeze(-1)) @ onehot) / onehot.sum(0)
    assert_close(surrogate["rate"].value, smooth, atol=1e-14)


def test_model_mode_restored_when_evaluate_raises():
    def broken(model, batch):
        raise RuntimeError("boom")

    net = model()
    net.train()
    with pytest.raises(RuntimeError, match="boom"):
        ecl.evaluate(ecl.Problem(broken), net, batches())
    assert net.training


def test_evaluate_without_exact_keyword_and_without_objective():
    def plain(model, batch):
        return {"mean_out": model(batch["x"]).mean()}

    report = ecl.evaluate(ecl.Problem(plain, [ecl.Equality("mean_out")]), model(), batches())
    assert report.objective is None
    assert report.to_dict()["objective"] is None


def test_evaluate_input_errors():
    p = problem(Recorder())
    with pytest.raises(ValueError, match="produced no batches"):
        ecl.evaluate(p, model(), [])
    with pytest.raises(TypeError, match="wrap a single batch in a list"):
        ecl.evaluate(p, model(), batches()[0])


# Guards a fixed core bug; before the fix: Problem.validate accepts an ecl.Ratio objective but keeps
# only its value, so ecl.evaluate pools it as a batch-size-weighted mean instead of by its sums
def test_ratio_objective_is_pooled_by_its_sums():
    w = t64([1.0, 1.0, 1.0, 5.0, 0.5])
    loss = t64([1.0, 2.0, 3.0, 4.0, 5.0])

    def evaluate(model, batch):  # a weighted mean loss
        return {"objective": ecl.Ratio((batch["w"] * batch["l"]).sum(), batch["w"].sum())}

    split = [{"w": w[:3], "l": loss[:3]}, {"w": w[3:], "l": loss[3:]}]
    report = ecl.evaluate(ecl.Problem(evaluate), nn.Identity(), split)
    assert report.objective == pytest.approx(((w * loss).sum() / w.sum()).item(), abs=1e-12)
