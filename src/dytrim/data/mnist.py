"""MNIST / Fashion-MNIST into ImageArrays, from an `.npz` or the four IDX files (plain or `.gz`, torchvision's
layouts included), and the 10,000 MNIST digits embedded in the package, each checked against its known hash.
"""

from __future__ import annotations

import gzip
import importlib.resources
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np

from dytrim.data.arrays import ImageArrays, as_images, as_labels, build_arrays, load_npz, npz_classes
from dytrim.data.errors import CORRUPT_ERRORS, REDOWNLOAD, DataError, not_found
from dytrim.data.integrity import PathLike, check_hash, verify_file

__all__ = ["FASHION_MNIST_CLASSES", "MNIST10K_SHA256", "MNIST_CLASSES", "read_mnist", "read_mnist10k"]

MNIST_CLASSES = [str(i) for i in range(10)]
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]

#: sha256 of the embedded `mnist10k.npz` (same as the shared data folder's MANIFEST.md entry).
MNIST10K_SHA256 = "6a72e98555e4151f10ff8da449b7a5e17e3ac5789f4ffc45a547518118d8ed45"

_IDX_IMAGES, _IDX_LABELS = 2051, 2049
_MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


@contextmanager
def _open_maybe_gz(path: Path) -> Iterator[BinaryIO]:
    with open(path, "rb") as raw:
        if path.suffix == ".gz":
            with gzip.GzipFile(fileobj=raw) as gz:
                yield gz  # type: ignore[misc]
        else:
            yield raw


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse one IDX file (big-endian magic, dims, then unsigned bytes), validating magic and length."""
    try:
        with _open_maybe_gz(path) as f:
            data = f.read()
    except CORRUPT_ERRORS as exc:
        raise DataError(
            f"{path}: cannot read ({type(exc).__name__}: {exc}); the file is truncated or corrupt: "
            f"{REDOWNLOAD}"
        ) from exc
    ndim = 3 if magic == _IDX_IMAGES else 1
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: only {len(data)} bytes, shorter than the IDX header; {REDOWNLOAD}")
    got = int.from_bytes(data[:4], "big")
    if got != magic:
        kind = {_IDX_IMAGES: "images", _IDX_LABELS: "labels"}
        raise DataError(
            f"{path}: IDX magic number {got}, expected {magic} ({kind[magic]}); wrong file in this slot "
            f"(images and labels swapped?) or not an IDX file. {REDOWNLOAD}"
        )
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    size = int(np.prod(dims))
    if len(data) - header != size:
        raise DataError(
            f"{path}: header says {dims} = {size} bytes of data but the file holds {len(data) - header}; "
            f"it is truncated or corrupt: {REDOWNLOAD}"
        )
    if magic == _IDX_IMAGES and min(dims) < 1:
        raise DataError(f"{path}: bad image dimensions {dims}; {REDOWNLOAD}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def _idx_file(d: Path, stem: str) -> Path | None:
    """The IDX file for `stem` in d: plain or .gz, dash or dot before 'idx' (both spellings circulate)."""
    alt = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", alt, alt + ".gz"):
        if (d / name).is_file():
            return d / name
    return None


def _mentions_fashion(p: Path) -> bool:
    """Whether the file or its two parent folders are named like Fashion-MNIST (e.g. FashionMNIST/raw)."""
    return any("fashion" in part.lower() for part in p.parts[-3:])


def read_mnist(path: PathLike, classes: Sequence[str] | None = None, verify: bool = True) -> ImageArrays:
    """Read MNIST or Fashion-MNIST: x uint8 [N, 28, 28, 1], y int64.

    `path` is an `.npz` (x_train [N,28,28,1] or [N,28,28], y_train, x_test, y_test) or a folder with the
    four IDX files (optionally .gz), including torchvision's `<root>/MNIST/raw` and
    `<root>/FashionMNIST/raw` (pass the root, the data set folder or the raw folder). Class names are
    the Fashion-MNIST ones when the path mentions "fashion", else digits, unless `classes` is given.
    """
    p = Path(path).expanduser()
    if classes is None:
        classes = FASHION_MNIST_CLASSES if _mentions_fashion(p) else MNIST_CLASSES
    if p.is_file():
        if p.suffix != ".npz":
            raise DataError(f"{p}: expected an .npz file or a folder with the four IDX files")
        a = load_npz(p, list(_MNIST_FILES), verify)
        return build_arrays(
            a["x_train"],
            a["y_train"],
            a["x_test"],
            a["y_test"],
            npz_classes(a, classes),
            str(p),
            channels=None,
            allow_3d=True,
        )
    candidates = [p, p / "raw", p / "MNIST" / "raw", p / "FashionMNIST" / "raw"]
    for d in candidates:
        found = {k: _idx_file(d, stem) for k, stem in _MNIST_FILES.items()}
        if all(found.values()):
            break
    else:
        raise not_found(
            f"MNIST-style IDX files at {p}",
            [c / f"{stem}[.gz]" for c in candidates for stem in _MNIST_FILES.values()] if p.is_dir() else [p],
            "Fix: point to an .npz file or to the folder holding the four IDX files (as downloaded from the "
            "MNIST / Fashion-MNIST sites, optionally still gzipped).",
        )
    files: dict[str, Path] = {k: v for k, v in found.items() if v is not None}
    if verify:
        for f in files.values():
            verify_file(f)
    arrays = {k: _read_idx(f, _IDX_IMAGES if k.startswith("x") else _IDX_LABELS) for k, f in files.items()}
    if classes is MNIST_CLASSES and _mentions_fashion(d):
        classes = FASHION_MNIST_CLASSES
    return build_arrays(
        arrays["x_train"],
        arrays["y_train"],
        arrays["x_test"],
        arrays["y_test"],
        classes,
        str(d),
        channels=None,
        allow_3d=True,
    )


# --------------------------------------------------------------------------------------------------
# embedded MNIST-10k


def _read_mnist10k_file(p: Path, check: Callable[[Path], object]) -> tuple[np.ndarray, np.ndarray]:
    check(p)
    a = load_npz(p, ["x", "y"], verify=False)
    x = as_images(a["x"], f"{p} [x]", channels=1, allow_3d=True)
    y = as_labels(a["y"], len(x), 10, f"{p} [y]")
    return x, y


def read_mnist10k(path: PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 MNIST digits shipped inside the package (the first 10k training images, sorted by class).

    Returns x uint8 [10000, 28, 28, 1] and y int64. `path` may name another copy of `mnist10k.npz` or a
    folder holding one (it is then checked against its MANIFEST.md); the embedded copy is checked
    against the known hash `MNIST10K_SHA256`.
    """
    if path is not None:
        p = Path(path).expanduser()
        if p.is_dir():
            p = p / "mnist10k.npz"
        if not p.is_file():
            raise not_found(
                "mnist10k.npz", [p], "Fix: pass the file itself, or no path at all to use the embedded copy."
            )
        return _read_mnist10k_file(p, verify_file)
    resource = importlib.resources.files("dytrim") / "data" / "embedded" / "mnist10k.npz"
    with importlib.resources.as_file(resource) as p:
        if not p.is_file():
            raise not_found(
                "the embedded mnist10k.npz", [p], "Fix: reinstall dytrim (the file ships as package data)."
            )
        return _read_mnist10k_file(
            p,
            lambda q: check_hash(
                q,
                MNIST10K_SHA256,
                "the embedded copy's known hash",
                "reinstall dytrim (the package is damaged).",
            ),
        )
