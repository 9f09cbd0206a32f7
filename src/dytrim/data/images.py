"""Decoding one image file with Pillow (EXIF-rotated, 8 bits, RGB or grayscale, resized and centre-cropped to a
square) and finding image files in a folder: what image folders and `dytrim predict` share.

What each Pillow mode becomes (then RGB -> grayscale is Pillow's ITU-R 601-2 luma, grayscale -> RGB repeats it):
  1 (bilevel): 0 / 255.  L, RGB: as stored.  P: the palette is expanded to RGB.
  16-bit grayscale (I;16, I;16L, I;16B, the modes of 16-bit PNG and TIFF files): v >> 8, all 256 levels kept
  (16-bit RGB PNGs are reduced to 8 bits by Pillow itself when it reads them).
  A transparent colour of a 16-bit image is ignored.
  I (32-bit integer): taken as unsigned 16-bit samples, clipped to 0..65535, then >> 8.
  F (32-bit float, arbitrary units): stretched per image, min -> 0, max -> 255 (rounded); NaN / inf -> 0; a
  constant image -> 0.
  Transparency (LA, PA, RGBA, the premultiplied La / RGBa, and P, L or RGB with a transparent colour):
  composited on black, c * alpha / 255 rounded, so a fully transparent pixel is 0 whatever colour it hides.
  CMYK: Pillow's conversion without an ICC profile, R = (255 - C) * (255 - K) / 255 rounded (likewise G, B).
  YCbCr, LAB, HSV, RGBX: Pillow's conversion to RGB. An animation or a multi-page file: its first frame.
Memory budget: an image whose decoded size (width x height x bands x bytes per sample, read from the header
before any pixel is decoded) exceeds DYTRIM_MAX_IMAGE_MB (default 256 MiB) is refused as a bad file: skipped and
listed in a folder, one line in `predict` (at the default budget one image peaks at about 0.35 GB (RGB) to 0.75 GB
(RGBA, 16-bit) of memory). File names that are not valid UTF-8 are read like any other; they are
shown and written with the undecodable bytes as \\xNN (`path_text`).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from dytrim.data.errors import DataError
from dytrim.fileio import env_mib

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
BUDGET_ENV = "DYTRIM_MAX_IMAGE_MB"
DEFAULT_BUDGET_MB = 256
TOO_LARGE = "too large"  # the start of the reason given for an image over the budget
_BYTES_PER_SAMPLE = {"I": 4, "F": 4, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}


class BadImage(Exception):
    """One image file cannot be used (zero bytes, not an image, truncated, too large); it is skipped and reported."""


def _pillow() -> Any:
    try:
        from PIL import Image, ImageOps
    except ImportError as exc:
        raise DataError(
            "reading image folders needs Pillow, which is not installed; install it with: pip install pillow"
        ) from exc
    return Image, ImageOps


def path_text(path: str | os.PathLike[str]) -> str:
    """`path` as printable, UTF-8-encodable text: bytes of a name that are not valid UTF-8 appear as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def image_budget_mb() -> float:
    """The decoded-size budget of one image in MiB: $DYTRIM_MAX_IMAGE_MB, else DEFAULT_BUDGET_MB."""
    try:
        return env_mib(BUDGET_ENV, DEFAULT_BUDGET_MB)
    except ValueError as exc:
        raise DataError(str(exc)) from None


def _check_budget(im: Any, budget_mb: float) -> None:
    """Refuse an image whose decoded size exceeds the budget, from its header alone (nothing is decoded yet)."""
    w, h = im.size
    bands = len(im.getbands())
    mib = w * h * bands * _BYTES_PER_SAMPLE.get(im.mode, 1) / 2**20
    if mib > budget_mb:
        raise BadImage(f"{TOO_LARGE}: {w}x{h} {im.mode} ({bands} bands) is {mib:,.0f} MiB decoded, over the "
                       f"{budget_mb:g} MiB budget for one image; downscale it, or raise {BUDGET_ENV}")


