"""Collocation samplers and the combined batch stream."""

from __future__ import annotations

import itertools
import math
import operator

import pytest
import torch

from eclearn.pde import CollocationBatches, FixedPoints, PairedFaces, UniformSampler

TWO_PI = 2 * math.pi


def box(n: int = 100, **kwargs) -> UniformSampler:
    return UniformSampler((0.0, 0.0), (TWO_PI, 1.0), n, **kwargs)


def test_uniform_points_lie_in_the_box_and_are_fresh():
    s = box(2000)
    a, b = s(), s()
    assert a.shape == (2000, 2) and a.dtype == torch.get_default_dtype()
    assert (a >= 0).all() and (a[:, 0] <= TWO_PI).all() and (a[:, 1] <= 1).all()
    assert not torch.equal(a, b)
    assert a[:, 0].mean().item() == pytest.approx(math.pi, abs=0.2)
    assert a[:, 1].std().item() == pytest.approx(1 / math.sqrt(12), abs=0.02)


def test_uniform_dtype_and_device():
    pts = box(dtype=torch.float64, device="cpu")()
    assert pts.dtype == torch.float64 and pts.device.type == "cpu"


def test_global_rng_checkpoint_reproduces_the_stream():
    torch.manual_seed(3)
    s = box()
    state = torch.get_rng_state()
    first = [s() for _ in range(3)]
    torch.set_rng_state(state)
    assert all(torch.equal(p, q) for p, q in zip(first, [s() for _ in range(3)], strict=True))


def test_private_generator_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a = box(generator=torch.Generator().manual_seed(1))()
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, box(generator=torch.Generator().manual_seed(1))())


def test_face_pins_one_coordinate():
    s = box(50)
    ic = s.face(1, 0.0)
    pts = ic()
    assert pts.shape == (50, 2) and torch.all(pts[:, 1] == 0)
    assert pts[:, 0].std() > 0
    right = s.face(0, TWO_PI, num_points=7)()
    assert right.shape == (7, 2) and torch.all(right[:, 0] == torch.tensor(TWO_PI).float())
    with pytest.raises(ValueError, match=r"value=2\.0.*\[0\.0, 1\.0\]"):
        s.face(1, 2.0)
    with pytest.raises(ValueError, match=r"dim=2"):
        s.face(2, 0.0)


@pytest.mark.parametrize(
    ("low", "high", "n", "match"),
    [
        ((0.0, 1.0), (1.0, 0.0), 5, "low <= high"),
        ((0.0,), (1.0, 1.0), 5, "one bound per coordinate in both"),
        ((0.0, 0.0), (1.0, math.inf), 5, "finite"),
        ([[0.0]], [[1.0]], 5, "one bound per coordinate"),
        ((0.0,), (1.0,), 0, "num_points"),
        ((0.0,), (1.0,), 2.5, "num_points"),
    ],
)
def test_uniform_sampler_validates(low, high, n, match):
    with pytest.raises(ValueError, match=match):
        UniformSampler(low, high, n)


def test_fixed_points_serve_the_same_set_with_ids():
    pts = torch.rand(10, 2)
    full = FixedPoints(pts)()
    assert torch.equal(full[""], pts)
    assert full["index"].dtype == torch.int64 and torch.equal(full["index"], torch.arange(10))
    sub = FixedPoints(pts, batch_size=4)()
    assert sub[""].shape == (4, 2) and sub["index"].unique().numel() == 4
    assert torch.equal(sub[""], pts[sub["index"]])


def test_sampler_fixed_draws_once():
    fixed = box(30).face(1, 0.0).fixed()
    assert len(fixed) == 30
    assert torch.equal(fixed()[""], fixed()[""])


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((torch.rand(5),), {}, r"\[N, d\]"),
        ((torch.full((2, 2), math.nan),), {}, "NaN"),
        ((torch.rand(5, 2),), {"batch_size": 6}, "larger than the 5 points"),
        ((torch.rand(5, 2),), {"batch_size": 0}, "batch_size"),
    ],
)
def test_fixed_points_validate(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        FixedPoints(*args, **kwargs)


def test_paired_faces_match_except_in_dim():
    pair = PairedFaces(box(20), dim=0)()
    left, right = pair["left"], pair["right"]
    assert torch.all(left[:, 0] == 0)
    assert torch.all(right[:, 0] == torch.tensor(TWO_PI).float())
    assert torch.equal(left[:, 1], right[:, 1])


def test_paired_faces_over_fixed_points_keep_ids():
    base = FixedPoints(torch.rand(8, 2), batch_size=3)
    pair = PairedFaces(base, dim=0, low=0.0, high=TWO_PI)()
    assert set(pair) == {"left", "right", "index"}
    assert torch.equal(pair["left"][:, 1], base.points[pair["index"], 1])
    with pytest.raises(ValueError, match="low= and high="):
        PairedFaces(base, dim=0)
    with pytest.raises(ValueError, match=r"dim=3"):
        PairedFaces(box(), dim=3)
    with pytest.raises(TypeError, match="sampler"):
        PairedFaces(torch.rand(3, 2), dim=0)


def test_collocation_batches_combine_named_samplers():
    s = box(16)
    batches = CollocationBatches(
        {"pde": s, "ic": s.face(1, 0.0).fixed(), "bc": PairedFaces(box(8), dim=0)}
    )
    batch = next(iter(batches))
    assert list(batch) == ["pde", "ic", "ic_index", "bc_left", "bc_right"]
    assert batch["pde"].shape == (16, 2) and batch["bc_left"].shape == (8, 2)
    assert torch.equal(batch["ic_index"], torch.arange(16))
    # endless and re-iterable, fresh interior points every step
    steps = list(itertools.islice(batches, 5))
    assert len(steps) == 5 and not torch.equal(steps[0]["pde"], steps[1]["pde"])
    with pytest.raises(TypeError, match=r"endless.*max_steps"):
        len(batches)
    assert operator.length_hint(batches, -1) == -1


def test_collocation_batches_epochs():
    batches = CollocationBatches({"pde": box(4)}, steps_per_epoch=3)
    assert len(batches) == 3
    assert len(list(batches)) == 3 and len(list(batches)) == 3


def test_collocation_batches_resume_from_rng_state():
    batches = CollocationBatches({"pde": box(4), "bc": PairedFaces(box(4), 0)})
    state = torch.get_rng_state()
    a = list(itertools.islice(batches, 2))
    torch.set_rng_state(state)
    b = list(itertools.islice(batches, 2))
    assert all(torch.equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in x)


def test_collocation_batches_validate():
    with pytest.raises(ValueError, match="non-empty mapping"):
        CollocationBatches({})
    with pytest.raises(TypeError, match="'pde' is a Tensor"):
        CollocationBatches({"pde": torch.rand(3, 2)})
    with pytest.raises(ValueError, match="steps_per_epoch"):
        CollocationBatches({"pde": box()}, steps_per_epoch=0)
    clash = CollocationBatches({"bc": PairedFaces(box(), 0), "bc_left": box()})
    with pytest.raises(ValueError, match=r"\['bc_left'\].*rename"):
        clash.sample()
    bad = CollocationBatches({"pde": lambda: [1, 2]})
    with pytest.raises(TypeError, match="'pde' returned a list"):
        bad.sample()
