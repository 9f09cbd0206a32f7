"""One checkpoint file read without trusting it: each check runs before what it guards is read or allocated.

1. A regular file: stat, then opened non-blocking and checked again on the open descriptor, so a FIFO, device or
   directory named `ckpt_*.pt` is refused at once (never waited on, never read as a stream).
2. A zip archive, as `torch.save` writes: only its central directory is read. Random bytes, a plain pickle (or
   torch's pre-1.6 format), a zip cut short (no central directory: a write that did not finish) are each named.
3. A memory budget: the uncompressed sizes the central directory declares (what torch would allocate to read the
   records) and the tensor sizes the pickle declares (read with `map_location="meta"`, so no tensor byte is read
   or allocated) must each stay within $DYTRIM_CHECKPOINT_MAX_MB (default 2048 MiB; the largest dytrim checkpoint,
   WRN-28-8 with Adam and EMA, is about 0.6 GB). A zip bomb (4 MB on disk declaring 4 GiB) is refused in
   milliseconds with nothing allocated.
4. Plain data only (`weights_only=True`): a Python object that is not data is refused by name; only then does the
   message say that loading could run code.
5. The layout: a dict with `step`, of this dytrim's FORMAT_VERSION (another version is refused naming both).

`peek` stops after these checks (tensors on the meta device: what a checkpoint claims, for rotation and
verification); `read` then loads the tensors. Neither runs code from the file.
"""

from __future__ import annotations

import os
import pickle
import pickletools
import re
import stat
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import torch

from dytrim.fileio import env_mib

#: Version of the checkpoint layout. 1: dytrim <= 0.1.0 (numpy RNG state pickled as numpy objects, which
#: weights-only loading refuses); 2: every entry is a tensor, number, string, list, tuple or dict.
FORMAT_VERSION = 2
BUDGET_ENV = "DYTRIM_CHECKPOINT_MAX_MB"
DEFAULT_BUDGET_MB = 2048
OVER_BUDGET = "refused: it declares"  # the start of the reason given for a checkpoint over the budget


class CheckpointError(ValueError):
    """No checkpoint of a run can be used (unsafe, corrupt, or written by another format version)."""


class Unusable(Exception):
    """One checkpoint file cannot be used; the message says why (the loader may try an older one)."""


def budget_mb() -> float:
    """The checkpoint memory budget in MiB: $DYTRIM_CHECKPOINT_MAX_MB, else DEFAULT_BUDGET_MB."""
    try:
        return env_mib(BUDGET_ENV, DEFAULT_BUDGET_MB)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None


def _open_regular(path: Path) -> BinaryIO:
    """`path` opened for reading if it is a regular file (symlinks followed), else Unusable naming what it is."""
    try:
        kind = _kind(os.stat(path).st_mode)
        if kind is None:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
            kind = _kind(os.fstat(fd).st_mode)  # the file that was opened, not one swapped in after the stat
            if kind is None:
                return os.fdopen(fd, "rb")
            os.close(fd)
    except OSError as exc:
        raise Unusable(f"unreadable ({exc.strerror or exc})") from exc
    raise Unusable(f"unreadable: not a regular file but {kind}; checkpoints are files that torch.save wrote")


def _kind(mode: int) -> str | None:
    """None for a regular file, else what the file is, in words."""
    if stat.S_ISREG(mode):
        return None
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a special file"


def _records(f: BinaryIO, budget: float) -> list[zipfile.ZipInfo]:
    """The zip records of a checkpoint from its central directory; Unusable for a file that is no torch zip or
    declares more than the budget."""
    head = f.read(4)
    f.seek(0)
    if not head:
        raise Unusable("unreadable: empty (0 bytes)")
    try:
        with zipfile.ZipFile(f) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, struct.error, NotImplementedError) as exc:
        if head == b"PK\x03\x04":
            raise Unusable("unreadable: truncated (a zip archive without its central directory: the write was cut "
                           "short or the copy is incomplete)") from exc
        if head[:1] == b"\x80":
            raise Unusable(_plain_pickle(f, budget)) from exc
        raise Unusable("unreadable: not a checkpoint (neither a zip archive, as torch.save writes, nor a pickle; "
                       f"it starts with bytes {head.hex(' ')})") from exc
    except OSError as exc:
        raise Unusable(f"unreadable ({exc.strerror or exc})") from exc
    if not any(i.filename.endswith("data.pkl") for i in infos):
        raise Unusable("unreadable: a zip archive that torch.save did not write (it has no data.pkl)")
    _check_budget(sum(i.file_size for i in infos), "records of", budget)
    return infos


def _plain_pickle(f: BinaryIO, budget: float) -> str:
    """Why a plain pickle is refused: it is not torch.save's zip; and, only when its opcodes (read by pickletools,
    which runs nothing) name a Python object to call, that loading it could run code."""
    f.seek(0)
    named, strings = None, ["?", "?"]
    try:
        for op, arg, _ in pickletools.genops(f):
            if isinstance(arg, str) and ("UNICODE" in op.name or "STRING" in op.name):
                strings = [strings[-1], str(arg)]
            if op.name in ("GLOBAL", "INST"):
                named = str(arg).replace(" ", ".")
            elif op.name == "STACK_GLOBAL":  # module and name: the two strings pushed before it
                named = ".".join(strings)
            elif op.name in ("REDUCE", "OBJ", "NEWOBJ", "NEWOBJ_EX", "EXT1", "EXT2", "EXT4"):
                named = "a pickled object"
            if named or f.tell() > budget * 2**20:
                break
    except Exception:  # noqa: BLE001  (a malformed stream: the refusal stands, without naming an object)
        pass
    what = "a plain pickle (or torch's pre-1.6 format), not the zip archive torch.save writes"
    if named is None:
        return f"refused: {what}; dytrim reads only checkpoints that torch.save wrote"
    return (f"refused: {what}, and it holds a Python object ({named}) that is not plain data: loading it could run "
            "code, so it is not read")


