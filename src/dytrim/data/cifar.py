"""CIFAR-10 / CIFAR-100 into ImageArrays, from the compact `.npz` of the shared data folder or the original python
batches (as torchvision unpacks them), hash-checked against a `MANIFEST.md` next to the files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dytrim.data.arrays import ImageArrays, build_arrays, load_npz, npz_classes
from dytrim.data.errors import REDOWNLOAD, DataError, not_found
from dytrim.data.integrity import PathLike, unpickle, verify_file

__all__ = ["CIFAR10_CLASSES", "CIFAR100_CLASSES", "read_cifar"]

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR100_CLASSES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel "
    "can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur "
    "dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion "
    "lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree "
    "pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea "
    "seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table "
    "tank telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman "
    "worm"
).split()


@dataclass(frozen=True)
class _CifarLayout:
    """File names and pickle keys of one CIFAR python-version archive."""

    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    label_key: bytes
    names_key: bytes
    classes: tuple[str, ...]


_CIFAR_LAYOUT = {
    10: _CifarLayout(
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        "batches.meta",
        b"labels",
        b"label_names",
        tuple(CIFAR10_CLASSES),
    ),
    100: _CifarLayout(
        "cifar-100-python",
        ("train",),
        ("test",),
        "meta",
        b"fine_labels",
        b"fine_label_names",
        tuple(CIFAR100_CLASSES),
    ),
}


def _cifar_batches(files: Sequence[Path], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate python batches (rows of 3072 bytes, R then G then B planes) into NHWC + labels."""
    xs, ys = [], []
    for f in files:
        d = unpickle(f)
        if b"data" not in d or label_key not in d:
            raise DataError(
                f"{f}: batch lacks the keys b'data' and {label_key!r} (has {sorted(map(repr, d))}); "
                f"wrong file for this data set? {REDOWNLOAD}"
            )
        data = np.asarray(d[b"data"])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataError(
                f"{f}: b'data' must be uint8 [N, 3072], got {data.dtype} {data.shape}; {REDOWNLOAD}"
            )
        labels = np.asarray(d[label_key])
        if labels.shape != (len(data),):
            raise DataError(f"{f}: {labels.size} labels for {len(data)} images; {REDOWNLOAD}")
        xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(labels)
    return np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys)


def read_cifar(path: PathLike, num_classes: int = 10, verify: bool = True) -> ImageArrays:
    """Read CIFAR-10 or CIFAR-100 (fine labels) in original file order.

    `path` is an `.npz` with uint8 x_train/y_train/x_test/y_test (x NHWC, as in the shared data folder)
    or a folder in torchvision layout: `cifar-10-batches-py/` / `cifar-100-python/` itself or its parent.
    With `verify`, files listed in a MANIFEST.md next to them are checked against its sha256.
    """
    if num_classes not in _CIFAR_LAYOUT:
        raise ValueError(f"num_classes must be 10 or 100 for CIFAR, got {num_classes}")
    lay = _CIFAR_LAYOUT[num_classes]
    folder, train_names, test_names = lay.folder, lay.train, lay.test
    p = Path(path).expanduser()
    if p.is_file():
        if p.suffix != ".npz":
            fix = " (extract it first: tar xzf <file>)" if p.name.endswith((".tar.gz", ".tgz")) else ""
            raise DataError(f"{p}: expected an .npz file or a '{folder}' folder{fix}")
        a = load_npz(p, ["x_train", "y_train", "x_test", "y_test"], verify)
        return build_arrays(
            a["x_train"],
            a["y_train"],
            a["x_test"],
            a["y_test"],
            npz_classes(a, lay.classes),
            str(p),
            channels=3,
        )
    candidates = [p, p / folder]
    d = next((c for c in candidates if (c / train_names[0]).is_file()), None)
    if d is None:
        raise not_found(
            f"CIFAR-{num_classes} at {p}",
            [c / n for c in candidates for n in (*train_names, *test_names)] if p.is_dir() else [p],
            f"Fix: point to an .npz file or to the folder holding '{folder}/' (the extracted "
            f"python-version archive from the CIFAR site), or pass the right num_classes.",
        )
    needed = [d / n for n in (*train_names, *test_names)]
    absent = [f for f in needed if not f.is_file()]
    if absent:
        raise not_found(
            f"CIFAR-{num_classes} batches in {d}", absent, f"Fix: {REDOWNLOAD}, extract it again."
        )
    if verify:
        for f in needed:
            verify_file(f)
    x_train, y_train = _cifar_batches(needed[: len(train_names)], lay.label_key)
    x_test, y_test = _cifar_batches(needed[len(train_names) :], lay.label_key)
    classes = list(lay.classes)
    if (d / lay.meta).is_file():
        if verify:
            verify_file(d / lay.meta)
        meta = unpickle(d / lay.meta)
        if lay.names_key in meta:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[lay.names_key]]
    return build_arrays(x_train, y_train, x_test, y_test, classes, str(d), channels=3)
