"""Atomic checkpoints: write to a temp file, fsync, rename; keep the last K; fall back past bad ones."""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

CKPT_RE = re.compile(r"^ckpt_(\d+)\.pt$")


def checkpoint_paths(run_dir: Path) -> list[Path]:
    """Checkpoints of a run, newest (highest step) first."""
    found = [(int(m.group(1)), p) for p in run_dir.glob("ckpt_*.pt") if (m := CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def atomic_write_bytes(path: Path, writer: Any) -> None:
    """Call writer(file) on a temp file in the same folder, then rename it over `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write ckpt_<step>.pt atomically and delete all but the newest `keep`."""
    path = run_dir / f"ckpt_{step:08d}.pt"
    atomic_write_bytes(path, lambda f: torch.save(state, f))
    for old in checkpoint_paths(run_dir)[keep:]:
        old.unlink(missing_ok=True)
    return path


def load_latest(run_dir: Path, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], Path] | None:
    """The newest checkpoint that loads; a truncated or corrupt one is reported and skipped."""
    for path in checkpoint_paths(run_dir):
        try:
            state = torch.load(path, map_location=map_location, weights_only=False)
        except Exception as exc:  # noqa: BLE001 - any unreadable file means: try the previous one
            warnings.warn(f"checkpoint {path.name} is unreadable ({type(exc).__name__}: {exc}); "
                          "falling back to the previous one", stacklevel=2)
            continue
        if not isinstance(state, dict) or "step" not in state:
            warnings.warn(f"checkpoint {path.name} is not a dytrim checkpoint; skipping it", stacklevel=2)
            continue
        return state, path
    return None
