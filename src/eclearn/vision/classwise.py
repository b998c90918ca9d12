"""Per-class statistics of a classifier: losses (as constraint values), accuracies, confusions.

:func:`per_class_loss` is the building block of the interpolation experiment's constraints
"mean cross-entropy of class c = 0": it returns an :class:`~eclearn.ratio.Ratio` so that
held-out evaluation and distributed training pool the per-class sums and counts exactly.
Nothing here is specific to images; any ``[B, C]`` logits work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from eclearn.ratio import Ratio

__all__ = ["confusion_matrix", "per_class_accuracy", "per_class_loss", "per_sample_loss"]


def _check_labels(labels: Tensor, batch: int, num_classes: int, where: str) -> None:
    if not isinstance(labels, Tensor) or labels.ndim != 1 or labels.dtype != torch.int64:
        raise ValueError(
            f"{where}: labels must be an int64 tensor [B], got {type(labels).__name__} "
            f"{getattr(labels, 'dtype', '')} {list(getattr(labels, 'shape', []))}"
        )
    if labels.shape[0] != batch:
        raise ValueError(f"{where}: {batch} predictions but {labels.shape[0]} labels")
    if labels.numel() and bool((labels < 0).any() | (labels >= num_classes).any()):
        raise ValueError(
            f"{where}: labels must lie in [0, {num_classes}), got range "
            f"{int(labels.min())}..{int(labels.max())}; check num_classes"
        )


def _check_logits(logits: Tensor, num_classes: int | None, where: str) -> None:
    if not isinstance(logits, Tensor) or logits.ndim != 2 or not logits.is_floating_point():
        raise ValueError(
            f"{where}: logits must be a float tensor [B, num_classes], got "
            f"{type(logits).__name__} {getattr(logits, 'dtype', '')} "
            f"{list(getattr(logits, 'shape', []))}"
        )
    if num_classes is not None and logits.shape[1] != num_classes:
        raise ValueError(
            f"{where}: logits have {logits.shape[1]} columns but num_classes={num_classes}"
        )


def _check_num_classes(num_classes: int, where: str) -> None:
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"{where}: num_classes must be a positive int, got {num_classes!r}")


def _predictions(logits_or_preds: Tensor, num_classes: int, where: str) -> Tensor:
    if isinstance(logits_or_preds, Tensor) and logits_or_preds.ndim == 2:
        _check_logits(logits_or_preds, num_classes, where)
        return logits_or_preds.argmax(dim=1)
    preds = logits_or_preds
    if not isinstance(preds, Tensor) or preds.ndim != 1 or preds.dtype != torch.int64:
        raise ValueError(
            f"{where}: expected logits [B, {num_classes}] or int64 predicted classes [B], got "
            f"{type(preds).__name__} {getattr(preds, 'dtype', '')} "
            f"{list(getattr(preds, 'shape', []))}"
        )
    if preds.numel() and bool((preds < 0).any() | (preds >= num_classes).any()):
        raise ValueError(f"{where}: predicted classes must lie in [0, {num_classes})")
    return preds


def per_sample_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of each sample, ``[B]`` (differentiable)."""
    _check_logits(logits, None, "per_sample_loss")
    _check_labels(labels, logits.shape[0], logits.shape[1], "per_sample_loss")
    return F.cross_entropy(logits, labels, reduction="none")


def per_class_loss(logits: Tensor, labels: Tensor, num_classes: int) -> Ratio:
    """Mean cross-entropy of each true class as ``Ratio(Σ_{i: y_i = c} CE_i, #{i: y_i = c})``.

    Both parts have shape ``[num_classes]``; the numerator carries the gradient, the
    denominator is a count (in the logits' dtype). A class absent from the batch has a 0/0
    entry, whose ``.value`` is 0: it adds nothing to this batch's constraint term.
    """
    _check_num_classes(num_classes, "per_class_loss")
    _check_logits(logits, num_classes, "per_class_loss")
    _check_labels(labels, logits.shape[0], num_classes, "per_class_loss")
    losses = F.cross_entropy(logits, labels, reduction="none")
    total = losses.new_zeros(num_classes).index_add(0, labels, losses)
    count = torch.bincount(labels, minlength=num_classes).to(logits.dtype)
    return Ratio(total, count)


def per_class_accuracy(logits_or_preds: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Accuracy within each true class, float ``[num_classes]``; NaN for classes absent here.

    Takes logits ``[B, num_classes]`` (their argmax is the prediction) or int64 classes ``[B]``.
    """
    _check_num_classes(num_classes, "per_class_accuracy")
    preds = _predictions(logits_or_preds, num_classes, "per_class_accuracy")
    _check_labels(labels, preds.shape[0], num_classes, "per_class_accuracy")
    correct = torch.bincount(labels[preds == labels], minlength=num_classes).to(torch.float64)
    count = torch.bincount(labels, minlength=num_classes).to(torch.float64)
    return (correct / count).to(torch.float32)


def confusion_matrix(preds: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Counts ``int64 [C, C]``: entry ``[t, p]`` is the number of samples of true class ``t``
    predicted as ``p`` (rows = true class). ``preds`` may also be logits ``[B, C]``."""
    _check_num_classes(num_classes, "confusion_matrix")
    preds = _predictions(preds, num_classes, "confusion_matrix")
    _check_labels(labels, preds.shape[0], num_classes, "confusion_matrix")
    flat = labels * num_classes + preds
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)
