"""metrics.jsonl, the one reader and writer: durable appends, one snapshot per read, and a resumed run's rows put
back in line with the checkpoint it continues from.

A line is complete once its newline is written. Readers take the file once and parse the complete lines: an
unterminated or unparseable last line is a run killed while appending (or one appending now) and is not read;
any other line that is not a row is damage, reported with its line number.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dytrim.data.errors import DataError
from dytrim.fileio import WriteFailure, atomic_write_text


@dataclass(frozen=True)
class MetricsLog:
    """The rows of one read of metrics.jsonl, and whether its last line was torn (not read)."""

    rows: list[dict[str, Any]]
    torn_tail: bool


def read_log(path: Path) -> MetricsLog:
    """One snapshot of metrics.jsonl (absent: no rows). Raises DataError naming the line of a damaged middle line."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO or device would block or never end
            raise DataError(f"'{path}' is not a regular file; move it away (a run writes metrics.jsonl itself)")
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return MetricsLog([], False)
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline, else the line being (or torn while) written
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    rows: list[dict[str, Any]] = []
    torn = bool(tail.strip())
    for k, (number, line) in enumerate(numbered):
        row, why = _parse(line)
        if row is not None:
            rows.append(row)
        elif k == len(numbered) - 1 and not torn:  # a damaged last line (e.g. zeros after a power loss)
            torn = True
        else:
            raise DataError(
                f"'{path}' line {number} is {why}; the file is damaged (dytrim writes whole rows): fix or delete "
                "that line, or restore the file from a copy")
    return MetricsLog(rows, torn)


def _parse(line: bytes) -> tuple[dict[str, Any] | None, str]:
    """A metrics row (a JSON object with an integer `step`), or None and what the line is instead."""
    try:
        obj = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"not JSON ({exc.__class__.__name__}: {str(exc).splitlines()[0][:80]})"
    if not isinstance(obj, dict) or isinstance(obj.get("step"), bool) or not isinstance(obj.get("step"), int):
        return None, "not a metrics row (a JSON object with an integer \"step\")"
    return obj, ""


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The complete rows of metrics.jsonl, read once; a torn last line is not read (see the module docstring)."""
    return read_log(path).rows


def last_stage_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of the last row's stage: what a run in stages is measured by (engine/stages.py); a run without
    stages has one, so all of its rows."""
    return [r for r in rows if r.get("stage") == rows[-1].get("stage")] if rows else rows


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Replace metrics.jsonl atomically (fsync, rename) by `rows`."""
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append one row and fsync it before returning, so a checkpoint written after it never outlives it. A failed
    write (no space, permission, I/O error) cuts the file back to its previous rows and raises WriteFailure."""
    line = (json.dumps(row) + "\n").encode()
    try:
        with Path(path).open("ab") as f:
            size = f.tell()
            try:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            except OSError:
                _cut(f, size)
                raise
    except OSError as exc:
        raise WriteFailure(path, exc.strerror or str(exc)) from exc


def _cut(f: Any, size: int) -> None:
    """Best effort: drop a partly written line (the reader would skip it as a torn tail anyway)."""
    try:
        f.truncate(size)
    except OSError:
        pass


@dataclass(frozen=True)
class CheckpointEval:
    """What a checkpoint says about the evaluation at its own step: `row` is that evaluation's metrics row (None:
    none was made at that step); `expected` says a row should exist (for checkpoints older than `eval_row`, which
    lack the row, guessed from the cadence: a multiple of eval_every, or the run's last step)."""

    step: int
    row: dict[str, Any] | None
    expected: bool


def checkpoint_eval(state: dict[str, Any]) -> CheckpointEval:
    step = int(state["step"])
    if "eval_row" in state:
        return CheckpointEval(step, state["eval_row"], state["eval_row"] is not None)
    train = (state.get("config") or {}).get("train") or {}
    every, steps = int(train.get("eval_every") or 0), train.get("steps")
    return CheckpointEval(step, None, (every > 0 and step % every == 0) or step == steps)


def align_to_checkpoint(path: Path, ckpt: CheckpointEval) -> bool:
    """On resume: drop a torn last line and the rows after the checkpoint's step (training redoes them), and put
    back the evaluation at that step from the checkpoint if the file lost it. Returns True when that evaluation is
    expected, missing, and not in the checkpoint: the caller re-evaluates the restored EMA model."""
    log = read_log(path)
    rows = [r for r in log.rows if r["step"] <= ckpt.step]
    missing = ckpt.expected and not any(r["step"] == ckpt.step for r in rows)
    if missing and ckpt.row is not None:
        rows.append(ckpt.row)
        missing = False
    if log.torn_tail or rows != log.rows or not Path(path).exists():
        write_rows(path, rows)
    return missing
