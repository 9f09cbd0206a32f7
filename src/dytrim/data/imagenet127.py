"""Small-ImageNet-127 (downsampled ImageNet grouped into 127 classes, naturally long-tailed) at 32 or 64 px.

Format (the files the DyTrim / CoSSL / DASO codes read): `train_data_batch_1` ... `train_data_batch_10`
and `val_data`, each a pickled dict with 'data' (uint8 rows of 3·s·s, channel-major) and 'labels'
(1-based). As the reference `fix_smallimagenet.py`: classes are renumbered by training frequency (0 = most
frequent), the labeled set is the first round(0.1·n_c) images of each class in file order (numpy's
round-half-to-even), the unlabeled pool is the whole training set (labeled images included) and the test
set is `val_data`. Normalisation constants are the reference's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dytrim.config import DataConfig
from dytrim.data.arrays import ImageArrays
from dytrim.data.errors import DataError
from dytrim.data.integrity import unpickle, verify_file
from dytrim.data.longtail import Split

TRAIN_FILES = [f"train_data_batch_{i}" for i in range(1, 11)]
TEST_FILE = "val_data"
MEAN = (0.48109809, 0.45747185, 0.40785507)
STD = (0.26040889, 0.2532126, 0.26820634)
LABELED_FRACTION = 0.1


@dataclass(frozen=True, eq=False)
class ImageNet127Arrays(ImageArrays):
    """ImageArrays whose classes are ordered by training frequency; `original_label[i]` is class i's 1-based
    label in the files."""

    original_label: tuple[int, ...] = ()


def find_dir(root: Path, side: int) -> Path:
    for cand in (root, root / f"smallimagenet127_{side}", root / f"SmallImageNet_{side}", root / str(side)):
        if (cand / TEST_FILE).exists() and (cand / TRAIN_FILES[0]).exists():
            return cand
    raise DataError(f"data.root: no Small-ImageNet-127 {side}px files under '{root}' (looked for {TEST_FILE} and "
                    f"{TRAIN_FILES[0]} in it and in smallimagenet127_{side}/); set data.root to that folder")


def _read_batch(path: Path, side: int) -> tuple[np.ndarray, np.ndarray]:
    if not path.exists():
        raise DataError(f"data.root: {path} is missing; the Small-ImageNet-127 folder is incomplete")
    verify_file(path)  # hashed (and checked against a MANIFEST.md there) for run.json
    d = unpickle(path)
    data, labels = d.get(b"data", d.get("data")), d.get(b"labels", d.get("labels"))
    if data is None or labels is None:
        raise DataError(f"{path}: expected keys 'data' and 'labels'; this is not a Small-ImageNet batch")
    data, labels = np.asarray(data), np.asarray(labels, dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * side * side or len(data) != len(labels):
        raise DataError(f"{path}: 'data' must be uint8 rows of 3x{side}x{side} = {3 * side * side} values, one per "
                        f"label; got {data.dtype} {data.shape} for {len(labels)} labels (wrong data.image_size?)")
    return data.reshape(-1, 3, side, side).transpose(0, 2, 3, 1), labels


def read_imagenet127(cfg: DataConfig, root: Path) -> ImageNet127Arrays:
    side = cfg.image_size
    if side not in (32, 64):
        raise DataError(f"data.image_size: Small-ImageNet-127 comes at 32 or 64 px; got {side}")
    d = find_dir(root, side)
    parts = [_read_batch(d / name, side) for name in TRAIN_FILES]
    x_tr, y_tr = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    x_te, y_te = _read_batch(d / TEST_FILE, side)
    n_cls = int(y_tr.max())
    if y_tr.min() < 1 or y_te.min() < 1 or y_te.max() > n_cls:
        raise DataError(f"{d}: labels must be 1..{n_cls} in every batch; found train {y_tr.min()}..{y_tr.max()}, "
                        f"val {y_te.min()}..{y_te.max()}")
    counts = np.bincount(y_tr - 1, minlength=n_cls)
    order = np.argsort(-counts, kind="stable")  # new class i = the i-th most frequent
    rank = np.empty(n_cls, dtype=np.int64)
    rank[order] = np.arange(n_cls)
    return ImageNet127Arrays(
        x_train=x_tr, y_train=rank[y_tr - 1], x_test=x_te, y_test=rank[y_te - 1],
        classes=[f"class_{int(o) + 1:03d}" for o in order], original_label=tuple(int(o) + 1 for o in order),
    )


def imagenet127_split(cfg: DataConfig, arrays: ImageArrays, seed: int) -> Split:
    """Labeled: the first round(0.1·n_c) images of each class in file order; unlabeled: the whole training set
    (data.pool=paper, as the reference) or the rest (disjoint). data.n1 / m1 / imb_ratio_* are not used."""
    y, c = arrays.y_train, len(arrays.classes)
    counts = np.bincount(y, minlength=c)
    n_lb = [int(np.around(n * LABELED_FRACTION)) for n in counts]
    lb_idx = np.concatenate([np.flatnonzero(y == k)[:n] for k, n in enumerate(n_lb)]).astype(np.int64)
    all_idx = np.arange(len(y), dtype=np.int64)
    ulb_idx = all_idx if cfg.pool == "paper" else np.setdiff1d(all_idx, lb_idx)
    return Split(lb_idx=lb_idx, ulb_idx=ulb_idx, lb_counts=n_lb,
                 ulb_counts=np.bincount(y[ulb_idx], minlength=c).tolist())
