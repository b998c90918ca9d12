"""Group-conditional rates: hand-computed values, gradients, pooling, validation, properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eclearn.fairness import (
    SURROGATES,
    demographic_parity_gap,
    disparity,
    equalized_odds_gap,
    false_positive_rate,
    group_mean,
    indicator,
    overall_positive_rate,
    positive_rate,
    true_positive_rate,
)
from eclearn.ratio import Ratio

# Tiny example: 6 people in groups 0, 1, 2 of num_groups = 4 (group 3 is empty).
#   p      0.9  0.2  0.6  0.4  0.7  0.1
#   group  0    0    0    1    1    2
#   label  1    0    0    1    1    0
#   exact  1    0    1    0    1    0
P = [0.9, 0.2, 0.6, 0.4, 0.7, 0.1]
G = [0, 0, 0, 1, 1, 2]
Y = [1, 0, 0, 1, 1, 0]
K = 4


def tensors(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.tensor(P, dtype=dtype), torch.tensor(G), torch.tensor(Y)


def sigma(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def close(actual: torch.Tensor, expected: list[float]) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype))


def test_indicator_values() -> None:
    p = torch.tensor([0.0, 0.3, 0.5, 0.6, 1.0], dtype=torch.float64)
    close(indicator(p, "exact"), [0, 0, 0, 1, 1])  # strict: 0.5 is not positive
    # σ(8·(p − 0.5)): σ(−4) = 0.017986, σ(−1.6) = 0.167982, 0.5, σ(0.8) = 0.689974, σ(4) = 0.982014
    close(indicator(p), [sigma(-4), sigma(-1.6), 0.5, sigma(0.8), sigma(4)])
    # clamp(0.5 + 2·(p − 0.5), 0, 1) = clamp(2p − 0.5, 0, 1)
    close(indicator(p, "hinge"), [0.0, 0.1, 0.5, 0.7, 1.0])
    # A larger temperature is closer to the step; the slope at the threshold is T/4.
    close(indicator(p, "hinge", temperature=40.0), [0.0, 0.0, 0.5, 1.0, 1.0])
    for surrogate in ("sigmoid", "hinge"):
        q = torch.tensor([0.5], dtype=torch.float64, requires_grad=True)
        (slope,) = torch.autograd.grad(indicator(q, surrogate, temperature=8.0).sum(), q)
        close(slope, [2.0])
    assert not indicator(p.requires_grad_(), "exact").requires_grad


def test_exact_rates_by_hand() -> None:
    p, g, y = tensors()
    options = {"surrogate": "exact"}
    rate = positive_rate(p, g, K, **options)
    close(rate.numerator, [2, 1, 0, 0])
    close(rate.denominator, [3, 2, 1, 0])
    close(rate.value, [2 / 3, 1 / 2, 0, 0])  # the empty group reads 0
    overall = overall_positive_rate(p, **options)
    assert overall.value.shape == (1,)
    close(overall.value, [1 / 2])
    close(positive_rate(p, **options).value, [1 / 2])
    tpr = true_positive_rate(p, y, g, K, **options)
    close(tpr.denominator, [1, 2, 0, 0])
    close(tpr.value, [1, 1 / 2, 0, 0])
    close(true_positive_rate(p, y, **options).value, [2 / 3])
    fpr = false_positive_rate(p, y, g, K, **options)
    close(fpr.denominator, [2, 0, 1, 0])
    close(fpr.value, [1 / 2, 0, 0, 0])
    close(false_positive_rate(p, y, **options).value, [1 / 3])
    close(demographic_parity_gap(p, g, K, **options), [2 / 3 - 1 / 2, 0, -1 / 2, 0])
    tpr_gaps = [1 - 2 / 3, 1 / 2 - 2 / 3, 0, 0]  # groups 2 and 3 have no label-1 member
    fpr_gaps = [1 / 2 - 1 / 3, 0, -1 / 3, 0]  # groups 1 and 3 have no label-0 member
    close(equalized_odds_gap(p, y, g, K, **options), [*tpr_gaps, *fpr_gaps])
    assert disparity(rate) == pytest.approx(2 / 3)  # the empty group 3 is skipped


def test_smoothed_rates_by_hand() -> None:
    p, g, _ = tensors()
    s = [sigma(8 * (v - 0.5)) for v in P]  # 0.9608, 0.0832, 0.6900, 0.3100, 0.8320, 0.0392
    close(positive_rate(p, g, K).value, [(s[0] + s[1] + s[2]) / 3, (s[3] + s[4]) / 2, s[5], 0])
    close(overall_positive_rate(p).value, [sum(s) / 6])
    # hinge: clamp(2p − 0.5, 0, 1) = 1, 0, 0.7, 0.3, 0.9, 0
    hinge = positive_rate(p, g, K, surrogate="hinge")
    close(hinge.value, [1.7 / 3, 1.2 / 2, 0, 0])
    close(overall_positive_rate(p, surrogate="hinge").value, [2.9 / 6])
    close(
        demographic_parity_gap(p, g, K, surrogate="hinge"),
        [1.7 / 3 - 2.9 / 6, 0.6 - 2.9 / 6, -2.9 / 6, 0],
    )


def test_dtype_follows_scores() -> None:
    p, g, _ = tensors(torch.float32)
    rate = positive_rate(p, g, K)
    assert rate.numerator.dtype == rate.denominator.dtype == torch.float32
    assert demographic_parity_gap(p, g, K).dtype == torch.float32


@pytest.mark.parametrize("surrogate", ["sigmoid", "hinge"])
def test_raising_a_members_score_raises_its_groups_rate(surrogate: str) -> None:
    p, g, y = tensors()
    p.requires_grad_()
    rate = positive_rate(p, g, K, surrogate=surrogate).value
    (grad,) = torch.autograd.grad(rate[1], p)
    assert (grad[3:5] > 0).all()  # group 1 members; 0.4 and 0.7 lie on the hinge's ramp
    assert (grad[[0, 1, 2, 5]] == 0).all()
    (grad,) = torch.autograd.grad(demographic_parity_gap(p, g, K, surrogate=surrogate)[0], p)
    assert grad[2] > 0  # a member of group 0 (on the ramp): 1/3 − 1/6 of the local slope
    assert grad[3] < 0  # a non-member raises the overall rate only
    if surrogate == "hinge":
        close(grad, [0, 0, 2 * (1 / 3 - 1 / 6), -2 / 6, -2 / 6, 0])
    (grad,) = torch.autograd.grad(equalized_odds_gap(p, y, g, K, surrogate=surrogate)[1], p)
    assert grad[4] > 0  # TPR gap of group 1 rises with its positive member's score


@pytest.mark.parametrize("surrogate", SURROGATES)
def test_pooling_halves_equals_the_full_rate(surrogate: str) -> None:
    generator = torch.Generator().manual_seed(0)
    p = torch.rand(101, generator=generator, dtype=torch.float64)
    g = torch.randint(0, 3, (101,), generator=generator)
    y = torch.randint(0, 2, (101,), generator=generator)
    g[:30] = 0  # unequal group counts in the two halves
    for rate in (
        lambda s: positive_rate(p[s], g[s], 3, surrogate=surrogate),
        lambda s: true_positive_rate(p[s], y[s], g[s], 3, surrogate=surrogate),
        lambda s: false_positive_rate(p[s], y[s], surrogate=surrogate),
    ):
        first, second, full = rate(slice(0, 40)), rate(slice(40, None)), rate(slice(None))
        pooled = first + second
        torch.testing.assert_close(pooled.value, full.value)
        torch.testing.assert_close(pooled.denominator, full.denominator)
    first, second = positive_rate(p[:40], g[:40], 3), positive_rate(p[40:], g[40:], 3)
    mean_of_means = (first.value + second.value) / 2
    assert not torch.allclose(mean_of_means, positive_rate(p, g, 3).value)


def test_group_mean() -> None:
    losses = torch.tensor([1.0, 3.0, 5.0, -2.0], requires_grad=True)
    mean = group_mean(losses, torch.tensor([0, 0, 1, 1]), 3)
    close(mean.value.detach(), [2.0, 1.5, 0.0])
    close(group_mean(losses).value.detach(), [7.0 / 4])
    (grad,) = torch.autograd.grad(mean.value[0], losses)
    close(grad, [0.5, 0.5, 0.0, 0.0])
    with pytest.raises(ValueError, match="finite"):
        group_mean(torch.tensor([1.0, math.nan]))


def test_disparity() -> None:
    assert disparity(torch.tensor([0.2, 0.5, 0.3])) == pytest.approx(0.3)
    assert disparity(torch.tensor([0.2, math.nan, 0.6])) == pytest.approx(0.4)
    assert disparity(Ratio(torch.tensor([1.0, 0.0]), torch.tensor([4.0, 0.0]))) == 0.0
    with pytest.raises(ValueError, match="no non-empty group"):
        disparity(Ratio(torch.zeros(2), torch.zeros(2)))
    with pytest.raises(TypeError, match="Tensor or Ratio"):
        disparity([0.1, 0.2])  # type: ignore[arg-type]


def test_empty_batch_gives_empty_ratios() -> None:
    empty = torch.zeros(0)
    rate = positive_rate(empty, torch.zeros(0, dtype=torch.int64), 2)
    close(rate.denominator, [0, 0])
    close(rate.value, [0, 0])
    close(demographic_parity_gap(empty, torch.zeros(0, dtype=torch.int64), 2), [0, 0])


def test_option_errors() -> None:
    p, g, _ = tensors()
    with pytest.raises(ValueError, match=r"surrogate='relu'.*'sigmoid', 'hinge', 'exact'"):
        indicator(p, "relu")
    with pytest.raises(ValueError, match="surrogate"):
        positive_rate(p, g, K, surrogate="step")
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="temperature"):
            positive_rate(p, g, K, temperature=bad)
    with pytest.raises(TypeError, match="temperature"):
        indicator(p, temperature="8")  # type: ignore[arg-type]


def test_input_errors() -> None:
    p, g, y = tensors()
    with pytest.raises(ValueError, match=r"group id 4 .*num_groups=4"):
        positive_rate(p, torch.tensor([0, 1, 2, 3, 4, 0]), K)
    with pytest.raises(ValueError, match=r"group id -1 .*num_groups=4"):
        positive_rate(p, torch.tensor([0, 1, 2, 3, -1, 0]), K)
    with pytest.raises(TypeError, match="integer group ids"):
        positive_rate(p, g.double(), K)
    with pytest.raises(ValueError, match="num_groups"):
        positive_rate(p, g, 0)
    with pytest.raises(ValueError, match="num_groups"):
        positive_rate(p, g, None)
    with pytest.raises(ValueError, match="only meaningful with groups"):
        positive_rate(p, None, K)
    with pytest.raises(ValueError, match=r"groups must have shape \[6\]"):
        positive_rate(p, g[:5], K)
    with pytest.raises(ValueError, match=r"squeeze\(-1\)"):
        positive_rate(p[:, None], g, K)
    with pytest.raises(ValueError, match=r"torch.sigmoid\(logits\)"):
        positive_rate(p * 4 - 2, g, K)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        positive_rate(torch.tensor([0.1, math.nan]))
    with pytest.raises(TypeError, match="floating"):
        positive_rate(torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        true_positive_rate(p, y * 2, g, K)
    with pytest.raises(ValueError, match=r"labels must have shape \[6\]"):
        false_positive_rate(p, y[:3], g, K)


@st.composite
def samples(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    n = draw(st.integers(1, 40))
    k = draw(st.integers(1, 5))
    unit = st.floats(0.0, 1.0, allow_nan=False)
    p = np.array(draw(st.lists(unit, min_size=n, max_size=n)))
    g = np.array(draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    y = np.array(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)))
    return p, g, y, k


def numpy_rates(p: np.ndarray, g: np.ndarray, keep: np.ndarray, k: int) -> np.ndarray:
    return np.array(
        [(p[(g == j) & keep] > 0.5).mean() if ((g == j) & keep).any() else 0.0 for j in range(k)]
    )


@settings(max_examples=60, deadline=None)
@given(samples())
def test_exact_rates_match_numpy(sample: tuple[np.ndarray, np.ndarray, np.ndarray, int]) -> None:
    p, g, y, k = sample
    pt, gt, yt = torch.from_numpy(p), torch.from_numpy(g), torch.from_numpy(y)
    everyone = np.ones_like(y, dtype=bool)
    for rate, keep in (
        (positive_rate(pt, gt, k, surrogate="exact"), everyone),
        (true_positive_rate(pt, yt, gt, k, surrogate="exact"), y == 1),
        (false_positive_rate(pt, yt, gt, k, surrogate="exact"), y == 0),
    ):
        value = rate.value.numpy()
        assert ((value >= 0) & (value <= 1)).all()
        np.testing.assert_allclose(value, numpy_rates(p, g, keep, k), atol=1e-12)
    smooth = positive_rate(pt, gt, k).value
    assert ((smooth >= 0) & (smooth <= 1)).all()
    gap = demographic_parity_gap(pt, gt, k, surrogate="exact").numpy()
    present = np.bincount(g, minlength=k) > 0
    expected = numpy_rates(p, g, everyone, k) - (p > 0.5).mean()
    np.testing.assert_allclose(gap, np.where(present, expected, 0.0), atol=1e-12)
