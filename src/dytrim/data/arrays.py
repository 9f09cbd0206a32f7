"""ImageArrays, the in-memory form of every data set (uint8 NHWC images, int64 labels, class names), and the checks
that build one from raw arrays or an `.npz` file, naming the file and the fix for every kind of bad input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dytrim.data.errors import CORRUPT_ERRORS, REDOWNLOAD, DataError
from dytrim.data.integrity import verify_file

__all__ = ["ImageArrays", "as_images", "as_labels", "build_arrays", "load_npz", "npz_classes"]


@dataclass(frozen=True, eq=False)
class ImageArrays:
    """A whole image data set in memory: x uint8 [N, H, W, C] (always NHWC), y int64 [N], class names.

    Arrays are compared by identity (eq=False) since elementwise `==` of arrays is not a bool.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        h, w, c = self.x_train.shape[1:]
        return int(h), int(w), int(c)


# --------------------------------------------------------------------------------------------------
# validation helpers


def as_images(x: Any, where: str, channels: int | None, allow_3d: bool = False) -> np.ndarray:
    """Check x is uint8 [N, H, W, C] (or [N, H, W] when allow_3d, which gains C=1)."""
    if not isinstance(x, np.ndarray):
        raise DataError(f"{where}: expected a numpy array of images, got {type(x).__name__}; {REDOWNLOAD}")
    if x.dtype != np.uint8:
        raise DataError(
            f"{where}: images must be uint8 pixels 0..255, got dtype {x.dtype}; convert with "
            "np.round(x * 255).astype(np.uint8) if they are floats in [0, 1], or re-download"
        )
    if allow_3d and x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        want = "[N, H, W, C] (or [N, H, W])" if allow_3d else "[N, H, W, C]"
        raise DataError(f"{where}: images must be 4-D {want}, got shape {x.shape}; {REDOWNLOAD}")
    if channels is not None and x.shape[-1] != channels:
        hint = " (looks like NCHW: transpose to NHWC)" if x.shape[1] == channels else ""
        raise DataError(
            f"{where}: expected {channels} channels last (NHWC), got shape {x.shape}{hint}; {REDOWNLOAD}"
        )
    if x.shape[1] < 1 or x.shape[2] < 1:
        raise DataError(f"{where}: empty images, shape {x.shape}; {REDOWNLOAD}")
    return np.ascontiguousarray(x)


def as_labels(y: Any, n: int, num_classes: int, where: str) -> np.ndarray:
    """Check y is a 1-D integer array of n labels in [0, num_classes); return it as int64."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"{where}: labels must be 1-D, got shape {y.shape}; {REDOWNLOAD}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{where}: labels must be integers, got dtype {y.dtype}; {REDOWNLOAD}")
    if len(y) != n:
        raise DataError(
            f"{where}: {len(y)} labels for {n} images; the file is truncated or mismatched. {REDOWNLOAD}"
        )
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        bad = int(y.min()) if y.min() < 0 else int(y.max())
        raise DataError(
            f"{where}: label {bad} is outside [0, {num_classes}); wrong data set for "
            f"num_classes={num_classes}, or a corrupt file. {REDOWNLOAD}"
        )
    return y


def build_arrays(
    x_train: Any,
    y_train: Any,
    x_test: Any,
    y_test: Any,
    classes: Sequence[str],
    where: str,
    channels: int | None,
    allow_3d: bool = False,
) -> ImageArrays:
    """Validate the four arrays together and wrap them."""
    k = len(classes)
    xtr = as_images(x_train, f"{where} [x_train]", channels, allow_3d)
    xte = as_images(x_test, f"{where} [x_test]", channels, allow_3d)
    if xtr.shape[1:] != xte.shape[1:]:
        raise DataError(
            f"{where}: train images {xtr.shape[1:]} and test images {xte.shape[1:]} differ in "
            f"shape; {REDOWNLOAD}"
        )
    ytr = as_labels(y_train, len(xtr), k, f"{where} [y_train]")
    yte = as_labels(y_test, len(xte), k, f"{where} [y_test]")
    present = len(np.unique(ytr))
    if present != k:
        raise DataError(
            f"{where}: the training labels cover {present} of {k} classes; this is not the expected "
            f"{k}-class data set (wrong file, or wrong num_classes?)"
        )
    return ImageArrays(xtr, ytr, xte, yte, list(classes))


# --------------------------------------------------------------------------------------------------
# .npz files


def load_npz(path: Path, keys: Sequence[str], verify: bool) -> dict[str, Any]:
    """Read the named arrays from an npz (after the manifest hash check); corrupt files raise DataError."""
    if verify:
        verify_file(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise DataError(f"{path}: not an .npz archive (a single .npy array?); {REDOWNLOAD}")
            missing = [k for k in keys if k not in z.files]
            if missing:
                raise DataError(
                    f"{path}: missing arrays {missing} (has {sorted(z.files)}); expected the keys "
                    f"{list(keys)}. Re-create the file with "
                    f"np.savez(path, {', '.join(f'{k}=...' for k in keys)})"
                )
            out = {k: z[k] for k in keys}
            if "classes" in z.files:
                out["classes"] = z["classes"]
            return out
    except DataError:
        raise
    except (*CORRUPT_ERRORS, KeyError) as exc:
        raise DataError(
            f"{path}: cannot read the .npz archive ({type(exc).__name__}: {exc}); it is truncated or "
            f"corrupt: {REDOWNLOAD}"
        ) from exc


def npz_classes(arrays: dict[str, Any], default: Sequence[str]) -> list[str]:
    """Class names stored in the npz (optional `classes` array), else the data set's standard names."""
    names = arrays.get("classes")
    if names is None:
        return list(default)
    return [str(c) for c in np.asarray(names).tolist()]
