"""One writer per run directory: an OS lock (flock) on `.dytrim.lock` inside it, held for the life of the process.

The kernel drops a flock when its holder dies (SIGKILL included), so a lock file left by a killed run never blocks
the next one: it is taken over and rewritten. Under torchrun only the main process (RANK 0) takes the lock; the
other ranks write nothing into the directory. The file is removed on release and is no run output (resume.py's
run_traces and the checkpoint glob ignore it).
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = ".dytrim.lock"
_HELD: set[str] = set()  # run directories (resolved) whose lock this process holds now


class RunLocked(Exception):
    """Another live process holds the run directory; the message names its pid (a user error: exit 2)."""


def is_main_process() -> bool:
    """Rank 0 of a torchrun job, or a plain single process (RANK unset)."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def holds(run_dir: Path) -> bool:
    """Whether this process holds the lock of `run_dir` now (so it may clean up after earlier, killed writers)."""
    return str(Path(run_dir).resolve()) in _HELD


def _holder(path: Path) -> str:
    """What the holder wrote into the lock file (pid, host, command), or a placeholder while it writes it."""
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        text = ""
    return text or "pid unknown (it is starting)"


def _acquire(path: Path) -> int:
    """An fd holding an exclusive flock on `path` (the file that is at `path` now, not an unlinked one).

    A lock held for under half a second is waited for: `is_held` (dytrim sweep --status) probes with a brief
    shared lock, which must not make a starting run fail."""
    deadline = time.monotonic() + 0.5
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            raise RunLocked(_holder(path)) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:  # the previous holder removed it between our open and our lock
            same = False
        if same:
            return fd
        os.close(fd)  # we locked a file its holder just unlinked: lock the one at `path` now


def is_held(run_dir: Path) -> str | None:
    """What the holder of `run_dir`'s lock wrote (pid, host, command) while a live process holds it, else None.
    Asks the kernel (a non-blocking shared flock, released at once), so a lock file left by a killed run is free."""
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(path)
    except OSError:
        return None
    finally:
        os.close(fd)
    return None


@contextmanager
def hold(run_dir: Path, what: str) -> Iterator[None]:
    """Hold the lock of `run_dir` (which must exist) for the block; another holder is RunLocked naming its pid.

    Not the main process of a torchrun job: a no-op (rank 0 holds it for the job)."""
    if not is_main_process():
        yield
        return
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = _acquire(path)
    except RunLocked as exc:
        raise RunLocked(f"{what}: '{run_dir}' is in use by another dytrim process ({exc}); wait for it to end or "
                        "stop it, then run again (one process writes a run directory at a time)") from None
    key = str(Path(run_dir).resolve())
    _HELD.add(key)
    try:
        stamp = (f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                 f"{' '.join(['dytrim', *sys.argv[1:]])[:300]}\n")
        try:  # informational only: the flock is the lock, so a full disk here does not stop the run
            os.ftruncate(fd, 0)
            os.pwrite(fd, stamp.encode(errors="replace"), 0)
        except OSError:
            pass
        yield
    finally:
        _HELD.discard(key)
        try:
            path.unlink(missing_ok=True)  # while still locked: a waiter re-checks the inode and retries
        except OSError:
            pass
        os.close(fd)
