"""Small-ImageNet-127 reader on synthetic files in the exact format (pickled dicts of uint8 rows, 1-based
labels, ten train batches + val_data): layout, frequency renumbering, the 10 % labeled split, errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from dytrim.config import load_config
from dytrim.data.errors import DataError
from dytrim.data.sources import load_data

# the synthetic Small-ImageNet-127 files have no MANIFEST.md entry by design: their warning is expected here
pytestmark = [pytest.mark.filterwarnings(r"ignore:data file\(s\) without a MANIFEST\.md entry:UserWarning")]

COUNTS = [25, 3, 45, 15, 35]  # images per original (1-based) label 1..5


def _write(root: Path, side: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.full(n, k + 1) for k, n in enumerate(COUNTS)])
    rng.shuffle(labels)
    x = rng.integers(0, 256, size=(len(labels), 3 * side * side), dtype=np.uint8)
    root.mkdir(parents=True)
    for i, (xb, yb) in enumerate(zip(np.array_split(x, 10), np.array_split(labels, 10), strict=True)):
        with open(root / f"train_data_batch_{i + 1}", "wb") as f:
            pickle.dump({"data": xb, "labels": yb.tolist(), "mean": x.mean(0)}, f, protocol=2)
    with open(root / "val_data", "wb") as f:
        pickle.dump({"data": x[:12], "labels": labels[:12].tolist()}, f, protocol=2)
    return x, labels


def _cfg(root: Path, *extra: str):
    # the 3-image class gets round(0.3) = 0 labeled images (the reference rule): an explicit opt-in
    return load_config("mnist-lt-fixmatch", [f"data.root={root}", "data.name=smallimagenet127",
                                             "data.allow_empty_classes=true", *extra])


def test_layout_renumbering_and_split(tmp_path) -> None:
    x, labels = _write(tmp_path / "smallimagenet127_32")
    data = load_data(_cfg(tmp_path).data, 0)
    # class 0 = most frequent: original labels 3 (45), 5 (35), 1 (25), 4 (15), 2 (3)
    assert data.classes == ["class_003", "class_005", "class_001", "class_004", "class_002"]
    new_of = {3: 0, 5: 1, 1: 2, 4: 3, 2: 4}
    assert data.y_train.tolist() == [new_of[int(v)] for v in labels]
    first = x[0].reshape(3, 32, 32)  # channel-major rows -> NCHW on the device
    assert np.array_equal(data.x_train[0].numpy(), first)
    # labeled: round-half-even of 10 %: 4.5 -> 4, 3.5 -> 4, 2.5 -> 2, 1.5 -> 2, 0.3 -> 0; the first of each class
    assert data.split.lb_counts == [4, 4, 2, 2, 0]
    for k, n in enumerate(data.split.lb_counts):
        cls_pos = np.flatnonzero(data.y_train.numpy() == k)[:n]
        assert set(cls_pos.tolist()) <= set(data.lb_idx.tolist())
    assert len(data.ulb_idx) == len(labels)  # paper pool: the whole training set
    disjoint = load_data(_cfg(tmp_path, "data.pool=disjoint").data, 0)
    assert len(disjoint.ulb_idx) == len(labels) - 12
    assert len(data.y_test) == 12 and data.mean[0] == pytest.approx(0.48109809)


def test_64px_and_wrong_size(tmp_path) -> None:
    _write(tmp_path / "smallimagenet127_64", side=64)
    data = load_data(_cfg(tmp_path, "data.image_size=64").data, 0)
    assert data.x_train.shape[1:] == (3, 64, 64)
    with pytest.raises(DataError, match="image_size"):
        load_data(_cfg(tmp_path / "smallimagenet127_64", "data.image_size=48").data, 0)
    with pytest.raises(DataError, match="3x32x32"):
        load_data(_cfg(tmp_path / "smallimagenet127_64").data, 0)  # 64 px files read as 32 px


def test_missing_and_corrupt_batches(tmp_path) -> None:
    root = tmp_path / "smallimagenet127_32"
    _write(root)
    (root / "train_data_batch_7").unlink()
    with pytest.raises(DataError, match="train_data_batch_7"):
        load_data(_cfg(tmp_path).data, 0)
    (root / "train_data_batch_7").write_bytes(b"\x80\x02}q\x00(X")
    with pytest.raises(DataError, match="train_data_batch_7"):
        load_data(_cfg(tmp_path).data, 0)
    with pytest.raises(DataError, match="no Small-ImageNet-127"):
        load_data(_cfg(tmp_path / "elsewhere").data, 0)
