"""Vision helpers: CIFAR data, augmentation, CIFAR ResNet-18 and a small CNN, per-class statistics.

Built on the core (``Batches``, ``Ratio``, data-file resolution); nothing in the core depends
on this package. Requires only torch and numpy (no torchvision).
"""

from eclearn.vision.augment import (
    Augment,
    padded_crop,
    random_crop,
    random_flip,
    random_rotation,
)
from eclearn.vision.classwise import (
    confusion_matrix,
    per_class_accuracy,
    per_class_loss,
    per_sample_loss,
)
from eclearn.vision.data import (
    DATASETS,
    ImageDataset,
    channel_stats,
    load_cifar10,
    load_cifar10_subset,
    load_cifar100,
    load_dataset,
    make_batches,
    to_tensor,
)
from eclearn.vision.models import BasicBlock, ConvMLP, ResNet18, SmallCNN

__all__ = [
    "DATASETS",
    "Augment",
    "BasicBlock",
    "ConvMLP",
    "ImageDataset",
    "ResNet18",
    "SmallCNN",
    "channel_stats",
    "confusion_matrix",
    "load_cifar10",
    "load_cifar10_subset",
    "load_cifar100",
    "load_dataset",
    "make_batches",
    "padded_crop",
    "per_class_accuracy",
    "per_class_loss",
    "per_sample_loss",
    "random_crop",
    "random_flip",
    "random_rotation",
    "to_tensor",
]
