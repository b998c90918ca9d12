"""Group-conditional rates of a classifier's positive decisions, smoothed or exact.

A classifier with predicted probabilities ``p`` decides positive when ``p > 0.5``. The
indicator ``1[p > 0.5]`` has no useful gradient, so training uses a surrogate
(:func:`indicator`) and evaluation the exact indicator::

    "sigmoid":  σ(T·(p − 0.5))                         (the paper's, T = 8)
    "hinge":    clamp(0.5 + (T/4)·(p − 0.5), 0, 1)      (same slope T/4 at the threshold)
    "exact":    1[p > 0.5]                              (no gradient)

Rates are ratios of sums, returned as :class:`eclearn.Ratio` so batches and processes pool
exactly (``Ratio.__add__``) before dividing; ``.value`` is the rate. A group's positive
rate is ``Σ_{i: g_i = k} ind(p_i) / #{i: g_i = k}``; the true (false) positive rate also
requires ``y_i = 1`` (``y_i = 0``). An empty group has denominator 0 and rate 0 through
``Ratio.value``.

Every rate function returns a tensor whose last axis is the group axis: shape
``[num_groups]`` with ``groups``, shape ``[1]`` without (all samples form one group), so
overall and per-group rates broadcast and concatenate alike.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from eclearn.ratio import Ratio

__all__ = [
    "SURROGATES",
    "demographic_parity_gap",
    "disparity",
    "equalized_odds_gap",
    "false_positive_rate",
    "group_mean",
    "indicator",
    "overall_positive_rate",
    "positive_rate",
    "true_positive_rate",
]

SURROGATES: tuple[str, ...] = ("sigmoid", "hinge", "exact")
THRESHOLD = 0.5


def _check_scores(scores: Tensor, name: str = "scores") -> None:
    if not isinstance(scores, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of probabilities; got {type(scores).__name__}"
        )
    if not scores.is_floating_point():
        raise TypeError(
            f"{name} must be a floating tensor of probabilities; got dtype {scores.dtype}"
        )
    if scores.dim() != 1:
        raise ValueError(
            f"{name} must have shape [n]; got {tuple(scores.shape)} "
            "(for a model output of shape [n, 1], pass scores.squeeze(-1))"
        )


def _check_options(surrogate: str, temperature: float) -> None:
    if surrogate not in SURROGATES:
        raise ValueError(f"surrogate={surrogate!r} is unknown; choose one of {list(SURROGATES)}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a positive float; got {temperature!r}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive finite float; got {temperature!r}")


def indicator(scores: Tensor, surrogate: str = "sigmoid", temperature: float = 8.0) -> Tensor:
    """Smoothed (or exact) ``1[p > 0.5]`` of probabilities ``scores``, same shape.

    ``temperature`` T sets the slope T/4 at the threshold of both surrogates (larger: closer
    to the step, steeper gradients). ``"exact"`` ignores it and carries no gradient. At
    ``p = 0.5`` the surrogates give 0.5 and ``"exact"`` gives 0.
    """
    _check_options(surrogate, temperature)
    if not isinstance(scores, Tensor) or not scores.is_floating_point():
        raise TypeError("indicator(scores=...) takes a floating torch.Tensor of probabilities")
    centred = scores - THRESHOLD
    if surrogate == "sigmoid":
        return torch.sigmoid(temperature * centred)
    if surrogate == "hinge":
        return torch.clamp(0.5 + 0.25 * temperature * centred, 0.0, 1.0)
    return (scores.detach() > THRESHOLD).to(scores.dtype)


def _validate(
    scores: Tensor,
    labels: Tensor | None,
    groups: Tensor | None,
    num_groups: int | None,
    *,
    name: str = "scores",
) -> Tensor | None:
    """Check shapes, devices and values (one host sync); return ``groups`` as int64.

    ``scores`` must be probabilities in [0, 1]; with ``name="values"`` merely finite.
    """
    _check_scores(scores, name)
    n = scores.shape[0]
    if name == "scores":
        bad = ~((scores >= 0) & (scores <= 1))  # NaN fails both comparisons
    else:
        bad = ~torch.isfinite(scores)
    checks = [bad.sum()]
    if labels is not None:
        if not isinstance(labels, Tensor):
            raise TypeError(f"labels must be a torch.Tensor of 0/1; got {type(labels).__name__}")
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape [{n}] like scores; got {tuple(labels.shape)}")
        if labels.device != scores.device:
            raise ValueError(f"labels are on {labels.device} but scores on {scores.device}")
        checks.append(((labels != 0) & (labels != 1)).sum())
    if groups is None:
        if num_groups is not None:
            raise ValueError("num_groups is only meaningful with groups; pass both or neither")
    else:
        if not isinstance(groups, Tensor):
            raise TypeError(
                f"groups must be a torch.Tensor of int64 ids; got {type(groups).__name__}"
            )
        if groups.dtype.is_floating_point or groups.dtype.is_complex or groups.dtype == torch.bool:
            raise TypeError(f"groups must hold integer group ids (int64); got dtype {groups.dtype}")
        if groups.shape != (n,):
            raise ValueError(f"groups must have shape [{n}] like scores; got {tuple(groups.shape)}")
        if groups.device != scores.device:
            raise ValueError(f"groups are on {groups.device} but scores on {scores.device}")
        if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
            raise ValueError(f"num_groups must be a positive int with groups; got {num_groups!r}")
        groups = groups.long()
    if n == 0:
        return groups
    if groups is not None:
        checks += [groups.min(), groups.max()]
    found = torch.stack([c.to(torch.int64) for c in checks]).tolist()
    if found[0] and name != "scores":
        raise ValueError(f"{name} must be finite; {int(found[0])} entries are NaN or infinite")
    if found[0]:
        low, high = scores.min().item(), scores.max().item()
        raise ValueError(
            f"scores must be probabilities in [0, 1]; {int(found[0])} are not (min {low}, "
            f"max {high}, NaN counts as outside); pass torch.sigmoid(logits), not logits"
        )
    if labels is not None and found[1]:
        raise ValueError(f"labels must be 0 or 1; {int(found[1])} entries are not")
    if groups is not None:
        low, high = int(found[-2]), int(found[-1])
        assert num_groups is not None  # checked with the shapes above
        if low < 0 or high >= num_groups:
            offending = low if low < 0 else high
            raise ValueError(
                f"group id {offending} is outside [0, num_groups) with num_groups={num_groups}; "
                "group ids must be 0..num_groups-1 (recode them, or pass a larger num_groups)"
            )
    return groups


def _group_sums(
    values: Tensor, weights: Tensor, groups: Tensor | None, num_groups: int | None
) -> Ratio:
    """``Ratio(Σ_k w·v, Σ_k w)`` per group ``k`` (shape [num_groups]) or overall (shape [1])."""
    if groups is None:
        return Ratio((weights * values).sum().reshape(1), weights.sum().reshape(1))
    assert num_groups is not None  # _validate requires it with groups
    zeros = values.new_zeros(num_groups)
    return Ratio(zeros.index_add(0, groups, weights * values), zeros.index_add(0, groups, weights))


def group_mean(
    values: Tensor, groups: Tensor | None = None, num_groups: int | None = None
) -> Ratio:
    """Mean of ``values`` [n] per group (``Σ_{g_i = k} v_i / #{g_i = k}``) or overall.

    Any per-sample statistic, e.g. a loss; differentiable in ``values``.
    """
    groups = _validate(values, None, groups, num_groups, name="values")
    return _group_sums(values, torch.ones_like(values.detach()), groups, num_groups)


def _conditional_rate(
    scores: Tensor,
    labels: Tensor | None,
    label: int,
    groups: Tensor | None,
    num_groups: int | None,
    surrogate: str,
    temperature: float,
) -> Ratio:
    _check_options(surrogate, temperature)
    groups = _validate(scores, labels, groups, num_groups)
    weights = (
        torch.ones_like(scores.detach()) if labels is None else labels.eq(label).to(scores.dtype)
    )
    return _group_sums(indicator(scores, surrogate, temperature), weights, groups, num_groups)


def positive_rate(
    scores: Tensor,
    groups: Tensor | None = None,
    num_groups: int | None = None,
    *,
    surrogate: str = "sigmoid",
    temperature: float = 8.0,
) -> Ratio:
    """Rate of positive decisions per group, ``P(ŷ = 1 | g = k)``; shape [num_groups].

    Without ``groups``, the overall rate with shape [1].
    """
    return _conditional_rate(scores, None, 1, groups, num_groups, surrogate, temperature)


def overall_positive_rate(
    scores: Tensor, *, surrogate: str = "sigmoid", temperature: float = 8.0
) -> Ratio:
    """Rate of positive decisions over all samples, ``P(ŷ = 1)``; shape [1]."""
    return positive_rate(scores, surrogate=surrogate, temperature=temperature)


def true_positive_rate(
    scores: Tensor,
    labels: Tensor,
    groups: Tensor | None = None,
    num_groups: int | None = None,
    *,
    surrogate: str = "sigmoid",
    temperature: float = 8.0,
) -> Ratio:
    """``P(ŷ = 1 | y = 1, g = k)`` per group (shape [num_groups]), or overall (shape [1])."""
    return _conditional_rate(scores, labels, 1, groups, num_groups, surrogate, temperature)


def false_positive_rate(
    scores: Tensor,
    labels: Tensor,
    groups: Tensor | None = None,
    num_groups: int | None = None,
    *,
    surrogate: str = "sigmoid",
    temperature: float = 8.0,
) -> Ratio:
    """``P(ŷ = 1 | y = 0, g = k)`` per group (shape [num_groups]), or overall (shape [1])."""
    return _conditional_rate(scores, labels, 0, groups, num_groups, surrogate, temperature)


def _gap(by_group: Ratio, overall: Ratio) -> Tensor:
    """``rate_k − rate_all``, 0 where group k has no samples (nothing to constrain)."""
    return torch.where(
        by_group.denominator > 0, by_group.value - overall.value, torch.zeros_like(by_group.value)
    )


def demographic_parity_gap(
    scores: Tensor,
    groups: Tensor,
    num_groups: int,
    *,
    surrogate: str = "sigmoid",
    temperature: float = 8.0,
) -> Tensor:
    """``P(ŷ = 1 | g = k) − P(ŷ = 1)`` for k = 0..num_groups−1; shape [num_groups].

    Demographic parity holds when this is 0 (the paper's equality constraint). Differentiable
    for the surrogates; 0 for a group absent from ``groups``.
    """
    options: dict[str, Any] = {"surrogate": surrogate, "temperature": temperature}
    by_group = positive_rate(scores, groups, num_groups, **options)
    return _gap(by_group, positive_rate(scores, **options))


def equalized_odds_gap(
    scores: Tensor,
    labels: Tensor,
    groups: Tensor,
    num_groups: int,
    *,
    surrogate: str = "sigmoid",
    temperature: float = 8.0,
) -> Tensor:
    """TPR and FPR gaps to the overall rates; shape [2·num_groups].

    Order: ``[TPR_0 − TPR, ..., TPR_{K−1} − TPR, FPR_0 − FPR, ..., FPR_{K−1} − FPR]``.
    Equalized odds holds when all are 0. A (group, label) cell without samples gives 0.
    """
    options: dict[str, Any] = {"surrogate": surrogate, "temperature": temperature}
    tpr = _gap(
        true_positive_rate(scores, labels, groups, num_groups, **options),
        true_positive_rate(scores, labels, **options),
    )
    fpr = _gap(
        false_positive_rate(scores, labels, groups, num_groups, **options),
        false_positive_rate(scores, labels, **options),
    )
    return torch.cat([tpr, fpr])


def disparity(rates: Tensor | Ratio) -> float:
    """``max_k rate_k − min_k rate_k`` over the non-empty groups (the paper's DP metric).

    Given a :class:`Ratio`, groups with denominator 0 are skipped; given a tensor of
    finished rates, NaN entries are skipped. Raises if no group is left.
    """
    if isinstance(rates, Ratio):
        values = rates.value.detach()
        present = (rates.denominator > 0).expand_as(values)
    elif isinstance(rates, Tensor):
        values = rates.detach()
        present = ~torch.isnan(values)
    else:
        raise TypeError(f"disparity(rates=...) takes a Tensor or Ratio; got {type(rates).__name__}")
    kept = values[present]
    if kept.numel() == 0:
        raise ValueError("disparity(rates=...) has no non-empty group to compare")
    return float(kept.max() - kept.min())
