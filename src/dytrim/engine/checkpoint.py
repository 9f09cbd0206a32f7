"""Atomic checkpoints: write to a temp file, fsync, rename, read back; rotation deletes only checkpoints of this run.

Checkpoints are data, never code: they are read with `torch.load(weights_only=True)`, which rebuilds
tensors, numbers, strings and plain containers and refuses every other Python object, so a file handed
over by someone else cannot run anything when it is resumed, evaluated or exported. The state written
here is plain data for that reason (RNG states as tensors, see `engine/rng.py`), and it carries a format
version: a checkpoint of another version is refused with both versions named. Each file is checked before it is
read (a regular file, a torch zip, a memory budget, data only, the layout): engine/ckpt_file.py.

Nothing lost: a new checkpoint is read back (`ckpt_file.verify`) before any older one is deleted, and rotation
deletes only files that are dytrim checkpoints of this run (their stored config is this experiment's,
config/experiment.py); a junk file named `ckpt_*.pt`, a checkpoint of another run or one that does not load is
never deleted and never counted among the kept ones. Temp files of checkpoint writes that were killed
(`.ckpt_*.pt.*.tmp`) are removed when a run starts, once it holds the run directory's lock (runlock.py).
"""

from __future__ import annotations

import math
import os
import re
import stat
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from dytrim import runlock
from dytrim.config.experiment import same_experiment
from dytrim.engine.ckpt_file import (
    BUDGET_ENV,
    FORMAT_VERSION,
    OVER_BUDGET,
    CheckpointError,
    peek,
    read,
    verify,
)
from dytrim.engine.ckpt_file import Unusable as _Unusable
from dytrim.fileio import WriteFailure, atomic_write_bytes

__all__ = ["FORMAT_VERSION", "CheckpointError", "checkpoint_paths", "load_all", "load_checkpoint", "load_latest",
           "remove_stale_temps", "save_checkpoint"]

CKPT_RE = re.compile(r"^ckpt_(\d+)\.pt$")
TEMP_RE = re.compile(r"^\.ckpt_\d+\.pt\..+\.tmp$")  # atomic_write_bytes' temp name for ckpt_<step>.pt


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
    """Write ckpt_<step>.pt atomically (stamped with FORMAT_VERSION), read it back, then delete the checkpoints of
    this run beyond the newest `keep` (see the module's docstring). A file that does not read back is removed and
    raised as WriteFailure (the older checkpoints are kept); one over the memory budget is kept and raised as
    CheckpointError (nothing could read it back)."""
    path = Path(run_dir) / f"ckpt_{step:08d}.pt"
    stamped = {"format_version": FORMAT_VERSION, **state}
    atomic_write_bytes(path, lambda f: torch.save(stamped, f))
    try:
        verify(path)
    except _Unusable as exc:
        if str(exc).startswith(OVER_BUDGET):
            need = math.ceil(path.stat().st_size / 2**20 * 1.25)
            raise CheckpointError(f"{path} was written but is larger than the checkpoint memory budget, so eval and "
                                  f"--resume would refuse it: {exc}. Set {BUDGET_ENV}={need} and continue with "
                                  "--resume (the older checkpoints are kept)") from exc
        path.unlink(missing_ok=True)
        raise WriteFailure(path, f"written but it does not read back ({exc}); removed it, the older checkpoints "
                                 "are kept") from exc
    _rotate(Path(run_dir), step, stamped.get("config"), keep)
    return path


def _rotate(run_dir: Path, step: int, config: Any, keep: int) -> None:
    """Delete this run's checkpoints older than `step` beyond the newest `keep` (counting the one at `step`)."""
    ours = []
    for old in checkpoint_paths(run_dir):
        if _step(old) >= step:
            continue  # only a newer checkpoint, written and verified, replaces an older one
        try:
            saved = peek(old).get("config")
        except (_Unusable, CheckpointError):
            continue  # not a checkpoint this dytrim wrote: never deleted, never counted
        if saved == config or (isinstance(saved, dict) and isinstance(config, dict)
                               and same_experiment(config, saved)):
            ours.append(old)
    for old in ours[max(keep, 1) - 1:]:
        old.unlink(missing_ok=True)


def _step(path: Path) -> int:
    m = CKPT_RE.match(path.name)
    return int(m.group(1)) if m else -1


def remove_stale_temps(run_dir: Path) -> list[str]:
    """Remove the temp files of checkpoint writes that were killed (`.ckpt_<step>.pt.*.tmp`, regular files only);
    only while this process holds the run directory's lock (else another writer's live temp file could go).
    Returns the names removed."""
    run_dir = Path(run_dir)
    if not runlock.holds(run_dir):
        return []
    removed = []
    for p in run_dir.glob(".ckpt_*.tmp"):
        try:
            if TEMP_RE.match(p.name) and stat.S_ISREG(p.lstat().st_mode):
                p.unlink()
                removed.append(p.name)
        except OSError:
            continue  # gone already, or not ours to remove: the run goes on
    return removed


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read one checkpoint as data (weights only), after the checks of engine/ckpt_file.py. Raises CheckpointError
    for another format version and _Unusable for a file that is not a regular file, not a checkpoint, truncated,
    over the memory budget, or holds Python objects that could run code."""
    return read(path, map_location)


def _usable(paths: list[Path], map_location: str | torch.device, first_only: bool
            ) -> list[tuple[dict[str, Any], Path]]:
    found, reasons = [], []
    for path in paths:
        try:
            found.append((load_checkpoint(path, map_location), path))
        except _Unusable as exc:
            reasons.append((path, exc))
            continue
        if first_only:
            break
    if reasons and not found:  # one line: the error names every file and why (no warning repeats it)
        raise CheckpointError(f"no usable checkpoint in '{paths[0].parent}': "
                              + "; ".join(f"{path.name}: {exc}" for path, exc in reasons))
    for path, exc in reasons:
        warnings.warn(f"checkpoint {path.name} is {exc}; skipping it", stacklevel=3)
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
