"""Readers for real image data sets (CIFAR-10/100, MNIST, Fashion-MNIST) into uint8 NHWC arrays.

Each reader accepts the compact `.npz` layout of the shared data folder or the original distribution
layout (CIFAR python batches, MNIST IDX files, as torchvision unpacks them), checks sha256 hashes
against a `MANIFEST.md` next to the file when there is one, and turns every kind of bad input
(missing, truncated, wrong shape or dtype, labels out of range) into a `DataError` that names the
file and says how to fix it.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import os
import pickle
import re
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

__all__ = [
    "DataError",
    "ImageArrays",
    "sha256_of",
    "manifest_sha256",
    "verify_file",
    "recording_files",
    "read_cifar",
    "read_mnist",
    "read_mnist10k",
    "CIFAR10_CLASSES",
    "CIFAR100_CLASSES",
    "MNIST_CLASSES",
    "FASHION_MNIST_CLASSES",
]

PathLike = str | os.PathLike[str]

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

_REDOWNLOAD = "re-download the data set (or regenerate the file)"


class DataError(ValueError):
    """A data file is missing, corrupt or malformed; the message names the file and the fix."""


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
# hashing and manifests


def sha256_of(path: PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so large archives are never fully in memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            h.update(block)
    return h.hexdigest()


_SHA_RE = re.compile(r"sha256:\s*`?([0-9a-fA-F]{64})\b")


def manifest_sha256(path: PathLike) -> str | None:
    """The sha256 that `MANIFEST.md` (in the file's own folder) lists under a `## <filename>` heading.

    None when there is no manifest, no section for this file, or no `sha256:` line in it.
    """
    p = Path(path)
    manifest = p.parent / "MANIFEST.md"
    if not manifest.is_file():
        return None
    in_section = False
    for line in manifest.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith(("# ", "## ")):  # deeper headings stay inside the current section
            in_section = line.startswith("## ") and line[3:].strip().strip("`") == p.name
            continue
        if in_section and (m := _SHA_RE.search(line)):
            return m.group(1).lower()
    return None


# (resolved path, size, mtime_ns) -> actual sha256; files are hashed at most once per process.
_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def _cached_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        _HASH_CACHE[key] = sha256_of(path)
    return _HASH_CACHE[key]


def _check_hash(path: Path, expected: str, source: str, fix: str) -> str:
    actual = _cached_sha256(path)
    if actual != expected.lower():
        raise DataError(
            f"{path}: sha256 mismatch: expected {expected.lower()} ({source}), got {actual}. The file is "
            f"corrupt or a different version. Fix: {fix}"
        )
    _note_file(path, actual, source)
    return actual


# The files read while `recording_files()` is active: what a run records in run.json (provenance).
_READ_FILES: ContextVar[list[dict[str, str]] | None] = ContextVar("_READ_FILES", default=None)


def _note_file(path: Path, sha256: str, checked_against: str | None) -> None:
    files = _READ_FILES.get()
    if files is not None and not any(f["path"] == str(path) for f in files):
        files.append({"path": str(path), "sha256": sha256, "checked_against": checked_against or "nothing"})


@contextmanager
def recording_files() -> Iterator[list[dict[str, str]]]:
    """Collect every data file read inside the block as {path, sha256, checked_against}; at the end, one
    warning names the files that no MANIFEST.md (or known hash) vouches for."""
    files: list[dict[str, str]] = []
    token = _READ_FILES.set(files)
    try:
        yield files
    finally:
        _READ_FILES.reset(token)
    unlisted = [f for f in files if f["checked_against"] == "nothing"]
    if unlisted:
        names = ", ".join(f"{f['path']} ({f['sha256'][:12]}...)" for f in unlisted)
        warnings.warn(f"data file(s) without a MANIFEST.md entry, used unchecked; their sha256 is recorded in "
                      f"run.json: {names}", stacklevel=3)


def verify_file(path: PathLike) -> str | None:
    """Check `path` against its MANIFEST.md hash; return the verified hash, or None if nothing is listed.

    Raises DataError (naming the file, both hashes and the fix) on a mismatch. The hash of each
    (path, size, mtime) is cached for the life of the process, so repeated loads cost nothing. Inside
    `recording_files()` the file and its hash are recorded either way.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file; {_REDOWNLOAD}")
    expected = manifest_sha256(p)
    if expected is None:
        if _READ_FILES.get() is not None:
            _note_file(p, _cached_sha256(p), None)
        return None
    manifest = p.parent / "MANIFEST.md"
    fix = f"re-download it, or remove its entry from {manifest} if the new file is intended."
    return _check_hash(p, expected, str(manifest), fix)


# --------------------------------------------------------------------------------------------------
# validation helpers


def _as_images(x: Any, where: str, channels: int | None, allow_3d: bool = False) -> np.ndarray:
    """Check x is uint8 [N, H, W, C] (or [N, H, W] when allow_3d, which gains C=1)."""
    if not isinstance(x, np.ndarray):
        raise DataError(f"{where}: expected a numpy array of images, got {type(x).__name__}; {_REDOWNLOAD}")
    if x.dtype != np.uint8:
        raise DataError(
            f"{where}: images must be uint8 pixels 0..255, got dtype {x.dtype}; convert with "
            "np.round(x * 255).astype(np.uint8) if they are floats in [0, 1], or re-download"
        )
    if allow_3d and x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        want = "[N, H, W, C] (or [N, H, W])" if allow_3d else "[N, H, W, C]"
        raise DataError(f"{where}: images must be 4-D {want}, got shape {x.shape}; {_REDOWNLOAD}")
    if channels is not None and x.shape[-1] != channels:
        hint = " (looks like NCHW: transpose to NHWC)" if x.shape[1] == channels else ""
        raise DataError(
            f"{where}: expected {channels} channels last (NHWC), got shape {x.shape}{hint}; {_REDOWNLOAD}"
        )
    if x.shape[1] < 1 or x.shape[2] < 1:
        raise DataError(f"{where}: empty images, shape {x.shape}; {_REDOWNLOAD}")
    return np.ascontiguousarray(x)


def _as_labels(y: Any, n: int, num_classes: int, where: str) -> np.ndarray:
    """Check y is a 1-D integer array of n labels in [0, num_classes); return it as int64."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"{where}: labels must be 1-D, got shape {y.shape}; {_REDOWNLOAD}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{where}: labels must be integers, got dtype {y.dtype}; {_REDOWNLOAD}")
    if len(y) != n:
        raise DataError(
            f"{where}: {len(y)} labels for {n} images; the file is truncated or mismatched. {_REDOWNLOAD}"
        )
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        bad = int(y.min()) if y.min() < 0 else int(y.max())
        raise DataError(
            f"{where}: label {bad} is outside [0, {num_classes}); wrong data set for "
            f"num_classes={num_classes}, or a corrupt file. {_REDOWNLOAD}"
        )
    return y


def _build(
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
    xtr = _as_images(x_train, f"{where} [x_train]", channels, allow_3d)
    xte = _as_images(x_test, f"{where} [x_test]", channels, allow_3d)
    if xtr.shape[1:] != xte.shape[1:]:
        raise DataError(
            f"{where}: train images {xtr.shape[1:]} and test images {xte.shape[1:]} differ in "
            f"shape; {_REDOWNLOAD}"
        )
    ytr = _as_labels(y_train, len(xtr), k, f"{where} [y_train]")
    yte = _as_labels(y_test, len(xte), k, f"{where} [y_test]")
    present = len(np.unique(ytr))
    if present != k:
        raise DataError(
            f"{where}: the training labels cover {present} of {k} classes; this is not the expected "
            f"{k}-class data set (wrong file, or wrong num_classes?)"
        )
    return ImageArrays(xtr, ytr, xte, yte, list(classes))


# --------------------------------------------------------------------------------------------------
# file access

_CORRUPT_ERRORS = (zipfile.BadZipFile, EOFError, zlib.error, gzip.BadGzipFile, OSError, ValueError)


def _load_npz(path: Path, keys: Sequence[str], verify: bool) -> dict[str, Any]:
    """Read the named arrays from an npz (after the manifest hash check); corrupt files raise DataError."""
    if verify:
        verify_file(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise DataError(f"{path}: not an .npz archive (a single .npy array?); {_REDOWNLOAD}")
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
    except (*_CORRUPT_ERRORS, KeyError) as exc:
        raise DataError(
            f"{path}: cannot read the .npz archive ({type(exc).__name__}: {exc}); it is truncated or "
            f"corrupt: {_REDOWNLOAD}"
        ) from exc


def _npz_classes(arrays: dict[str, Any], default: Sequence[str]) -> list[str]:
    """Class names stored in the npz (optional `classes` array), else the data set's standard names."""
    names = arrays.get("classes")
    if names is None:
        return list(default)
    return [str(c) for c in np.asarray(names).tolist()]


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler for the CIFAR python batches: only plain containers and numpy arrays may be rebuilt.

    The official batches were pickled by Python 2 (numpy.core.multiarray._reconstruct); any other global
    is refused, so a malicious file cannot run code.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
        ("copy_reg", "_reconstructor"),
        ("copyreg", "_reconstructor"),
        ("__builtin__", "object"),
        ("builtins", "object"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a data batch")
        if module.startswith("numpy.core.") and np.lib.NumpyVersion(np.__version__) >= "2.0.0":
            module = "numpy._core." + module.split(".", 2)[2]  # avoid numpy 2's deprecated alias
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict[bytes, Any]:
    try:
        with open(path, "rb") as f:
            obj = _SafeUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, *_CORRUPT_ERRORS, AttributeError, IndexError, TypeError) as exc:
        raise DataError(
            f"{path}: cannot unpickle this CIFAR batch ({type(exc).__name__}: {exc}); it is truncated or "
            f"corrupt: {_REDOWNLOAD}"
        ) from exc
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(obj).__name__}; {_REDOWNLOAD}")
    return obj


