"""The RandAugment policy of the reference code (ildoonet ``RandAugment(n=3, m=4)``): its 16 ops and their value
ranges, one op applied by name, and the batched draw that gives every sample its own ops, signs and boxes.

Reference details kept on purpose: the sign of Rotate/Shear/Translate flips with p = 0.5; the CutoutAbs
centre is ``np.random.uniform(w)``, i.e. uniform(low=w, high=1), so it lies in (1, w], not [0, w).
"""

from __future__ import annotations

import functools

import torch

from dytrim.data.augment.ops import (
    affine_index,
    apply_lut,
    autocontrast_lut,
    blend,
    check_images,
    cutout_abs,
    degenerate_image,
    draw_int,
    draw_uniform,
    equalize_lut,
    gather_flat,
    geometric_coeffs,
    per_sample,
    value_lut,
    wide_dtype,
)

RAND_AUGMENT_OPS: list[str] = [
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "Posterize",
    "Solarize",
    "SolarizeAdd",
    "Color",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "CutoutAbs",
    "TranslateXabs",
    "TranslateYabs",
]

# (min, max) of each op's value range, as in ildoonet ``augment_list()``.
_RANGES: dict[str, tuple[float, float]] = {
    "AutoContrast": (0.0, 1.0),
    "Equalize": (0.0, 1.0),
    "Invert": (0.0, 1.0),
    "Rotate": (0.0, 30.0),
    "Posterize": (0.0, 4.0),
    "Solarize": (0.0, 256.0),
    "SolarizeAdd": (0.0, 110.0),
    "Color": (0.1, 1.9),
    "Contrast": (0.1, 1.9),
    "Brightness": (0.1, 1.9),
    "Sharpness": (0.1, 1.9),
    "ShearX": (0.0, 0.3),
    "ShearY": (0.0, 0.3),
    "CutoutAbs": (0.0, 40.0),
    "TranslateXabs": (0.0, 100.0),
    "TranslateYabs": (0.0, 100.0),
}

# Ops whose value gets a random sign (p = 0.5) in the reference.
_SIGNED = frozenset({"Rotate", "ShearX", "ShearY", "TranslateXabs", "TranslateYabs"})


def op_value(name: str, magnitude: float) -> float:
    """Unsigned value of op ``name`` at RandAugment magnitude ``m``: ``m / 30 * (max - min) + min``."""
    lo, hi = _RANGES[name]
    return (float(magnitude) / 30) * float(hi - lo) + lo


# Ops grouped by how they are computed; ``rand_augment`` runs each group once per round.
_LUT_OPS = ("AutoContrast", "Equalize", "Invert", "Posterize", "Solarize", "SolarizeAdd")
_ENHANCE_OPS = ("Color", "Contrast", "Brightness", "Sharpness")
_GEOMETRIC_OPS = ("Rotate", "ShearX", "ShearY", "TranslateXabs", "TranslateYabs")
_GROUPS = (_LUT_OPS, _ENHANCE_OPS, _GEOMETRIC_OPS, ("CutoutAbs",))
_GROUPED_ORDER = [name for group in _GROUPS for name in group]


def apply_op(name: str, x: torch.Tensor, value: torch.Tensor | float) -> torch.Tensor:
    """Apply RandAugment op ``name`` to uint8 ``x`` ``[N, C, H, W]`` with per-sample value ``[N]``.

    Deterministic; ``value`` is already signed (e.g. a negative angle) and ignored by the value-free ops.
    Output is uint8 and equals, image by image, the Pillow call the reference makes.  Use
    :func:`cutout_abs` for ``CutoutAbs`` (its box position is random, not a value).
    """
    check_images(x)
    if name not in _RANGES:
        raise ValueError(f"unknown RandAugment op {name!r}")
    if name == "CutoutAbs":
        raise ValueError("CutoutAbs needs a box position: call cutout_abs(x, x0, y0, size)")
    n, _, h, w = x.shape
    if n == 0:
        return x.clone()
    v = per_sample(value, n, x.device, wide_dtype(x.device))
    if name == "AutoContrast":
        return apply_lut(x, autocontrast_lut(x))
    if name == "Equalize":
        return apply_lut(x, equalize_lut(x))
    if name in _LUT_OPS:
        return apply_lut(x, value_lut(name, v).unsqueeze(1))
    if name in _ENHANCE_OPS:
        return blend(degenerate_image(name, x), x, v)
    return gather_flat(x, affine_index(geometric_coeffs(name, v, h, w), h, w))


