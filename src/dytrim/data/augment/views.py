"""The two views FixMatch-style training feeds the model, weak (crop + flip) and strong (RandAugment, crop + flip,
Normalize, Cutout), as the DARP / CDMAD / DyTrim reference code (``dataset/fix_cifar10.py``) builds them:

* weak   = ``RandomCrop(H, padding=4)`` (zero padding) + ``RandomHorizontalFlip(0.5)``;
* strong = ``RandAugment(n=3, m=4)`` of ildoonet/pytorch-randaugment on the uint8 image, then the weak
  ops, then ``Normalize`` ((x / 255 - mean) / std), then ``CutoutDefault(16)`` in normalised space.

All random draws (op choice, sign, box positions, crop offsets, flips) are per sample and come from the
``torch.Generator`` passed in (drawn on its device); nothing touches the global RNG and there is no Python
loop over images.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dytrim.data.augment.ops import check_images, draw_int, draw_uniform, gather_flat, source_index
from dytrim.data.augment.policy import rand_augment


def weak_augment(x: torch.Tensor, gen: torch.Generator, pad: int = 4, flip: bool = True) -> torch.Tensor:
    """``RandomCrop((H, W), padding=pad)`` with zero fill + ``RandomHorizontalFlip(0.5)``, per sample."""
    check_images(x)
    n, _, h, w = x.shape
    if n == 0:
        return x.clone()
    dev = x.device
    offs = draw_int(gen, 2 * pad + 1, (2, n), dev) - pad  # (top, left) offsets into the unpadded image
    cols = torch.arange(w, device=dev).view(1, w)
    if flip:
        flips = draw_uniform(gen, (n,), dev) < 0.5
        cols = torch.where(flips.view(n, 1), (w - 1) - cols, cols)
    xin = (offs[1].view(n, 1) + cols).view(n, 1, w)
    yin = (offs[0].view(n, 1) + torch.arange(h, device=dev).view(1, h)).view(n, h, 1)
    return gather_flat(x, source_index(xin, yin, n, h, w))


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``ToTensor`` + ``Normalize``: float32 ``(x / 255 - mean) / std`` per channel."""
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return x.to(torch.float32).div_(255).sub_(m).div_(s)


def cutout(x: torch.Tensor, gen: torch.Generator, size: int = 16) -> torch.Tensor:
    """``CutoutDefault(size)``: multiply a square around a uniform integer centre by 0, per sample.

    Rows ``clip(y - size//2, 0, H) : clip(y + size//2, 0, H)`` (end exclusive), columns likewise.
    """
    n, _, h, w = x.shape
    dev = x.device
    cy = draw_int(gen, h, (n, 1, 1), dev)
    cx = draw_int(gen, w, (n, 1, 1), dev)
    half = size // 2
    rows = torch.arange(h, device=dev).view(1, h, 1)
    cols = torch.arange(w, device=dev).view(1, 1, w)
    inside = (rows >= (cy - half).clamp(0, h)) & (rows < (cy + half).clamp(0, h))
    inside = inside & (cols >= (cx - half).clamp(0, w)) & (cols < (cx + half).clamp(0, w))
    return x * (~inside).unsqueeze(1).to(x.dtype)


def strong_augment(
    x: torch.Tensor,
    gen: torch.Generator,
    mean: Sequence[float],
    std: Sequence[float],
    n_ops: int = 3,
    magnitude: float = 4.0,
    cutout_size: int = 16,
    pad: int = 4,
    flip: bool = True,
) -> torch.Tensor:
    """Reference strong view: RandAugment, crop/flip, normalise, CutoutDefault; uint8 in, float32 out.

    `cutout_size=0` skips Cutout; `pad`/`flip` are the weak ops' settings (no flips for digits)."""
    y = rand_augment(x, gen, n_ops=n_ops, magnitude=magnitude)
    y = weak_augment(y, gen, pad=pad, flip=flip)
    y = normalize(y, mean, std)
    return cutout(y, gen, size=cutout_size) if cutout_size > 0 else y
