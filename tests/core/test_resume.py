"""Exact resume: a run of N steps equals k steps → state_dict → torch.save → torch.load
(weights_only=True) → a fresh solver built under another global seed → N − k more steps.
Parameters, multipliers, dual state, optimizer/scheduler state, history and the global RNG
states after the run are compared bit for bit."""

from __future__ import annotations

import io
import random
import re

import numpy as np
import pytest
import torch
from torch import nn

import eclearn as ecl

from .conftest import (
    A_EQ,
    A_VEC,
    B_EQ,
    F64,
    Vector,
    active_inactive,
    assert_close,
    full_batch,
    reseed,
    vector_equality,
)

N_ROWS = 20


def data() -> dict[str, torch.Tensor]:
    """Fixed data, independent of the global seed."""
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(N_ROWS, 3, generator=gen, dtype=F64)
    y = x @ torch.tensor([1.0, -2.0, 0.5], dtype=F64) + 0.1 * torch.randn(
        N_ROWS, generator=gen, dtype=F64
    )
    g = torch.arange(N_ROWS) % 2
    return {"x": x, "y": y, "g": g}


class Augment:
    """Noise augmentation drawing from torch's and NumPy's global RNGs."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, batch):
        self.calls += 1
        x = batch["x"]
        noise = 0.05 * torch.randn_like(x) + 0.01 * torch.from_numpy(
            np.random.standard_normal(x.shape)
        )
        return {**batch, "x": x + noise}


def mlp(dropout: float = 0.3) -> nn.Module:
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Dropout(dropout), nn.Linear(8, 1)).to(F64)


def regression_problem(pointwise: bool = False) -> ecl.Problem:
    def evaluate(model, batch):
        out = model(batch["x"].to(model[0].weight.dtype)).squeeze(-1)
        onehot = nn.functional.one_hot(batch["g"], 2).to(out.dtype)
        values = {
            "objective": ((out - batch["y"].to(out.dtype)) ** 2).mean(),
            "group_mean": ecl.Ratio(out @ onehot, onehot.sum(0)),
            "cap": out.mean(),
        }
        if pointwise:
            values["interp"] = out - batch["y"].to(out.dtype)
        return values

    constraints = [
        ecl.Equality("group_mean", 2, rhs=[0.1, -0.1]),
        ecl.Inequality("cap", bound=0.0),
    ]
    if pointwise:
        constraints.append(ecl.Equality("interp", pointwise=True, num_samples=N_ROWS))
    return ecl.Problem(evaluate, constraints)


# --- the four set-ups ------------------------------------------------------------------
def full_batch_list():
    q = vector_equality()
    model = q.model()
    solver = ecl.PrimalDual(
        q.problem, model, torch.optim.SGD(model.parameters(), lr=0.3), ecl.dual.NuPI(0.2), dtype=F64
    )
    return solver, full_batch()


def shuffled_dropout_augmented():
    model = mlp()
    solver = ecl.PrimalDual(
        regression_problem(),
        model,
        torch.optim.Adam(model.parameters(), lr=0.01),
        ecl.dual.SGD(0.5),
        dtype=F64,
    )
    return solver, ecl.Batches(data(), batch_size=6, shuffle=True, transform=Augment())


def scheduler_momentum(interval: str = "step"):
    model = mlp(dropout=0.0)
    opt = torch.optim.SGD(
        model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3
    )
    sched = torch.optim.lr_scheduler.StepLR(
        opt, step_size=3 if interval == "step" else 1, gamma=0.5
    )
    solver = ecl.PrimalDual(
        regression_problem(),
        model,
        opt,
        ecl.dual.Adam(0.05),
        scheduler=sched,
        scheduler_interval=interval,
        dtype=F64,
    )
    return solver, ecl.Batches(data(), batch_size=6, shuffle=True)


def pointwise_adam():
    model = mlp()
    solver = ecl.PrimalDual(
        regression_problem(pointwise=True),
        model,
        torch.optim.SGD(model.parameters(), lr=0.02),
        ecl.dual.Adam(0.05),
        dtype=F64,
    )
    return solver, ecl.Batches(data(), batch_size=6, shuffle=True, transform=Augment())


SETUPS = {
    "full-batch-list": full_batch_list,
    "shuffled-dropout-augmented": shuffled_dropout_augmented,
    "scheduler-momentum-step": scheduler_momentum,
    "scheduler-momentum-epoch": lambda: scheduler_momentum("epoch"),
    "pointwise-adam": pointwise_adam,
}


SUMMARY = re.compile(r"^multiplier/.+/(mean|norm)$")


def snapshot(solver: ecl.PrimalDual) -> dict:
    """Everything resumable, deep-copied through torch.save/torch.load, plus the global RNGs.

    The whole-table summaries of pointwise multipliers (running float64 sums, the columns
    most fragile under resume) are also copied out into ``"summaries"``."""
    state = solver.state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)  # deep copy through serialisation
    buffer.seek(0)
    copy = torch.load(buffer, weights_only=True)
    copy["global_rng"] = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    columns = [i for i, c in enumerate(copy["history"]["columns"]) if SUMMARY.match(c)]
    data = copy["history"]["data"]
    copy["summaries"] = data[:, columns].clone()
    return copy


def assert_resumed(expected: dict, got: dict) -> None:
    """Bitwise equality of everything, the running-sum summaries included."""
    assert_same(expected, got)


def assert_same(a, b, path: str = "") -> None:
    """Recursive bitwise equality of nested state (tensors, arrays, containers, scalars)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, path
        same = a.shape == b.shape and bool(
            torch.equal(a, b)
            or (
                a.is_floating_point()
                and torch.equal(a.isnan(), b.isnan())
                and torch.equal(a.nan_to_num(), b.nan_to_num())
            )
        )
        if not same:
            where = (a != b).nonzero()[:5].tolist() if a.shape == b.shape else "shape"
            raise AssertionError(f"{path} differs at {where}")
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), f"{path} differs"
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{path}: keys {sorted(a)} vs {sorted(b)}"
        for key in a:
            if key == "current" and path.endswith("rng"):
                continue  # the RNG at save time; compared via global_rng instead
            assert_same(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b or (a != a and b != b), f"{path}: {a!r} != {b!r}"


def straight_run(make, steps: int):
    reseed(0)
    solver, batches = make()
    solver.fit(batches, max_steps=steps, warn=False)
    return solver, snapshot(solver)


def resumed_run(make, first: int, steps: int, via_file=None):
    reseed(0)
    solver, batches = make()
    solver.fit(batches, max_steps=first, warn=False)
    if via_file is not None:
        solver.save(via_file)
    else:
        buffer = io.BytesIO()
        torch.save(solver.state_dict(), buffer)
    del solver, batches
    reseed(987)  # a different process: other global seed, other initial weights
    torch.rand(13)
    fresh, batches = make()
    if via_file is not None:
        fresh.load(via_file)
    else:
        buffer.seek(0)
        fresh.load_state_dict(torch.load(buffer, weights_only=True))
    fresh.fit(batches, max_steps=steps - first, warn=False)
    return fresh, snapshot(fresh)


# Resuming at an epoch boundary with scheduler_interval="epoch", the fresh optimizer has not
# stepped when the scheduler steps first; torch warns, the schedule itself is unaffected.
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
@pytest.mark.parametrize("setup", list(SETUPS))
@pytest.mark.parametrize("first", [3, 4, 6], ids=lambda k: f"stop@{k}")
def test_resume_is_bitwise_identical(setup, first):
    """4 batches per epoch: stop mid-epoch (3, 6) and after the last batch of an epoch (4)."""
    make = SETUPS[setup]
    steps = 11
    reference, expected = straight_run(make, steps)
    resumed, got = resumed_run(make, first, steps)
    assert_resumed(expected, got)
    assert len(resumed.history) == steps
    if "scheduler" in setup:  # the schedule really moves the lr within the run
        assert len(set(resumed.history["lr"].tolist())) >= 3
    assert_same(reference.multipliers, resumed.multipliers)
    for p, q in zip(reference.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_resume_through_save_and_load_files(tmp_path):
    make = SETUPS["pointwise-adam"]
    _, expected = straight_run(make, 9)
    path = tmp_path / "run" / "checkpoint.pt"
    _, got = resumed_run(make, 5, 9, via_file=path)
    assert_resumed(expected, got)
    assert path.is_file() and not list(path.parent.glob("*.tmp"))


# Guards a fixed core bug; before the fix: IndexedMultipliers.state_dict() omits the running sums;
# load recomputes them as table.sum(), which rounds differently from the incremental sums, so
# the history column multiplier/<name>/mean (and /norm) differs in the last bits after a resume
def test_pointwise_running_sums_resume_bitwise():
    make = SETUPS["pointwise-adam"]
    _, expected = straight_run(make, 11)
    _, got = resumed_run(make, 3, 11)
    assert torch.equal(expected["summaries"], got["summaries"])


def test_the_stream_is_really_random():
    """Guard against a vacuous resume test: the set-up draws shuffles, augmentation noise and
    dropout masks from the global RNGs, so the same weights under another seed train
    differently."""
    make = SETUPS["shuffled-dropout-augmented"]
    reference, _ = straight_run(make, 6)
    reseed(0)
    solver, batches = make()  # the same initial weights as the reference
    reseed(1)
    solver.fit(batches, max_steps=6, warn=False)
    assert not torch.equal(reference.model[0].weight, solver.model[0].weight)
    assert batches.transform.calls == 6


@pytest.mark.parametrize("setup", ["shuffled-dropout-augmented", "scheduler-momentum-epoch"])
def test_fit_in_pieces_equals_one_fit(setup):
    make = SETUPS[setup]
    _, expected = straight_run(make, 13)
    reseed(0)
    solver, batches = make()
    for steps in (2, 5, 1, 5):
        solver.fit(batches, max_steps=steps, warn=False)
    assert_same(expected, snapshot(solver))  # bitwise, summaries included


def test_epochs_in_pieces_equal_one_fit():
    make = SETUPS["pointwise-adam"]
    reseed(0)
    whole, batches = make()
    whole.fit(batches, epochs=3, warn=False)
    expected = snapshot(whole)
    reseed(0)
    pieces, batches = make()
    r1 = pieces.fit(batches, epochs=1, warn=False)
    r2 = pieces.fit(batches, epochs=2, warn=False)
    assert (r1.epochs, r1.steps, r2.epochs, r2.steps) == (1, 4, 3, 12)
    assert_same(expected, snapshot(pieces))


def test_state_dict_contents_and_loaded_counters():
    reseed(0)
    solver, batches = pointwise_adam()
    solver.fit(batches, max_steps=6, warn=False)
    state = solver.state_dict()
    assert {
        "model",
        "primal_optimizer",
        "scheduler",
        "multipliers",
        "dual_state",
        "counters",
        "stream",
        "settings",
        "callbacks",
        "rng",
        "history",
        "problem",
        "format",
    } <= set(state)
    assert state["counters"] == {"step": 6, "dual_steps": 6}
    assert (state["stream"]["epoch"], state["stream"]["batch_in_epoch"]) == (1, 2)
    assert set(state["dual_state"]["interp"]) == {"exp_avg", "exp_avg_sq", "steps"}
    fresh, _ = pointwise_adam()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert (fresh.step, fresh.epoch, fresh.dual_steps) == (6, 1, 6)
    assert_same(solver.multipliers, fresh.multipliers)
    np.testing.assert_array_equal(solver.history.to_numpy(), fresh.history.to_numpy())


# Guards a fixed core bug; before the fix: state_dict() returns the live model/optimizer tensors
# (only multipliers, dual state and history are copied), so an in-memory snapshot changes as
# training continues
def test_in_memory_state_dict_is_a_snapshot():
    reseed(0)
    solver, batches = scheduler_momentum()
    solver.fit(batches, max_steps=4, warn=False)
    state = solver.state_dict()
    expected = snapshot(solver)
    solver.fit(batches, max_steps=3, warn=False)  # keeps training after the snapshot
    solver.load_state_dict(state)
    assert_same(expected, snapshot(solver))


def other_problem(kind: str) -> ecl.Problem:
    constraints = {
        "renamed": [ecl.Equality("group_means", 2), ecl.Inequality("cap")],
        "resized": [ecl.Equality("group_mean", 3), ecl.Inequality("cap")],
        "kind": [ecl.Equality("group_mean", 2), ecl.Equality("cap")],
        "extra": [
            ecl.Equality("group_mean", 2),
            ecl.Inequality("cap"),
            ecl.Equality("interp", pointwise=True, num_samples=N_ROWS),
        ],
        "table": [
            ecl.Equality("group_mean", 2),
            ecl.Inequality("cap", pointwise=True, num_samples=4),
        ],
    }[kind]
    return ecl.Problem(lambda model, batch: {}, constraints)


@pytest.mark.parametrize(
    ("kind", "named"),
    [
        ("renamed", "group_means"),
        ("resized", "'size': 3"),
        ("kind", "'kind': 'equality'"),
        ("extra", "interp"),
        ("table", "'num_samples': 4"),
    ],
)
def test_loading_into_a_different_problem_names_the_mismatch(kind, named):
    reseed(0)
    solver, batches = shuffled_dropout_augmented()
    solver.fit(batches, max_steps=2, warn=False)
    state = solver.state_dict()
    model = mlp()
    other = ecl.PrimalDual(other_problem(kind), model, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ecl.ProblemError, match="saved for different constraints") as info:
        other.load_state_dict(state)
    assert named in str(info.value)


def test_unknown_checkpoint_format_is_refused():
    solver, _ = full_batch_list()
    state = solver.state_dict()
    state["format"] = 99
    with pytest.raises(ValueError, match="unsupported checkpoint format 99"):
        solver.load_state_dict(state)


def test_dtype_round_trip_is_exact_and_training_continues_identically():
    """float32 multipliers → float64 → float32 is exact, so the run is unchanged."""

    def make():
        model = mlp().float()
        solver = ecl.PrimalDual(
            regression_problem(pointwise=True),
            model,
            torch.optim.SGD(model.parameters(), lr=0.02),
            ecl.dual.Adam(0.05),
            dtype=torch.float32,
        )
        return solver, ecl.Batches(data(), batch_size=6, shuffle=True)

    _, expected = straight_run(make, 8)
    reseed(0)
    solver, batches = make()
    solver.fit(batches, max_steps=5, warn=False)
    before = {k: v.clone() for k, v in solver.multipliers.items()}
    assert before["interp"].dtype == torch.float32
    assert solver.to(dtype=torch.float64) is solver
    assert solver.dtype == torch.float64
    for name, value in solver.multipliers.items():
        assert value.dtype == torch.float64
        assert torch.equal(value, before[name].double())
    # Adam's moments of float64 multipliers are kept in float32 (half the memory)
    assert solver.dual_state["interp"]["exp_avg"].dtype == torch.float32
    solver.to(dtype=torch.float32).to("cpu")
    for name, value in solver.multipliers.items():
        assert value.dtype == torch.float32 and torch.equal(value, before[name])
    solver.fit(batches, max_steps=3, warn=False)
    assert_same(expected, snapshot(solver))


def test_float64_multipliers_train_a_float32_model():
    q = active_inactive()
    model = q.model().float()
    solver = ecl.PrimalDual(
        q.problem, model, torch.optim.SGD(model.parameters(), lr=0.7), ecl.dual.SGD(0.5)
    )
    solver.to(dtype=torch.float64)
    result = solver.fit(full_batch(), max_steps=120)
    assert result.multipliers["active"].dtype == torch.float64
    assert_close(result.multipliers["active"], q.multipliers["active"], atol=1e-4)


def device_problem() -> ecl.Problem:
    """The vector-equality problem with its constants moved to the parameter's device."""

    def evaluate(model, batch):
        theta = model()
        a, matrix = A_VEC.to(theta.device), A_EQ.to(theta.device)
        return {"objective": 0.5 * ((theta - a) ** 2).sum(), "eq": matrix @ theta}

    return ecl.Problem(evaluate, [ecl.Equality("eq", 2, rhs=B_EQ)])


def solver_on(device: str) -> ecl.PrimalDual:
    model = Vector(torch.zeros(4))
    return ecl.PrimalDual(
        device_problem(),
        model,
        torch.optim.SGD(model.parameters(), lr=0.7),
        ecl.dual.NuPI(0.2, kp=0.5),
        dtype=F64,
        device=device,
    )


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
        ),
    ],
)
def test_device_round_trip(device, tmp_path):
    """Train on ``device``, save, load into a CPU solver, move back with ``to("cpu")``."""
    solver = solver_on(device)
    solver.fit(full_batch(), max_steps=120)  # batches on the CPU are moved by the solver
    mu = solver.multipliers["eq"]
    assert mu.device.type == device and solver.model.theta.device.type == device
    dual_state = [v for state in solver.dual_state.values() for v in state.values()]
    assert dual_state and all(v.device.type == device for v in dual_state)
    assert_close(mu.cpu(), vector_equality().multipliers["eq"], atol=1e-4)
    solver.save(tmp_path / "checkpoint.pt")
    cpu = solver_on("cpu")
    cpu.load(tmp_path / "checkpoint.pt")
    assert torch.equal(cpu.multipliers["eq"], mu.cpu())
    assert torch.equal(cpu.model.theta.detach(), solver.model.theta.detach().cpu())
    np.testing.assert_array_equal(cpu.history.to_numpy(), solver.history.to_numpy())
    assert solver.to("cpu") is solver
    assert solver.multipliers["eq"].device.type == "cpu"
    solver.fit(full_batch(), max_steps=5)
    cpu.fit(full_batch(), max_steps=5)
    assert_close(solver.multipliers["eq"], cpu.multipliers["eq"], atol=1e-12)
    assert len(solver.history) == 125


