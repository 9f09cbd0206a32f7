"""Decoding one image file with Pillow (EXIF-rotated, RGB or grayscale, resized and centre-cropped to a square)
and finding image files in a folder: what image folders and `dytrim predict` share.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from dytrim.data.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class BadImage(Exception):
    """One image file cannot be used (zero bytes, not an image, truncated); it is skipped and reported."""


def _pillow() -> Any:
    try:
        from PIL import Image, ImageOps
    except ImportError as exc:
        raise DataError(
            "reading image folders needs Pillow, which is not installed; install it with: pip install pillow"
        ) from exc
    return Image, ImageOps


def load_image(path: Path, size: tuple[int, int], channels: int) -> np.ndarray:
    """uint8 [H, W, channels]: EXIF-rotated, RGB or grayscale, shorter side resized, centre-cropped to `size`."""
    image_mod, ops = _pillow()
    try:
        if path.stat().st_size == 0:
            raise BadImage("zero-byte file")
        with image_mod.open(path) as im:
            im = ops.exif_transpose(im)
            if im.mode == "P":  # palette images may carry transparency; go through RGBA to drop it cleanly
                im = im.convert("RGBA")
            im = im.convert("RGB" if channels == 3 else "L")
            h, w = size
            if im.size != (w, h):
                im = ops.fit(im, (w, h), method=image_mod.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except BadImage:
        raise
    except image_mod.UnidentifiedImageError as exc:
        raise BadImage("not an image format Pillow can read") from exc
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
