"""ResNet-18 (CIFAR variant) and the small CNN: shapes, parameter count, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from eclearn.vision import ResNet18, SmallCNN


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_resnet18_shape_and_parameter_count():
    torch.manual_seed(0)
    model = ResNet18()
    assert count(model) == 11_173_962
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert count(ResNet18(100)) == 11_173_962 + 90 * 513
    stem = model.stem[0]
    assert stem.kernel_size == (3, 3) and stem.stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())


def test_resnet18_eval_on_small_batch():
    model = ResNet18(num_classes=100).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32))
    assert out.shape == (1, 100) and torch.isfinite(out).all()


@pytest.mark.parametrize("width", [8, 32])
def test_small_cnn_trains(width):
    torch.manual_seed(0)
    model = SmallCNN(num_classes=10, width=width)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    logits = model(x)
    assert logits.shape == (8, 10)
    F.cross_entropy(logits, y).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 4 and convs[-1].out_channels == 2 * width


def test_models_validate_arguments():
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        ResNet18(num_classes=0)
    with pytest.raises(ValueError, match="width must be a positive int"):
        SmallCNN(width=0)
