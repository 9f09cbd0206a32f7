"""Atomic checkpoints: write to a temp file, fsync, rename; keep the last K; fall back past bad ones.

Checkpoints are data, never code: they are read with `torch.load(weights_only=True)`, which rebuilds
tensors, numbers, strings and plain containers and refuses every other Python object, so a file handed
over by someone else cannot run anything when it is resumed, evaluated or exported. The state written
here is plain data for that reason (RNG states as tensors, see `engine/rng.py`), and it carries a format
version: a checkpoint of another version is refused with both versions named.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from dytrim.fileio import atomic_write_bytes

CKPT_RE = re.compile(r"^ckpt_(\d+)\.pt$")

#: Version of the checkpoint layout. 1: dytrim <= 0.1.0 (numpy RNG state pickled as numpy objects, which
#: weights-only loading refuses); 2: every entry is a tensor, number, string, list, tuple or dict.
FORMAT_VERSION = 2


class CheckpointError(ValueError):
    """No checkpoint of a run can be used (unsafe, corrupt, or written by another format version)."""


def checkpoint_paths(run_dir: Path) -> list[Path]:
    """Checkpoints of a run, newest (highest step) first."""
    found = [(int(m.group(1)), p) for p in Path(run_dir).glob("ckpt_*.pt") if (m := CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def check_writable_dir(folder: Path, what: str) -> None:
    """Create `folder` if needed and prove a file can be written in it (a temp file made and removed), so a
    command fails before its work, not after. Raises ConfigError naming `what` (the option) and the folder."""
    from dytrim.config import ConfigError

    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write_probe.", suffix=".tmp")  # per process: ranks at once
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"{what}: cannot write to '{folder}' ({exc.strerror or exc}); choose a writable "
                          "directory") from exc


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write ckpt_<step>.pt atomically (stamped with FORMAT_VERSION) and delete all but the newest `keep`."""
    path = Path(run_dir) / f"ckpt_{step:08d}.pt"
    stamped = {"format_version": FORMAT_VERSION, **state}
    atomic_write_bytes(path, lambda f: torch.save(stamped, f))
    for old in checkpoint_paths(run_dir)[keep:]:
        old.unlink(missing_ok=True)
    return path


class _Unusable(Exception):
    """One checkpoint file cannot be used; the message says why (the loader may try an older one)."""


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read one checkpoint as data (weights only). Raises CheckpointError for another format version and
    _Unusable for a file that is corrupt, not a checkpoint, or holds Python objects that could run code."""
    try:
        with warnings.catch_warnings():  # torch's note on a foreign pickle protocol: the refusal below says it all
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        culprit = _unsafe_global(str(exc))
        raise _Unusable(
            f"refused: it holds a Python object ({culprit}) that is not plain data, and loading it could run "
            f"code. dytrim checkpoints of format {FORMAT_VERSION} hold only tensors, numbers and strings; "
            "format 1 (dytrim <= 0.1.0) held numpy objects and cannot be resumed by this version"
        ) from exc
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile, KeyError) as exc:
        raise _Unusable(f"unreadable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
    if not isinstance(state, dict) or "step" not in state:
        raise _Unusable("not a dytrim checkpoint")
    version = state.get("format_version", 1)
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {Path(path).name} has format version {version}; this dytrim reads format "
            f"{FORMAT_VERSION}. Continue the run with the dytrim version that wrote it, or start a new --out"
        )
    return state


def _unsafe_global(message: str) -> str:
    """The object torch's weights-only unpickler refused, as its message names it."""
    m = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", message)
    return m.group(1) if m else "a pickled object"


def _usable(paths: list[Path], map_location: str | torch.device, first_only: bool
            ) -> list[tuple[dict[str, Any], Path]]:
    found, reasons = [], []
    for path in paths:
        try:
            found.append((load_checkpoint(path, map_location), path))
        except _Unusable as exc:
            reasons.append(f"{path.name}: {exc}")
            warnings.warn(f"checkpoint {path.name} is {exc}; skipping it", stacklevel=3)
            continue
        if first_only:
            break
    if reasons and not found:
        raise CheckpointError(f"no usable checkpoint in '{paths[0].parent}': " + "; ".join(reasons))
    return found


def load_latest(run_dir: Path, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], Path] | None:
    """The newest checkpoint that loads as data; an unusable one is reported and the previous one tried.

    None when the run has no checkpoint file; CheckpointError when it has some and none can be used
    (so a resume never silently starts over)."""
    found = _usable(checkpoint_paths(run_dir), map_location, first_only=True)
    return found[0] if found else None


def load_all(run_dir: Path, map_location: str | torch.device = "cpu") -> list[tuple[dict[str, Any], Path]]:
    """Every usable checkpoint of a run, oldest first (unusable ones reported and skipped)."""
    return _usable(list(reversed(checkpoint_paths(run_dir))), map_location, first_only=False)
