"""Image classifiers for 32x32 inputs: the CIFAR ResNet-18 and two small networks for CPU runs."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["BasicBlock", "ConvMLP", "ResNet18", "SmallCNN"]


def _check_args(where: str, **values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{where}: {name} must be a positive int, got {value!r}")


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN projection) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18, CIFAR variant: 3x3 stride-1 stem, no max-pool, BasicBlocks [2, 2, 2, 2].

    Widths 64/128/256/512, global average pooling, linear head; input ``[B, 3, 32, 32]``
    (any size >= 8 works), output logits ``[B, num_classes]``. 11 173 962 parameters for
    10 classes.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        _check_args("ResNet18", num_classes=num_classes)
        self.stem = nn.Sequential(*_conv_bn_relu(3, 64))
        layers: list[nn.Module] = []
        c_in = 64
        for i, width in enumerate((64, 128, 256, 512)):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(BasicBlock(c_in, width, stride), BasicBlock(width, width)))
            c_in = width
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.pool(self.layers(self.stem(x)))
        return self.fc(out.flatten(1))


class SmallCNN(nn.Module):
    """A fast 4-conv network for CPU runs on 32x32 images.

    (conv-BN-ReLU) x 2 at ``width`` channels, 2x2 max-pool, (conv-BN-ReLU) x 2 at
    ``2 * width``, 2x2 max-pool, global average pooling, linear head to ``num_classes``.
    """

    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        _check_args("SmallCNN", num_classes=num_classes, width=width)
        self.features = nn.Sequential(
            *_conv_bn_relu(3, width),
            *_conv_bn_relu(width, width),
            nn.MaxPool2d(2),
            *_conv_bn_relu(width, 2 * width),
            *_conv_bn_relu(2 * width, 2 * width),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(1),
        )
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).flatten(1))


class ConvMLP(nn.Module):
    """Three conv stages and a wide fully connected head: cheap to run, able to interpolate.

    (conv-BN-ReLU, 2x2 max-pool) at ``width``, ``2 * width`` and ``4 * width`` channels turn a
    32x32 image into a 4x4 map, which a ``hidden``-unit ReLU layer and a linear head classify.
    At ``width=32`` it has 1.15M parameters (17x SmallCNN's) for about half SmallCNN's
    multiply-adds: most parameters sit in the head, whose cost per image is one matrix-vector
    product. That is what the CPU interpolation preset needs: enough capacity to drive every
    training loss to ~0 on 10 000 images within minutes on two cores. Inputs must be 32x32.
    """

    def __init__(self, num_classes: int = 10, width: int = 32, hidden: int = 512) -> None:
        super().__init__()
        _check_args("ConvMLP", num_classes=num_classes, width=width, hidden=hidden)
        self.features = nn.Sequential(
            *_conv_bn_relu(3, width),
            nn.MaxPool2d(2),
            *_conv_bn_relu(width, 2 * width),
            nn.MaxPool2d(2),
            *_conv_bn_relu(2 * width, 4 * width),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Linear(4 * width * 4 * 4, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (32, 32):
            raise ValueError(
                f"ConvMLP expects 32x32 images, got {tuple(x.shape[-2:])}; "
                "use SmallCNN or ResNet18 for other sizes"
            )
        return self.head(self.features(x).flatten(1))
