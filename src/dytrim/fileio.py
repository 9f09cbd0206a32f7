"""Atomic file writes (temp file in the same folder, fsync, rename) shared by run outputs, data cards and checkpoints.

Kept below `dytrim.engine` and `dytrim.data` so that writing a file needs neither of them.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any


class WriteFailure(OSError):
    """A run file could not be written (disk full, permission denied, read-only file system): an
    environment failure, not a user error. Names the path; the previous file of that name is intact."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"cannot write '{path}': {reason}")
        self.path = path


def atomic_write_bytes(path: Path, writer: Any) -> None:
    """Call writer(file) on a temp file in the same folder, then rename it over `path`.

    Any failure leaves `path` as it was and no temp file behind; a failure of the file system (no space,
    no permission) is raised as WriteFailure naming `path`."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise WriteFailure(path, exc.strerror or str(exc)) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; run files follow the user's umask like open()
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise WriteFailure(path, exc.strerror or str(exc)) from exc
    except RuntimeError as exc:  # torch.save reports a failed write of its zip stream as RuntimeError
        Path(tmp).unlink(missing_ok=True)
        if "write" in str(exc).lower():
            raise WriteFailure(path, str(exc).splitlines()[0]) from exc
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))
