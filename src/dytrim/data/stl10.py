"""STL-10 from its binary distribution (`stl10_binary/`), resized once and cached, with the reference split.

Files: `{train,test}_X.bin` uint8 images of 3x96x96 stored column-major per channel, `{train,test}_y.bin`
labels 1..10, `unlabeled_X.bin` (100,000 images, no labels), `class_names.txt`. The reference codes
(DARP/CDMAD/DyTrim `fix_stl10.py`) train at 32x32 (`Resize(32)`, Pillow bilinear with antialiasing):
here `data.image_size` (default 32) with torch's antialiased bilinear resize, cached as uint8 in
`data.cache_dir`. Split: labeled = the first N_k images of each class of the 5,000 train images (file
order), unlabeled = the 100k unlabeled images plus, with `data.pool=paper`, the labeled ones.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dytrim.config import DataConfig
from dytrim.data.arrays import ImageArrays
from dytrim.data.errors import DataError
from dytrim.data.integrity import verify_file
from dytrim.data.longtail import Split, longtail_counts

STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
SIDE = 96
CHUNK = 2000  # images resized per call (bounded memory for the 100k unlabeled set)


@dataclass(frozen=True, eq=False)
class ExtraUnlabeledArrays(ImageArrays):
    """x_train = the labeled-candidate train images, then `n_extra` unlabeled images labelled -1."""

    n_train: int = 0
    n_extra: int = 0


def read_stl_images(path: Path) -> np.ndarray:
    """uint8 [N, 96, 96, 3] from an STL-10 `*_X.bin` file (column-major 3x96x96 per image)."""
    size = path.stat().st_size
    if size == 0 or size % (3 * SIDE * SIDE):
        raise DataError(f"{path}: {size} bytes is not a whole number of 3x96x96 STL-10 images (truncated?); "
                        "download the STL-10 binary archive again")
    raw = np.memmap(path, dtype=np.uint8, mode="r").reshape(-1, 3, SIDE, SIDE)
    return raw  # NCWH (column-major); converted chunk by chunk in `resize_stl`


def read_stl_labels(path: Path, n: int) -> np.ndarray:
    y = np.fromfile(path, dtype=np.uint8).astype(np.int64) - 1
    if len(y) != n:
        raise DataError(f"{path}: {len(y)} labels for {n} images; the label and image files do not match")
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise DataError(f"{path}: labels must be 1..10, found {y.min() + 1}..{y.max() + 1}")
    return y


def resize_stl(raw: np.ndarray, side: int) -> np.ndarray:
    """NCWH uint8 (file layout) -> NHWC uint8 at side x side (antialiased bilinear, rounded)."""
    out = np.empty((len(raw), side, side, 3), dtype=np.uint8)
    for i in range(0, len(raw), CHUNK):
        x = torch.from_numpy(np.array(raw[i : i + CHUNK])).permute(0, 1, 3, 2).float()  # NCHW
        if side != SIDE:
            x = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
        out[i : i + CHUNK] = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


def _cached(cfg: DataConfig, path: Path, side: int) -> np.ndarray:
    """Resized images of one `*_X.bin`, from the cache when its (path, size, mtime, side) matches."""
    from dytrim.data.cache import cache_root

    st = path.stat()
    key = hashlib.sha256(f"stl10|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{side}".encode()).hexdigest()[:24]
    cache = cache_root(cfg) / f"stl10-{path.stem}-{side}-{key}.npy"
    if cache.exists():
        try:
            return np.load(cache, mmap_mode="r")
        except (OSError, ValueError):
            pass  # unreadable: rebuild
    x = resize_stl(read_stl_images(path), side)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache.parent, suffix=".npy")
        with os.fdopen(fd, "wb") as f:
            np.save(f, x)
        os.replace(tmp, cache)
    except OSError:
        pass  # a cache that cannot be written only costs time
    return x


def find_stl_dir(root: Path) -> Path:
    for cand in (root, root / "stl10_binary", root / "stl10"):
        if (cand / "train_X.bin").exists():
            return cand
    raise DataError(f"data.root: no STL-10 binary files under '{root}' (looked for train_X.bin in it, "
                    "stl10_binary/ and stl10/). Download stl10_binary.tar.gz and set data.root to where it is "
                    "unpacked")


def read_stl10(cfg: DataConfig, root: Path) -> ExtraUnlabeledArrays:
    """Train (5k, labeled candidates) + unlabeled (100k, label -1) as x_train; test (8k) as x_test."""
    d = find_stl_dir(root)
    for name in ("train_y.bin", "test_X.bin", "test_y.bin"):
        if not (d / name).exists():
            raise DataError(f"data.root: {d / name} is missing; the STL-10 binary folder is incomplete")
    for f in d.glob("*.bin"):  # hashed (and checked against a MANIFEST.md there) for run.json
        verify_file(f)
    side = cfg.image_size
    x_tr, x_te = _cached(cfg, d / "train_X.bin", side), _cached(cfg, d / "test_X.bin", side)
    y_tr, y_te = read_stl_labels(d / "train_y.bin", len(x_tr)), read_stl_labels(d / "test_y.bin", len(x_te))
    extra = _cached(cfg, d / "unlabeled_X.bin", side) if (d / "unlabeled_X.bin").exists() else x_tr[:0]
    names = d / "class_names.txt"
    classes = names.read_text().split() if names.exists() else list(STL10_CLASSES)
    return ExtraUnlabeledArrays(
        x_train=np.concatenate([x_tr, extra]), y_train=np.concatenate([y_tr, np.full(len(extra), -1)]),
        x_test=np.asarray(x_te), y_test=y_te, classes=classes, n_train=len(x_tr), n_extra=len(extra),
    )


def stl10_split(cfg: DataConfig, arrays: ImageArrays, seed: int) -> Split:
    """Labeled: first N_k per class (data.n1, data.imb_ratio_l) of the train images in file order; unlabeled:
    every extra image, plus the labeled ones with data.pool=paper (CDMAD/DyTrim). data.m1 is unused (the
    reference passes 1)."""
    assert isinstance(arrays, ExtraUnlabeledArrays)
    c = len(arrays.classes)
    counts = longtail_counts(cfg.n1, cfg.imb_ratio_l, c)
    y = arrays.y_train[: arrays.n_train]
    lb: list[np.ndarray] = []
    for k, n in enumerate(counts):
        idx = np.flatnonzero(y == k)
        if n > len(idx):
            raise DataError(f"data.n1: class {k} needs {n} labeled images but STL-10 train has {len(idx)}; "
                            f"lower data.n1 (at most {len(idx)})")
        lb.append(idx[:n])
    lb_idx = np.concatenate(lb).astype(np.int64)
    extra = np.arange(arrays.n_train, arrays.n_train + arrays.n_extra, dtype=np.int64)
    ulb_idx = np.concatenate([lb_idx, extra]) if cfg.pool == "paper" else extra
    if len(ulb_idx) == 0:
        raise DataError("data.root: STL-10 without unlabeled_X.bin and data.pool=disjoint leaves no unlabeled "
                        "images; add unlabeled_X.bin or use data.pool=paper")
    known = arrays.y_train[ulb_idx]
    return Split(lb_idx=lb_idx, ulb_idx=ulb_idx, lb_counts=counts,
                 ulb_counts=np.bincount(known[known >= 0], minlength=c).tolist())
