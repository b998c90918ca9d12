"""Per-class losses (constraint values), accuracies and confusion matrices."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from eclearn.ratio import Ratio
from eclearn.vision import confusion_matrix, per_class_accuracy, per_class_loss, per_sample_loss


@pytest.fixture
def logits_labels() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(20, 4, generator=g, requires_grad=True)
    labels = torch.tensor([0, 1, 1, 0, 2, 1, 0, 0, 2, 1, 1, 0, 2, 2, 1, 0, 0, 1, 2, 1])
    return logits, labels  # class 3 is absent


def test_per_class_loss_equals_losses_on_class_subsets(logits_labels):
    logits, labels = logits_labels
    stat = per_class_loss(logits, labels, num_classes=4)
    assert isinstance(stat, Ratio)
    assert stat.numerator.shape == (4,) and stat.denominator.shape == (4,)
    for c in range(3):
        subset = labels == c
        direct = F.cross_entropy(logits[subset], labels[subset])
        torch.testing.assert_close(stat.value[c], direct)
        assert stat.denominator[c] == subset.sum()
    assert stat.denominator[3] == 0 and stat.value[3] == 0


def test_per_class_loss_gradient_and_pooling(logits_labels):
    logits, labels = logits_labels
    stat = per_class_loss(logits, labels, 4)
    (grad,) = torch.autograd.grad(stat.numerator.sum(), logits)
    (expected,) = torch.autograd.grad(F.cross_entropy(logits, labels, reduction="sum"), logits)
    torch.testing.assert_close(grad, expected)
    pooled = per_class_loss(logits[:7], labels[:7], 4) + per_class_loss(logits[7:], labels[7:], 4)
    torch.testing.assert_close(pooled.value, stat.value)


def test_per_sample_loss(logits_labels):
    logits, labels = logits_labels
    losses = per_sample_loss(logits, labels)
    assert losses.shape == (20,)
    torch.testing.assert_close(losses.mean(), F.cross_entropy(logits, labels))


def test_per_class_accuracy_hand_example():
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    preds = torch.tensor([0, 1, 1, 1, 0, 0])
    acc = per_class_accuracy(preds, labels, num_classes=4)
    assert acc[:3].tolist() == pytest.approx([0.5, 2 / 3, 0.0]) and math.isnan(acc[3])
    logits = F.one_hot(preds, 4).float()
    torch.testing.assert_close(per_class_accuracy(logits, labels, 4), acc, equal_nan=True)


def test_confusion_matrix_hand_example():
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    preds = torch.tensor([0, 2, 1, 1, 0, 2, 1])
    expected = torch.tensor([[1, 0, 1], [1, 2, 0], [0, 1, 1]])
    matrix = confusion_matrix(preds, labels, num_classes=3)
    assert matrix.dtype == torch.int64 and torch.equal(matrix, expected)
    assert torch.equal(confusion_matrix(F.one_hot(preds, 3).float(), labels, 3), expected)


def test_inputs_are_validated(logits_labels):
    logits, labels = logits_labels
    with pytest.raises(ValueError, match="4 columns but num_classes=5"):
        per_class_loss(logits, labels, 5)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        per_class_loss(logits, labels + 2, 4)
    with pytest.raises(ValueError, match="int64"):
        per_class_loss(logits, labels.float(), 4)
    with pytest.raises(ValueError, match="20 predictions but 19 labels"):
        per_sample_loss(logits, labels[:19])
    with pytest.raises(ValueError, match=r"predicted classes must lie in \[0, 3\)"):
        confusion_matrix(torch.tensor([3]), torch.tensor([0]), 3)
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        per_class_accuracy(labels, labels, 0)