def _check_budget(nbytes: int, what: str, budget: float) -> None:
    if nbytes > budget * 2**20:
        raise Unusable(f"{OVER_BUDGET} {nbytes / 2**20:,.0f} MiB ({what} its zip directory), over the checkpoint "
                       f"memory budget of {budget:g} MiB; nothing was loaded. For a checkpoint you trust, raise "
                       f"{BUDGET_ENV}")


def _torch_load(f: BinaryIO, map_location: Any) -> Any:
    """torch.load as data only; Unusable naming an object that is not data, or why the file does not load."""
    f.seek(0)
    try:
        with warnings.catch_warnings():  # torch's note on a foreign pickle protocol: the refusal below says it all
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(f, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        culprit = _unsafe_global(str(exc))
        if culprit is None:
            raise Unusable(f"unreadable: its data.pkl is not a valid pickle ({_first_line(exc)})") from exc
        raise Unusable(
            f"refused: it holds a Python object ({culprit}) that is not plain data, and loading it could run "
            f"code. dytrim checkpoints of format {FORMAT_VERSION} hold only tensors, numbers and strings; "
            "format 1 (dytrim <= 0.1.0) held numpy objects and cannot be resumed by this version"
        ) from exc
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile, KeyError, TypeError,
            AttributeError, IndexError, struct.error, MemoryError) as exc:
        raise Unusable(f"unreadable ({type(exc).__name__}: {_first_line(exc)})") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


#: Pickle opcodes that build objects by calling them (INST, OBJ, EXT1/2/4, NEWOBJ_EX): refused as code, not as noise.
_CALLING_OPCODES = {105, 111, 130, 131, 132, 146}


def _unsafe_global(message: str) -> str | None:
    """What torch's weights-only unpickler refused as not data, as its message names it; None when the pickle is
    merely malformed (random bytes, a cut-off stream)."""
    if m := re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", message):
        return m.group(1)
    if re.search(r"Trying to call reduce|Can only create new object|Can only build", message):
        return "a pickled object"
    if (m := re.search(r"Unsupported operand (\d+)", message)) and int(m.group(1)) in _CALLING_OPCODES:
        return f"a pickled object built by opcode {int(m.group(1))}"
    return None


def _declared_bytes(obj: Any, seen: set[int] | None = None) -> int:
    """Bytes of the tensor storages a meta-loaded structure declares (each storage object counted once)."""
    seen = set() if seen is None else seen
    if isinstance(obj, torch.Tensor):
        storage = obj.untyped_storage()
        if id(storage) in seen:
            return 0
        seen.add(id(storage))
        return storage.nbytes()
    if isinstance(obj, dict):
        return sum(_declared_bytes(v, seen) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_declared_bytes(v, seen) for v in obj)
    return 0


def _check_layout(state: Any, path: Path) -> None:
    if not isinstance(state, dict) or "step" not in state:
        raise Unusable(f"not a dytrim checkpoint (a {type(state).__name__} without a step; dytrim checkpoints are "
                       "dicts holding step, config, model, ema, ...)")
    version = state.get("format_version", 1)
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {Path(path).name} has format version {version}; this dytrim reads format "
            f"{FORMAT_VERSION}. Continue the run with the dytrim version that wrote it, or start a new --out"
        )


def _peek_open(f: BinaryIO, path: Path) -> dict[str, Any]:
    budget = budget_mb()
    _records(f, budget)
    state = _torch_load(f, "meta")
    _check_layout(state, path)
    _check_budget(_declared_bytes(state), "tensor storages the pickle declares beside", budget)
    return state


def peek(path: Path) -> dict[str, Any]:
    """Every check above, tensors on the meta device (nothing of them read or allocated)."""
    with _open_regular(Path(path)) as f:
        return _peek_open(f, Path(path))


def read(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Every check above, then the checkpoint's tensors loaded onto `map_location`."""
    with _open_regular(Path(path)) as f:
        _peek_open(f, Path(path))
        state = _torch_load(f, map_location)
    _check_layout(state, path)
    return state


def verify(path: Path) -> dict[str, Any]:
    """`peek`, and every record's bytes match their CRC (read in blocks: the memory of one block): a checkpoint that
    has been written and reads back. Returns the meta state."""
    with _open_regular(Path(path)) as f:
        state = _peek_open(f, Path(path))
        f.seek(0)
        try:
            with zipfile.ZipFile(f) as zf:
                bad = zf.testzip()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error) as exc:
            raise Unusable(f"unreadable ({type(exc).__name__}: {_first_line(exc)})") from exc
    if bad is not None:
        raise Unusable(f"unreadable: record {bad} does not match its checksum")
    return state
