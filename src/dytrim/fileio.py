"""Atomic file writes (temp file in the same folder, fsync, rename) shared by run outputs, data cards and checkpoints.

Kept below `dytrim.engine` and `dytrim.data` so that writing a file needs neither of them.
"""

from __future__ import annotations

import errno
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
    no permission, read-only, I/O error) is raised as WriteFailure naming `path`, also when the writer hid
    the OSError behind an error of its own (torch.save: "unexpected pos ..."); other errors propagate."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise WriteFailure(path, exc.strerror or str(exc)) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            sink = _Recording(f)
            try:
                writer(sink)
            except Exception as exc:
                cause = sink.error or _os_cause(exc) or _disk_full(path.parent)
                if cause is None:
                    raise
                raise WriteFailure(path, cause.strerror or str(cause)) from exc
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; run files follow the user's umask like open()
        os.replace(tmp, path)
    except WriteFailure:
        Path(tmp).unlink(missing_ok=True)
        raise
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise WriteFailure(path, exc.strerror or str(exc)) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _Recording:
    """The temp file as the writer sees it: keeps the OSError of a failed write or flush, because some writers
    (torch's zip stream) catch it and raise an unrelated RuntimeError; everything else is the file's own."""

    def __init__(self, f: Any) -> None:
        self._f, self.error = f, None

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        try:
            self._f.flush()
        except OSError as exc:
            self.error = exc
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def _os_cause(exc: BaseException) -> OSError | None:
    """The OSError that `exc` was raised from or while handling, if any (its __cause__ / __context__ chain)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, OSError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def _disk_full(folder: Path) -> OSError | None:
    """ENOSPC when the file system of `folder` has no block left for this user (a writer that failed without
    saying why, on a full disk), else None."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) if st.f_bavail == 0 else None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def env_mib(name: str, default: float) -> float:
    """A size budget in MiB from environment variable `name` (unset or empty: `default`); ValueError with a one-line
    message when it is not a positive finite number."""
    text = os.environ.get(name, "").strip()
    if not text:
        return float(default)
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{name}: '{text}' is not a positive number of MiB; unset it to use the default {default}")
    return value