def _missing(what: str, looked_for: Sequence[Path | str], fix: str) -> DataError:
    listing = "\n  ".join(str(p) for p in looked_for)
    return DataError(f"{what}: not found. Looked for:\n  {listing}\n{fix}")


# --------------------------------------------------------------------------------------------------
# CIFAR


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
        d = _unpickle(f)
        if b"data" not in d or label_key not in d:
            raise DataError(
                f"{f}: batch lacks the keys b'data' and {label_key!r} (has {sorted(map(repr, d))}); "
                f"wrong file for this data set? {_REDOWNLOAD}"
            )
        data = np.asarray(d[b"data"])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataError(
                f"{f}: b'data' must be uint8 [N, 3072], got {data.dtype} {data.shape}; {_REDOWNLOAD}"
            )
        labels = np.asarray(d[label_key])
        if labels.shape != (len(data),):
            raise DataError(f"{f}: {labels.size} labels for {len(data)} images; {_REDOWNLOAD}")
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
        a = _load_npz(p, ["x_train", "y_train", "x_test", "y_test"], verify)
        return _build(
            a["x_train"],
            a["y_train"],
            a["x_test"],
            a["y_test"],
            _npz_classes(a, lay.classes),
            str(p),
            channels=3,
        )
    candidates = [p, p / folder]
    d = next((c for c in candidates if (c / train_names[0]).is_file()), None)
    if d is None:
        raise _missing(
            f"CIFAR-{num_classes} at {p}",
            [c / n for c in candidates for n in (*train_names, *test_names)] if p.is_dir() else [p],
            f"Fix: point to an .npz file or to the folder holding '{folder}/' (the extracted "
            f"python-version archive from the CIFAR site), or pass the right num_classes.",
        )
    needed = [d / n for n in (*train_names, *test_names)]
    absent = [f for f in needed if not f.is_file()]
    if absent:
        raise _missing(
            f"CIFAR-{num_classes} batches in {d}", absent, f"Fix: {_REDOWNLOAD}, extract it again."
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
        meta = _unpickle(d / lay.meta)
        if lay.names_key in meta:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[lay.names_key]]
    return _build(x_train, y_train, x_test, y_test, classes, str(d), channels=3)