class Stateful:
    """A re-iterable that keeps its own position and checkpoints it (like a stateful loader);
    the solver must hand it its state back instead of replaying the epoch."""

    def __init__(self, n: int = 4) -> None:
        self.n, self.pos, self.loaded = n, 0, None
        self.x = torch.linspace(-1, 1, n, dtype=F64)

    def __iter__(self):
        while self.pos < self.n:
            self.pos += 1
            yield {"x": self.x[self.pos - 1 : self.pos]}
        self.pos = 0

    def state_dict(self):
        return {"pos": self.pos}

    def load_state_dict(self, state):
        self.loaded = dict(state)
        self.pos = state["pos"]


def stateful_setup():
    def evaluate(model, batch):
        theta = model()
        return {"objective": 0.5 * ((theta - batch["x"]) ** 2).sum(), "h": theta.sum()}

    problem = ecl.Problem(evaluate, [ecl.Equality("h", rhs=0.25)])
    model = Vector([0.0])
    return ecl.PrimalDual(problem, model, torch.optim.SGD(model.parameters(), lr=0.3), dtype=F64)


@pytest.mark.parametrize("first", [3, 4])
def test_resume_hands_a_stateful_iterable_its_state(first):
    reference = stateful_setup()
    reference.fit(Stateful(), max_steps=10, warn=False)
    solver = stateful_setup()
    solver.fit(Stateful(), max_steps=first, warn=False)
    state = solver.state_dict()
    assert state["stream"]["batches"] == {"pos": first}
    fresh, stream = stateful_setup(), Stateful()
    fresh.load_state_dict(state)
    fresh.fit(stream, max_steps=10 - first, warn=False)
    assert stream.loaded == {"pos": first}
    np.testing.assert_array_equal(fresh.history.to_numpy(), reference.history.to_numpy())