def _row_blocks(a: np.ndarray) -> list[slice]:
    """Row ranges of about 4 M samples: the numpy conversions below hold one block's temporaries at a time."""
    step = max(1, (1 << 22) // max(1, a[:1].size))
    return [slice(i, i + step) for i in range(0, len(a), step)]


def _gray8(values: np.ndarray) -> np.ndarray:
    """uint8 of one band of 16-bit (I;16*) or 32-bit (I, F) samples, by the rules of the module docstring."""
    out = np.zeros(values.shape, np.uint8)
    if values.dtype.kind != "f":
        for rows in _row_blocks(values):
            out[rows] = (np.clip(values[rows], 0, 65535) >> 8).astype(np.uint8)
        return out
    lo, hi = np.inf, -np.inf
    for rows in _row_blocks(values):
        finite = values[rows][np.isfinite(values[rows])]
        if finite.size:
            lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
    if hi > lo:
        for rows in _row_blocks(values):
            v = values[rows].astype(np.float64)
            finite = np.isfinite(v)
            scaled = np.round((np.where(finite, v, lo) - lo) * (255.0 / (hi - lo)))
            out[rows] = np.where(finite, scaled, 0).astype(np.uint8)
    return out


def _composite_on_black(rgba: np.ndarray) -> np.ndarray:
    """uint8 RGB of uint8 RGBA: c * alpha / 255, rounded (c * a / 255 is never halfway between integers)."""
    out = np.empty((*rgba.shape[:-1], 3), np.uint8)
    for rows in _row_blocks(rgba):
        block = rgba[rows].astype(np.uint16)
        out[rows] = ((block[..., :3] * block[..., 3:] + 127) // 255).astype(np.uint8)
    return out


def to_8bit(im: Any, image_mod: Any) -> Any:
    """A Pillow image of any mode as an L or RGB image (`im` itself if it is one), by the module docstring's rules."""
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        return image_mod.fromarray(_gray8(np.asarray(im)))
    if mode in ("La", "RGBa"):
        im, mode = im.convert(mode.upper()), mode.upper()
    if "A" in im.getbands() or "transparency" in im.info:
        rgba = np.asarray(im if mode == "RGBA" else im.convert("RGBA"))
        rgb = _composite_on_black(rgba)
        del rgba  # one full-size copy at a time
        return image_mod.fromarray(rgb)
    return im if mode in ("L", "RGB") else im.convert("L" if mode == "1" else "RGB")


def load_image(path: Path, size: tuple[int, int], channels: int, budget_mb: float | None = None) -> np.ndarray:
    """uint8 [H, W, channels]: EXIF-rotated, 8 bits, RGB or grayscale, shorter side resized, centre-cropped to
    `size`. Images over the budget (default: image_budget_mb()) are refused before decoding."""
    image_mod, ops = _pillow()
    budget = image_budget_mb() if budget_mb is None else budget_mb
    try:
        if path.stat().st_size == 0:
            raise BadImage("zero-byte file")
        with warnings.catch_warnings():  # the budget decides, not Pillow's DecompressionBombWarning
            warnings.simplefilter("ignore", image_mod.DecompressionBombWarning)
            src = image_mod.open(path)
        try:
            _check_budget(src, budget)
            src.load()
            ops.exif_transpose(src, in_place=True)
            im = to_8bit(src, image_mod)
            if im is not src:
                src.close()  # frees the pixels in the file's own mode before the next copy is made
            target = "RGB" if channels == 3 else "L"
            im = im if im.mode == target else im.convert(target)
            h, w = size
            if im.size != (w, h):
                im = ops.fit(im, (w, h), method=image_mod.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
        finally:
            src.close()
    except BadImage:
        raise
    except image_mod.UnidentifiedImageError as exc:
        raise BadImage("not an image format Pillow can read") from exc
    except image_mod.DecompressionBombError as exc:
        raise BadImage(f"{TOO_LARGE}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - any decoder failure means: skip this file and say why
        raise BadImage(f"cannot be decoded ({type(exc).__name__}: {exc})") from exc
    return arr[..., None] if arr.ndim == 2 else arr


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def list_images(folder: Path) -> list[Path]:
    """Image files under `folder` at any depth, sorted; hidden files and folders are ignored."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in filenames if is_image_file(Path(f))]
    return sorted(found)