# --------------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST

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
    except _CORRUPT_ERRORS as exc:
        raise DataError(
            f"{path}: cannot read ({type(exc).__name__}: {exc}); the file is truncated or corrupt: "
            f"{_REDOWNLOAD}"
        ) from exc
    ndim = 3 if magic == _IDX_IMAGES else 1
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: only {len(data)} bytes, shorter than the IDX header; {_REDOWNLOAD}")
    got = int.from_bytes(data[:4], "big")
    if got != magic:
        kind = {_IDX_IMAGES: "images", _IDX_LABELS: "labels"}
        raise DataError(
            f"{path}: IDX magic number {got}, expected {magic} ({kind[magic]}); wrong file in this slot "
            f"(images and labels swapped?) or not an IDX file. {_REDOWNLOAD}"
        )
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    size = int(np.prod(dims))
    if len(data) - header != size:
        raise DataError(
            f"{path}: header says {dims} = {size} bytes of data but the file holds {len(data) - header}; "
            f"it is truncated or corrupt: {_REDOWNLOAD}"
        )
    if magic == _IDX_IMAGES and min(dims) < 1:
        raise DataError(f"{path}: bad image dimensions {dims}; {_REDOWNLOAD}")
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
        a = _load_npz(p, list(_MNIST_FILES), verify)
        return _build(
            a["x_train"],
            a["y_train"],
            a["x_test"],
            a["y_test"],
            _npz_classes(a, classes),
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
        raise _missing(
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
    return _build(
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
    a = _load_npz(p, ["x", "y"], verify=False)
    x = _as_images(a["x"], f"{p} [x]", channels=1, allow_3d=True)
    y = _as_labels(a["y"], len(x), 10, f"{p} [y]")
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
            raise _missing(
                "mnist10k.npz", [p], "Fix: pass the file itself, or no path at all to use the embedded copy."
            )
        return _read_mnist10k_file(p, verify_file)
    resource = importlib.resources.files("dytrim") / "data" / "embedded" / "mnist10k.npz"
    with importlib.resources.as_file(resource) as p:
        if not p.is_file():
            raise _missing(
                "the embedded mnist10k.npz", [p], "Fix: reinstall dytrim (the file ships as package data)."
            )
        return _read_mnist10k_file(
            p,
            lambda q: _check_hash(
                q,
                MNIST10K_SHA256,
                "the embedded copy's known hash",
                "reinstall dytrim (the package is damaged).",
            ),
        )
