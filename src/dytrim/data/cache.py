"""Decoded images cached on disk: a list of image files is decoded once (bad files skipped and listed) and its
uint8 arrays are kept under a key of the files' paths (as bytes: any file name, UTF-8 or not), sizes and
modification times and the decoded-size budget, so later runs skip decoding.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dytrim.config import DataConfig
from dytrim.data.images import BadImage, image_budget_mb, load_image, path_text

CACHE_VERSION = 3  # bump when decoding changes, so old cache files are not reused


@dataclass
class Decoded:
    """Decoded images of a list of files: `x` holds the readable ones, in order; `skipped` the others."""

    x: np.ndarray  # uint8 [n_ok, H, W, C]
    ok: np.ndarray  # bool [n_files]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path_text(path), reason)


def cache_root(cfg: DataConfig) -> Path:
    """data.cache_dir, else $DYTRIM_CACHE, else ~/.cache/dytrim."""
    return Path(cfg.cache_dir or os.environ.get("DYTRIM_CACHE") or Path.home() / ".cache" / "dytrim").expanduser()


def _cache_key(paths: Sequence[Path], size: tuple[int, int], channels: int, budget_mb: float) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}|{size}|{channels}|{budget_mb!r}".encode())
    for p in paths:
        try:
            st = p.stat()
            stamp = f"{st.st_size}|{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        h.update(b"\0" + os.fsencode(p.resolve()) + f"|{stamp}".encode())
    return h.hexdigest()[:32]


def _read_cache(path: Path, n: int) -> Decoded | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            ok = z["ok"].astype(bool)
            skipped = list(zip(z["skip_path"].tolist(), z["skip_reason"].tolist(), strict=True))
            x = z["x"]
    except Exception:  # noqa: BLE001 - an unreadable cache file is simply rebuilt
        return None
    if len(ok) != n or int(ok.sum()) != len(x):
        return None
    return Decoded(x, ok, [(str(a), str(b)) for a, b in skipped])


def _write_cache(path: Path, dec: Decoded) -> None:
    """Atomic write (temp file + rename); a cache that cannot be written only costs speed, so warn and go on."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".images-", suffix=".npz")
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f,
                x=dec.x,
                ok=dec.ok,
                skip_path=np.array([p for p, _ in dec.skipped], dtype=str),
                skip_reason=np.array([r for _, r in dec.skipped], dtype=str),
            )
        os.replace(tmp, path)
    except OSError as exc:
        print(f"dytrim: warning: cannot write the image cache {path} ({exc}); set data.cache_dir to a writable "
              "folder to make later runs start faster", file=sys.stderr)


def decode_images(
    paths: Sequence[Path], size: tuple[int, int], channels: int, cache_dir: Path | None, desc: str = "images"
) -> Decoded:
    """Decode `paths` (skipping bad files) or load them from the cache; `cache_dir` None disables caching."""
    budget = image_budget_mb()
    cache = cache_dir / f"images-{_cache_key(paths, size, channels, budget)}.npz" if cache_dir is not None else None
    if cache is not None and cache.is_file() and (hit := _read_cache(cache, len(paths))) is not None:
        return hit
    h, w = size
    x = np.empty((len(paths), h, w, channels), dtype=np.uint8)
    ok = np.zeros(len(paths), dtype=bool)
    skipped = []
    bar = tqdm(paths, desc=f"decoding {desc}", unit="img", disable=True if len(paths) < 500 else None,
               file=sys.stderr, mininterval=1.0)
    for i, p in enumerate(bar):
        try:
            x[i] = load_image(p, size, channels, budget)
            ok[i] = True
        except BadImage as exc:
            skipped.append((path_text(p), str(exc)))
    dec = Decoded(x[ok], ok, skipped)
    if cache is not None:
        _write_cache(cache, dec)
    return dec
