"""The RandAugment ops as batched tensor maths that equal Pillow pixel for pixel, so that on-device augmentation
reproduces the reference code (which calls Pillow one image at a time) exactly.

The RandAugment ops follow ``RandAugment/augmentations.py`` (``augment_list()``) and the Pillow
functions it calls, pixel for pixel: Pillow's fixed-point (16.16) nearest-neighbour affine engine for
Rotate/Shear, its incremental "scale affine" path for Translate, ``ImagingBlend``'s float32 arithmetic
with truncation for the ``ImageEnhance`` ops, the float32 3x3 ``SMOOTH`` filter for Sharpness, the
integer ITU-R 601-2 luma for Color/Contrast, and the ``ImageOps`` LUT formulas.  Every op returns uint8,
so a chain of ops equals the chain of Pillow calls.

Geometric ops do not use ``grid_sample``: they compute Pillow's integer source pixel for every output
pixel (same arithmetic as Pillow, so no half-pixel rounding ties) and gather; out-of-image pixels are 0.

Posterize keeps ``bits = max(1, int(v))`` as the reference does, so at m=4 (v = 0.533) it keeps 1 bit.
One deliberate difference:

* CutoutAbs on a 1-channel image fills with 125 (Pillow refuses an RGB colour for mode ``L``).

Coordinates/LUT maths use float64 (float32 on MPS, which lacks float64).
"""

from __future__ import annotations

import math

import torch

# Fill colour of the reference CutoutAbs (RGB); a 1-channel image gets the first entry.
_CUTOUT_ABS_COLOR = (125, 123, 114)


# ----------------------------------------------------------------------------------------------------------
# helpers


def wide_dtype(device: torch.device) -> torch.dtype:
    """Float type for coordinate/LUT maths: float64 (as Pillow/Python use) unless the device lacks it."""
    return torch.float32 if device.type == "mps" else torch.float64


def check_images(x: torch.Tensor) -> None:
    """Validate a uint8 ``[N, C, H, W]`` batch with ``C`` in {1, 3}."""
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected uint8 [N, C, H, W] with C in (1, 3), got {x.dtype} {tuple(x.shape)}")


