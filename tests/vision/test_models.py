"""ResNet-18 (CIFAR variant), the small CNN and ConvMLP: shapes, parameter counts, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from eclearn.vision import ConvMLP, ResNet18, SmallCNN


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


def conv_mlp_parameters(width: int, hidden: int, classes: int) -> int:
    """Closed form: three bias-free 3x3 convs with BN (2 parameters per channel), then
    Linear(4w*16, hidden) and Linear(hidden, classes) with biases."""
    convs = 9 * (3 * width + width * 2 * width + 2 * width * 4 * width)
    norms = 2 * (width + 2 * width + 4 * width)
    return convs + norms + (64 * width + 1) * hidden + (hidden + 1) * classes


@pytest.mark.parametrize(("width", "hidden"), [(8, 16), (32, 512)])
def test_conv_mlp_parameter_count_shape_and_gradients(width, hidden):
    torch.manual_seed(0)
    model = ConvMLP(num_classes=10, width=width, hidden=hidden)
    assert count(model) == conv_mlp_parameters(width, hidden, 10)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    logits = model(x)
    assert logits.shape == (4, 10)
    F.cross_entropy(logits, y).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_conv_mlp_default_is_the_documented_size_and_rejects_other_image_sizes():
    assert count(ConvMLP()) == 1_147_690
    with pytest.raises(ValueError, match="expects 32x32 images, got \\(28, 28\\)"):
        ConvMLP()(torch.randn(1, 3, 28, 28))


def test_models_validate_arguments():
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        ResNet18(num_classes=0)
    with pytest.raises(ValueError, match="width must be a positive int"):
        SmallCNN(width=0)
    with pytest.raises(ValueError, match="hidden must be a positive int"):
        ConvMLP(hidden=0)
