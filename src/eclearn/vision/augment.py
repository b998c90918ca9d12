"""Batched image augmentation in pure torch: random crop with padding, flip, rotation.

Every random draw comes from torch's global CPU generator (whatever the data's device), so
the solver's checkpoints, which save that generator's state, reproduce the augmented stream
exactly. Images are ``float [B, C, H, W]``; ``fill`` is the value of pixels brought in by
padding or rotation. The usual pipeline pads the raw image with black and normalises after;
on already-normalised images the same result needs ``fill = -mean / std`` per channel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Augment", "padded_crop", "random_crop", "random_flip", "random_rotation"]

Fill = float | Sequence[float] | Tensor


def _check(x: Tensor, where: str) -> None:
    if not isinstance(x, Tensor) or x.ndim != 4 or not x.is_floating_point():
        raise ValueError(
            f"{where}: expected float images [B, C, H, W], got {type(x).__name__} "
            f"{getattr(x, 'dtype', '')} {list(getattr(x, 'shape', []))}"
        )


def _fill_tensor(fill: Fill, x: Tensor) -> Tensor:
    value = torch.as_tensor(fill, dtype=x.dtype, device=x.device).reshape(-1)
    if value.numel() not in (1, x.shape[1]):
        raise ValueError(
            f"fill must be one value or one per channel ({x.shape[1]}), got {value.numel()} values"
        )
    return value.view(1, -1, 1, 1)


def padded_crop(x: Tensor, top: Tensor, left: Tensor, padding: int, fill: Fill = 0.0) -> Tensor:
    """Pad each image by ``padding`` pixels of ``fill`` and cut the ``H x W`` window at (top, left).

    ``top``/``left`` are int64 ``[B]`` offsets in ``[0, 2 * padding]``; ``padding`` for both
    gives back the input. One gather for the whole batch, no Python loop over images.
    """
    _check(x, "padded_crop")
    if padding < 0:
        raise ValueError(f"padded_crop: padding must be >= 0, got {padding}")
    b = x.shape[0]
    top = torch.as_tensor(top, dtype=torch.int64).to(x.device)
    left = torch.as_tensor(left, dtype=torch.int64).to(x.device)
    if top.shape != (b,) or left.shape != (b,):
        raise ValueError(
            f"padded_crop: top and left need one offset per image ([{b}]), got "
            f"{list(top.shape)} and {list(left.shape)}"
        )
    offsets = torch.cat([top, left])
    if bool((offsets < 0).any()) or bool((offsets > 2 * padding).any()):
        raise ValueError(f"padded_crop: offsets must lie in [0, {2 * padding}] (2 * padding)")
    return _crop(x, top, left, padding, fill)


def _crop(x: Tensor, top: Tensor, left: Tensor, padding: int, fill: Fill) -> Tensor:
    b, c, h, w = x.shape
    padded = _fill_tensor(fill, x).expand(b, c, h + 2 * padding, w + 2 * padding).clone()
    padded[:, :, padding : padding + h, padding : padding + w] = x
    rows = (top[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (left[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def random_crop(x: Tensor, padding: int = 4, fill: Fill = 0.0) -> Tensor:
    """Random ``H x W`` crop of each image padded by ``padding`` pixels (independent offsets)."""
    _check(x, "random_crop")
    if padding == 0:
        return x
    if padding < 0:
        raise ValueError(f"random_crop: padding must be >= 0, got {padding}")
    top = torch.randint(0, 2 * padding + 1, (x.shape[0],)).to(x.device)
    left = torch.randint(0, 2 * padding + 1, (x.shape[0],)).to(x.device)
    return _crop(x, top, left, padding, fill)


def random_flip(x: Tensor, p: float = 0.5) -> Tensor:
    """Mirror each image left-right with probability ``p``."""
    _check(x, "random_flip")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"random_flip: p must be a probability in [0, 1], got {p}")
    flip = (torch.rand(x.shape[0]) < p).to(x.device).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(-1), x)


def random_rotation(x: Tensor, degrees: float, fill: Fill = 0.0) -> Tensor:
    """Rotate each image about its centre by an angle uniform in ``[-degrees, degrees]``.

    Bilinear resampling (``affine_grid`` + ``grid_sample``); corners brought in get ``fill``.
    """
    _check(x, "random_rotation")
    if not 0.0 <= degrees <= 180.0:
        raise ValueError(f"random_rotation: degrees must lie in [0, 180], got {degrees}")
    b = x.shape[0]
    angle = (torch.rand(b, dtype=torch.float64) * 2.0 - 1.0) * math.radians(degrees)
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero = torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    value = _fill_tensor(fill, x)
    return F.grid_sample(x - value, grid, mode="bilinear", align_corners=False) + value


class Augment:
    """The CIFAR training augmentation as a batch transform (only ``batch["x"]`` changes).

    Crop (padding ``crop_padding``, 0 disables), then horizontal flip (p = 0.5), then rotation
    by at most ``rotation_degrees`` (0 disables), the order of the usual torchvision pipeline.
    Use it as ``make_batches(..., augment=Augment())`` or ``Batches(..., transform=...)``.
    """

    def __init__(
        self,
        crop_padding: int = 4,
        flip: bool = True,
        rotation_degrees: float = 0.0,
        fill: Fill = 0.0,
    ) -> None:
        if not isinstance(crop_padding, int) or crop_padding < 0:
            raise ValueError(f"Augment: crop_padding must be an int >= 0, got {crop_padding!r}")
        if not 0.0 <= float(rotation_degrees) <= 180.0:
            raise ValueError(
                f"Augment: rotation_degrees must lie in [0, 180], got {rotation_degrees}"
            )
        self.crop_padding = crop_padding
        self.flip = bool(flip)
        self.rotation_degrees = float(rotation_degrees)
        self.fill = fill

    def augment(self, x: Tensor) -> Tensor:
        """Augment a batch of images ``float [B, C, H, W]``."""
        if self.crop_padding:
            x = random_crop(x, self.crop_padding, self.fill)
        if self.flip:
            x = random_flip(x)
        if self.rotation_degrees:
            x = random_rotation(x, self.rotation_degrees, self.fill)
        return x

    def __call__(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        if "x" not in batch:
            raise KeyError(f"Augment: the batch has no 'x' entry (keys: {sorted(batch)})")
        return {**batch, "x": self.augment(batch["x"])}

    def __repr__(self) -> str:
        return (
            f"Augment(crop_padding={self.crop_padding}, flip={self.flip}, "
            f"rotation_degrees={self.rotation_degrees}, fill={self.fill!r})"
        )
