"""Trust in data files: sha256 checks against a `MANIFEST.md` next to the file (or a known hash), the record of the
files a run read (its provenance), and an unpickler for data batches that cannot run code.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import numpy as np

from dytrim.data.errors import CORRUPT_ERRORS, REDOWNLOAD, DataError

__all__ = ["PathLike", "check_hash", "manifest_sha256", "recording_files", "sha256_of", "unpickle", "verify_file"]

PathLike = str | os.PathLike[str]


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


def check_hash(path: Path, expected: str, source: str, fix: str) -> str:
    """Check the file's (cached) sha256 against `expected` from `source` and record it; a mismatch raises a DataError
    naming both hashes and `fix`."""
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
        raise DataError(f"{p}: no such file; {REDOWNLOAD}")
    expected = manifest_sha256(p)
    if expected is None:
        if _READ_FILES.get() is not None:
            _note_file(p, _cached_sha256(p), None)
        return None
    manifest = p.parent / "MANIFEST.md"
    fix = f"re-download it, or remove its entry from {manifest} if the new file is intended."
    return check_hash(p, expected, str(manifest), fix)


# --------------------------------------------------------------------------------------------------
# pickled batches


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


def unpickle(path: Path) -> dict[bytes, Any]:
    """A pickled dict (a CIFAR or Small-ImageNet batch) read by the safe unpickler; bad files raise DataError."""
    try:
        with open(path, "rb") as f:
            obj = _SafeUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, *CORRUPT_ERRORS, AttributeError, IndexError, TypeError) as exc:
        raise DataError(
            f"{path}: cannot unpickle this CIFAR batch ({type(exc).__name__}: {exc}); it is truncated or "
            f"corrupt: {REDOWNLOAD}"
        ) from exc
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(obj).__name__}; {REDOWNLOAD}")
    return obj