# Guards a fixed core bug; before the fix: fit() with a new but equal iterable (fit([batch], ...) on
# each call, as the library's own error message suggests) restarts the epoch from its first
# batch and never counts the partial one, whereas after load_state_dict the same call resumes
# mid-epoch; so fit(max_steps=a) + fit(max_steps=b) != fit(max_steps=a+b)
def test_fit_in_pieces_with_equal_but_new_lists():
    def batches():
        return [{"x": t} for t in torch.linspace(-1, 1, 4, dtype=F64).reshape(4, 1)]

    whole = stateful_setup()
    whole.fit(batches(), max_steps=6, warn=False)
    pieces = stateful_setup()
    pieces.fit(batches(), max_steps=3, warn=False)
    pieces.fit(batches(), max_steps=3, warn=False)
    np.testing.assert_array_equal(pieces.history.to_numpy(), whole.history.to_numpy())


# Guards a fixed core bug; before the fix: a pass ended only when the next batch was asked
# for, so max_steps stopping at an epoch's last batch left that epoch uncounted: 1500 steps on
# a one-batch list reported 1499 epochs and a following fit(epochs=3) ran only 2 steps
@pytest.mark.parametrize("kind", ["list", "batches"])
def test_max_steps_at_an_epochs_last_batch_counts_the_epoch(kind):
    reseed(0)
    solver, batches = pointwise_adam()  # 4 batches per epoch
    ended: list[int] = []

    class Count(ecl.Callback):
        def on_epoch_end(self, view):
            ended.append(view.step)

    if kind == "list":
        batches = [next(iter(batches))]  # one batch: every step ends an epoch
    per_epoch = len(batches)
    first = solver.fit(batches, max_steps=3 * per_epoch, callbacks=[Count()], warn=False)
    assert (first.steps, first.epochs) == (3 * per_epoch, 3)
    assert ended == [per_epoch, 2 * per_epoch, 3 * per_epoch]
    second = solver.fit(batches, epochs=3, warn=False)
    assert (second.steps, second.epochs) == (6 * per_epoch, 6)