def per_sample(
    value: torch.Tensor | float, n: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Broadcast a scalar or ``[n]`` value to a ``[n]`` tensor of ``dtype`` on ``device``."""
    v = torch.as_tensor(value, dtype=dtype, device=device)
    return v.expand(n) if v.dim() == 0 else v.reshape(n)


def draw_uniform(gen: torch.Generator, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Uniform [0, 1) float32 draws from ``gen`` (on the generator's device), moved to ``device``."""
    return torch.rand(shape, generator=gen, device=gen.device).to(device)


def draw_int(gen: torch.Generator, high: int, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Uniform integers in ``[0, high)`` from ``gen``, moved to ``device``."""
    return torch.randint(0, high, shape, generator=gen, device=gen.device).to(device)


def source_index(xin: torch.Tensor, yin: torch.Tensor, n: int, h: int, w: int) -> torch.Tensor:
    """Flat source pixel index ``[N, H*W]`` from int64 coordinates broadcastable to ``[N, H, W]``.

    Out-of-bounds coordinates map to ``H*W``, the zero pixel :func:`gather_flat` appends (Pillow's fill 0).
    """
    valid = ((xin >= 0) & (xin < w)) & ((yin >= 0) & (yin < h))
    flat = yin.clamp(0, h - 1) * w + xin.clamp(0, w - 1)
    return torch.where(valid, flat, h * w).expand(n, h, w).reshape(n, h * w)


def gather_flat(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour resampling by flat source index ``[N, H*W]`` (``H*W`` = zero pixel)."""
    n, c, h, w = x.shape
    padded = torch.cat([x.reshape(n, c, h * w), x.new_zeros(n, c, 1)], dim=2)
    return padded.gather(2, index.unsqueeze(1).expand(n, c, h * w)).view(n, c, h, w)


def _sequential_sum(start: torch.Tensor, step: torch.Tensor, length: int) -> torch.Tensor:
    """``[start, start + step, start + step + step, ...]`` along a new last axis, one addition at a time.

    Mirrors Pillow's ``xo += a[0]`` loops (cumsum is sequential on CPU), so double rounding matches.
    """
    steps = step.unsqueeze(-1).expand(*step.shape, length - 1)
    return torch.cat([start.unsqueeze(-1), steps], dim=-1).cumsum(-1)


# ----------------------------------------------------------------------------------------------------------
# geometric ops: Pillow ``Image.transform(size, AFFINE, a, NEAREST)`` and ``Image.rotate(angle)``


def _affine_source_coords(a: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer source coordinates ``(xin, yin)`` ``[N, H, W]`` for per-sample Pillow affine coefficients.

    ``a`` ``[N, 6]`` = ``(a, b, c, d, e, f)`` maps output pixel centre ``(x + .5, y + .5)`` to input
    coordinates.  Reproduces the three code paths of Pillow's ``ImagingTransformAffine`` (nearest):
    ``ImagingScaleAffine`` when ``b == d == 0`` (incremental doubles, ``COORD`` truncation), 16.16 fixed
    point (``affine_fixed``: ``FIX(v) = floor(v * 65536 + .5)``, source ``= acc >> 16``) when the corners
    fit in +-32768, and incremental double arithmetic otherwise.
    """
    n = a.shape[0]
    dev = a.device
    m = a.view(n, 2, 3)  # rows (a, b, c) and (d, e, f)
    ys = torch.arange(h, device=dev).view(1, 1, h, 1)
    xs = torch.arange(w, device=dev).view(1, 1, 1, w)

    # affine_fixed (also evaluated, then overridden, for the other paths)
    lin = torch.floor(m[:, :, :2] * 65536.0 + 0.5).long()
    off = torch.floor((m[:, :, 2] + m[:, :, 0] * 0.5 + m[:, :, 1] * 0.5) * 65536.0 + 0.5).long()
    acc = off.view(n, 2, 1, 1) + lin[:, :, 1].view(n, 2, 1, 1) * ys + lin[:, :, 0].view(n, 2, 1, 1) * xs
    src = (acc >> 16).clamp_(-1, max(h, w))  # [N, 2, H, W]: (xin, yin)

    # ImagingScaleAffine: xo = c + a/2, xo += a per column; yo = f + e/2, yo += e per row
    scale = (a[:, 1] == 0) & (a[:, 3] == 0)
    start = m[:, :, 2] + torch.stack([a[:, 0], a[:, 4]], 1) * 0.5
    sx = torch.floor(_sequential_sum(start[:, 0], a[:, 0], w)).clamp_(-1, w).long().view(n, 1, w)
    sy = torch.floor(_sequential_sum(start[:, 1], a[:, 4], h)).clamp_(-1, h).long().view(n, h, 1)
    sel = scale.view(n, 1, 1)
    xin = torch.where(sel, sx, src[:, 0])
    yin = torch.where(sel, sy, src[:, 1])

    corners = torch.tensor([[0, 0, 1], [w, h, 1], [0, h, 1], [w, 0, 1]], dtype=a.dtype, device=dev)
    fits = ((m @ corners.T).abs() < 32768.0).flatten(1).all(1)
    slow = ~scale & ~fits
    if bool(slow.any()):  # huge images/offsets only: generic double path, xx += a per column, xo += b per row
        x_row = _sequential_sum(m[:, 0, 2] + a[:, 1] * 0.5 + a[:, 0] * 0.5, a[:, 1], h)
        y_row = _sequential_sum(m[:, 1, 2] + a[:, 4] * 0.5 + a[:, 3] * 0.5, a[:, 4], h)
        xx = _sequential_sum(x_row, a[:, 0].view(n, 1).expand(n, h), w)
        yy = _sequential_sum(y_row, a[:, 3].view(n, 1).expand(n, h), w)
        sel = slow.view(n, 1, 1)
        xin = torch.where(sel, torch.floor(xx).clamp_(-1, w).long(), xin)
        yin = torch.where(sel, torch.floor(yy).clamp_(-1, h).long(), yin)
    return xin, yin


def affine_index(a: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Flat source index ``[N, H*W]`` of ``Image.transform((w, h), AFFINE, a, NEAREST)`` (fill 0)."""
    xin, yin = _affine_source_coords(a, h, w)
    return source_index(xin, yin, a.shape[0], h, w)


def _round15(v: torch.Tensor) -> torch.Tensor:
    """Python's ``round(v, 15)`` (half-even), vectorised."""
    return torch.round(v * 1e15) / 1e15


def _rotation_coeffs(angle: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Affine coefficients Pillow's ``Image.rotate(angle)`` builds (centre ``(w/2, h/2)``, no expand).

    Pillow's shortcuts for 0/90/180/270 degrees (copy / transpose) give the same pixels as this matrix.
    """
    ang = torch.remainder(angle, 360.0)
    rad = -(ang * (math.pi / 180.0))  # -math.radians(angle % 360.0)
    cos = _round15(torch.cos(rad))
    sin = _round15(torch.sin(rad))
    msin = _round15(-torch.sin(rad))
    cx, cy = w / 2, h / 2
    c = cos * -cx + sin * -cy + 0.0 + cx
    f = msin * -cx + cos * -cy + 0.0 + cy
    return torch.stack([cos, sin, c, msin, cos, f], dim=1)


def geometric_coeffs(name: str, v: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Per-sample Pillow affine coefficients ``[N, 6]`` for a geometric op at signed values ``v`` ``[N]``."""
    if name == "Rotate":
        return _rotation_coeffs(v, h, w)
    column = {"ShearX": 1, "ShearY": 3, "TranslateXabs": 2, "TranslateYabs": 5}[name]
    a = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0], dtype=v.dtype, device=v.device).repeat(v.shape[0], 1)
    a[:, column] = v
    return a


# ----------------------------------------------------------------------------------------------------------
# point ops as per-sample, per-channel lookup tables (ImageOps.*)


def value_lut(name: str, v: torch.Tensor) -> torch.Tensor:
    """Lookup table ``[N, 256]`` (int64, 0..255) of a value-only point op at per-sample values ``v``."""
    n = v.shape[0]
    i = torch.arange(256, device=v.device)
    if name == "Invert":
        return (255 - i).expand(n, 256)
    if name == "Posterize":  # bits = max(1, int(v)); keeps the top ``bits`` bits
        bits = v.trunc().clamp(1, 8).long().view(n, 1)
        return i & (256 - 2 ** (8 - bits))
    if name == "Solarize":  # values >= threshold are inverted
        return torch.where(i.to(v.dtype) < v.view(n, 1), i, 255 - i)
    if name == "SolarizeAdd":  # uint8(clip(x + add, 0, 255)), then solarize at 128
        added = (i.to(v.dtype) + v.view(n, 1)).clamp_(0.0, 255.0).trunc_().long()
        return torch.where(added < 128, added, 255 - added)
    raise ValueError(f"{name} is not a value-only point op")


def autocontrast_lut(x: torch.Tensor) -> torch.Tensor:
    """``ImageOps.autocontrast`` (cutoff 0) LUT ``[N, C, 256]``: ``int(ix * scale + offset)`` clipped.

    With no cutoff the histogram's lowest/highest used bins are the channel min/max.
    """
    wide = wide_dtype(x.device)
    i = torch.arange(256, device=x.device)
    lo = x.amin(dim=(2, 3)).to(wide).unsqueeze(-1)
    hi = x.amax(dim=(2, 3)).to(wide).unsqueeze(-1)
    stretch = hi > lo
    # tensor / tensor: ``255.0 / t`` would be computed as ``255 * (1 / t)`` and round differently
    scale = torch.full_like(hi, 255.0) / torch.where(stretch, hi - lo, torch.ones_like(hi))
    lut = (i.to(wide) * scale + (-lo * scale)).trunc_().clamp_(0.0, 255.0).long()
    return torch.where(stretch, lut, i)


def equalize_lut(x: torch.Tensor) -> torch.Tensor:
    """``ImageOps.equalize`` LUT ``[N, C, 256]``: ``(step // 2 + #pixels below v) // step``, clipped to 255.

    ``step = (#pixels - #pixels in the last used bin) // 255``; identity for <= 1 used bin or step 0.
    """
    n, c, h, w = x.shape
    mc = n * c
    i = torch.arange(256, device=x.device)
    offsets = torch.arange(mc, device=x.device).view(mc, 1) * 256
    hist = torch.bincount((x.reshape(mc, h * w).long() + offsets).view(-1), minlength=mc * 256).view(mc, 256)
    nonzero = hist > 0
    last = 255 - nonzero.flip(1).to(torch.uint8).argmax(dim=1, keepdim=True)
    step = (h * w - hist.gather(1, last)) // 255
    below = hist.cumsum(1) - hist
    lut = (step // 2 + below).div(step.clamp(min=1), rounding_mode="floor").clamp_(max=255)
    identity = (nonzero.sum(1, keepdim=True) <= 1) | (step == 0)
    return torch.where(identity, i, lut).view(n, c, 256)


def apply_lut(x: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """``Image.point``: ``out[n, c] = lut[n, c, x[n, c]]`` (uint8); ``lut`` is ``[N, C or 1, 256]``."""
    n, c, h, w = x.shape
    return lut.to(torch.uint8).expand(n, c, 256).gather(2, x.reshape(n, c, h * w).long()).view(n, c, h, w)


# ----------------------------------------------------------------------------------------------------------
# ImageEnhance ops: Image.blend(degenerate, image, factor)


def _luma(x: torch.Tensor) -> torch.Tensor:
    """Pillow ``convert("L")`` as int32 ``[N, 1, H, W]``: ``(R*19595 + G*38470 + B*7471 + 0x8000) >> 16``."""
    xi = x.to(torch.int32)
    if x.shape[1] == 1:
        return xi
    weights = torch.tensor([19595, 38470, 7471], dtype=torch.int32, device=x.device).view(1, 3, 1, 1)
    return ((xi * weights).sum(1, keepdim=True, dtype=torch.int32) + 0x8000) >> 16


# float32 SMOOTH kernel weights as Pillow stores them (1/13 and 5/13 rounded to float32)
_SMOOTH_EDGE = (torch.tensor(1.0, dtype=torch.float32) / 13.0).item()
_SMOOTH_CENTRE = (torch.tensor(5.0, dtype=torch.float32) / 13.0).item()


def _smooth(x: torch.Tensor) -> torch.Tensor:
    """``ImageFilter.SMOOTH`` (3x3 kernel 1,1,1/1,5,1/1,1,1 over 13), float32 in Pillow's order; border kept.

    Pillow: ``ss = 0.5; ss += row(y+1); ss += row(y); ss += row(y-1)`` with
    ``row = (p[x-1]*k0 + p[x]*k1) + p[x+1]*k2``, each product rounded to float32, then clip and truncate.
    """
    h, w = x.shape[-2:]
    xf = x.to(torch.float32)
    if h < 3 or w < 3:
        return xf
    pe = xf * _SMOOTH_EDGE
    pc = xf * _SMOOTH_CENTRE
    edge_rows = (pe[..., :-2] + pe[..., 1:-1]) + pe[..., 2:]  # [.., H, W-2]
    centre_rows = (pe[..., 1:-1, :-2] + pc[..., 1:-1, 1:-1]) + pe[..., 1:-1, 2:]  # [.., H-2, W-2]
    ss = edge_rows[..., 2:, :] + 0.5
    ss += centre_rows
    ss += edge_rows[..., :-2, :]
    xf[..., 1:-1, 1:-1] = ss.clamp_(0.0, 255.0).trunc_()
    return xf


def degenerate_image(name: str, x: torch.Tensor) -> torch.Tensor:
    """The ``degenerate`` image of ``PIL.ImageEnhance.<name>`` (float32, broadcastable to ``x``)."""
    if name == "Brightness":  # black
        return torch.zeros(1, 1, 1, 1, dtype=torch.float32, device=x.device).expand(x.shape)
    if name == "Color":  # grayscale; for 1-channel images the image itself (identity)
        return _luma(x).to(torch.float32).expand(x.shape)
    if name == "Contrast":  # constant int(mean(L) + 0.5)
        luma = _luma(x)
        mean = luma.sum(dim=(1, 2, 3), dtype=torch.int64).to(wide_dtype(x.device)) / float(luma[0].numel())
        return torch.floor(mean + 0.5).to(torch.float32).view(-1, 1, 1, 1).expand(x.shape)
    if name == "Sharpness":
        return _smooth(x)
    raise ValueError(f"{name} is not an ImageEnhance op")


def blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``ImagingBlend(degenerate, x, factor)``: float32 ``d + f * (x - d)``, clipped, truncated to uint8."""
    f = factor.to(torch.float32).view(-1, 1, 1, 1)
    out = degenerate + f * (x.to(torch.float32) - degenerate)
    return out.clamp_(0.0, 255.0).to(torch.uint8)


# ----------------------------------------------------------------------------------------------------------
# CutoutAbs (ImageDraw.rectangle)


def cutout_abs(x: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor, size: float) -> torch.Tensor:
    """Reference ``CutoutAbs`` given the drawn (pre-shift) centres ``x0``, ``y0`` ``[N]``.

    Box start ``int(max(0, c - size/2))``, end ``min(dim, start + size)`` truncated, both inclusive (as
    ``ImageDraw.rectangle`` fills), filled with (125, 123, 114) (125 for one channel).  Deterministic.
    """
    check_images(x)
    n, c, h, w = x.shape
    if size < 0:
        return x.clone()
    wide = wide_dtype(x.device)
    centre = torch.stack([per_sample(x0, n, x.device, wide), per_sample(y0, n, x.device, wide)], 1)
    lo = (centre - size / 2.0).clamp_(min=0).trunc_()  # int(max(0, c - v / 2))
    hi = (lo + size).clamp_(max=torch.tensor([w, h], dtype=wide, device=x.device)).trunc_()  # min(w, x0 + v)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    inside = (cols >= lo[:, 0].view(n, 1, 1)) & (cols <= hi[:, 0].view(n, 1, 1))
    inside = inside & (rows >= lo[:, 1].view(n, 1, 1)) & (rows <= hi[:, 1].view(n, 1, 1))
    colour = torch.tensor(_CUTOUT_ABS_COLOR[:c], dtype=torch.uint8, device=x.device).view(1, c, 1, 1)
    # x + inside * (colour - x) in wrapping uint8 arithmetic (much faster than torch.where on uint8)
    return x + inside.unsqueeze(1).to(torch.uint8) * (colour - x)