@functools.lru_cache(maxsize=16)
def _code_tables(magnitude: float, h: int, w: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Per-code constants for ``rand_augment`` (code = 2 * grouped rank + negated), computed once.

    Returns the signed values ``[32]``, the value-only point ops' LUTs ``[32, 256]`` (uint8) and the
    geometric ops' flat source indices ``[32, H*W]`` -- made by the same functions :func:`apply_op` uses.
    """
    wide = wide_dtype(device)
    vals = []
    for name in _GROUPED_ORDER:
        v = op_value(name, magnitude)
        vals += [v, -v if name in _SIGNED else v]
    values = torch.tensor(vals, dtype=wide, device=device)
    lut = torch.arange(256, device=device).repeat(len(vals), 1)
    warp = torch.arange(h * w, device=device).repeat(len(vals), 1)
    for k, name in enumerate(_GROUPED_ORDER):
        v = values[2 * k : 2 * k + 2]
        if name in ("Invert", "Posterize", "Solarize", "SolarizeAdd"):
            lut[2 * k : 2 * k + 2] = value_lut(name, v)
        elif name in _GEOMETRIC_OPS:
            warp[2 * k : 2 * k + 2] = affine_index(geometric_coeffs(name, v, h, w), h, w)
    return values, lut.to(torch.uint8), warp


def rand_augment(
    x: torch.Tensor, gen: torch.Generator, n_ops: int = 3, magnitude: float = 4.0
) -> torch.Tensor:
    """ildoonet ``RandAugment(n_ops, magnitude)`` on a uint8 batch, every draw made per sample from ``gen``.

    Each round draws per sample one of the 16 ops (with replacement), a sign (p = 0.5) for the signed ops
    and a CutoutAbs centre.  Samples are sorted by op and each op group (lookup tables, blends, warps,
    cutout) runs once per round on its contiguous slice; constant LUTs and warps come from a cache.
    """
    check_images(x)
    n, c, h, w = x.shape
    if n == 0 or n_ops <= 0:
        return x.clone()
    dev = x.device
    wide = wide_dtype(dev)
    choice = draw_int(gen, len(RAND_AUGMENT_OPS), (n_ops, n), dev)
    negate = draw_uniform(gen, (n_ops, n), dev) > 0.5  # reference: ``if random.random() > 0.5: v = -v``
    u = draw_uniform(gen, (n_ops, n, 2), dev).to(wide)
    # ``np.random.uniform(w)`` is uniform(low=w, high=1): centres in (1, w] (reference quirk, kept)
    extent = torch.tensor([w, h], dtype=wide, device=dev)
    centres = extent + (1.0 - extent) * u
    values, lut_table, warp_table = _code_tables(float(magnitude), h, w, dev)
    rank = torch.tensor([_GROUPED_ORDER.index(name) for name in RAND_AUGMENT_OPS], device=dev)
    signed = torch.tensor([name in _SIGNED for name in RAND_AUGMENT_OPS], device=dev)
    codes = 2 * rank[choice] + (negate & signed[choice]).long()  # [n_ops, N]
    cutout_size = op_value("CutoutAbs", magnitude)

    out = x
    for r in range(n_ops):
        order = torch.argsort(codes[r], stable=True)
        code = codes[r].index_select(0, order)
        counts = torch.bincount(code, minlength=2 * len(_GROUPED_ORDER)).tolist()
        src = out.index_select(0, order)
        pieces = []
        begin = 0
        for group in _GROUPS:
            spans = []
            end = begin
            for name in group:
                k = _GROUPED_ORDER.index(name)
                cnt = counts[2 * k] + counts[2 * k + 1]
                if cnt:
                    spans.append((name, end, end + cnt))
                    end += cnt
            if not spans:
                continue
            seg = src[begin:end]
            if group is _LUT_OPS:
                lut = lut_table.index_select(0, code[begin:end]).unsqueeze(1)
                if spans[0][0] in ("AutoContrast", "Equalize"):
                    lut = lut.expand(end - begin, c, 256).clone()
                    for name, s, e in spans[:2]:
                        if name == "AutoContrast":
                            lut[s - begin : e - begin] = autocontrast_lut(src[s:e])
                        elif name == "Equalize":
                            lut[s - begin : e - begin] = equalize_lut(src[s:e])
                pieces.append(apply_lut(seg, lut))
            elif group is _ENHANCE_OPS:
                degenerate = torch.cat([degenerate_image(name, src[s:e]) for name, s, e in spans])
                pieces.append(blend(degenerate, seg, values.index_select(0, code[begin:end])))
            elif group is _GEOMETRIC_OPS:
                pieces.append(gather_flat(seg, warp_table.index_select(0, code[begin:end])))
            else:
                centre = centres[r].index_select(0, order[begin:end])
                pieces.append(cutout_abs(seg, centre[:, 0], centre[:, 1], cutout_size))
            begin = end
        inverse = torch.empty_like(order).scatter_(0, order, torch.arange(n, device=dev))
        out = torch.cat(pieces).index_select(0, inverse)
    return out
