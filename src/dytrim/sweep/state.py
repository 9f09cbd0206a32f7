"""A sweep on disk: one directory per cell, named by its spec, which is also the cell's `dytrim train --out`.

    OUT/sweep.json                 the table it came from and its cells (informational)
    OUT/cells/<name>/cell.json     the cell's spec (row, column, seed, preset, overrides)
    OUT/cells/<name>/...           the run itself (config.yaml, metrics.jsonl, ckpt_*.pt, summary.json)
    OUT/cells/<name>/train.log     what each attempt printed (appended)
    OUT/cells/<name>/attempts.jsonl one line per attempt: start, end, exit code, how it was launched
    OUT/cells/<name>/failed.json   the last attempt failed: its exit code and last line (removed when one starts)
    OUT/cells/<name>/CANCELLED     `dytrim sweep --cancel` marked it (a requeue then stops)
    OUT/cells/<name>/launcher.json the Slurm job that holds it (job id), when submitted there

The directory is the only truth: done = a valid summary.json; running = a live process holds the run lock
(runlock.py); cancelled / failed = the markers above; resumable = a checkpoint; to do = none of those. Nothing here
imports torch, so `--status` is instant.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dytrim import runlock
from dytrim.fileio import atomic_write_text
from dytrim.resume import run_traces
from dytrim.sweep.table import Cell, Table

CKPT = re.compile(r"^ckpt_(\d+)\.pt$")
STATES = ("done", "running", "resumable", "failed", "cancelled", "to do")
EXIT_STOPPED = (130, 143)  # SIGINT / SIGTERM after a checkpoint: resumable, not failed


@dataclass
class CellState:
    state: str
    step: int | None = None  # newest checkpoint's step (or the finished run's)
    steps: int | None = None  # the run's train.steps, when known
    detail: str = ""


def cell_dir(out: Path, cell: Cell) -> Path:
    return Path(out) / "cells" / cell.name


def write_specs(out: Path, table: Table) -> None:
    """sweep.json and every cell.json (rewritten each launch: the spec of a name never changes)."""
    out = Path(out)
    for cell in table.cells:
        d = cell_dir(out, cell)
        d.mkdir(parents=True, exist_ok=True)
        if not (d / "cell.json").exists():
            atomic_write_text(d / "cell.json", json.dumps(cell.to_json(), indent=1) + "\n")
    atomic_write_text(out / "sweep.json", json.dumps({"table": table.name, "file": str(table.path),
                                                      "cells": [c.name for c in table.cells]}, indent=1) + "\n")


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _steps_of(d: Path) -> int | None:
    """train.steps of the run's config.yaml (None before the run wrote it)."""
    try:
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        return int(cfg["train"]["steps"])
    except (OSError, ValueError, TypeError, KeyError, yaml.YAMLError):
        return None


def newest_step(d: Path) -> int | None:
    steps = [int(m.group(1)) for p in Path(d).glob("ckpt_*.pt") if (m := CKPT.match(p.name))]
    return max(steps) if steps else None


def classify(d: Path) -> CellState:
    """The state of one cell directory (see the module doc)."""
    d = Path(d)
    summary = read_json(d / "summary.json")
    if summary is not None and "steps" in summary:
        return CellState("done", summary.get("steps"), summary.get("steps"))
    step, steps = newest_step(d), _steps_of(d)
    if holder := runlock.is_held(d):
        return CellState("running", step, steps, holder)
    if (d / "CANCELLED").exists():
        return CellState("cancelled", step, steps, "dytrim sweep --cancel")
    if failed := read_json(d / "failed.json"):
        return CellState("failed", step, steps, f"exit {failed.get('rc')}: {failed.get('last_line', '')}")
    if step is not None:
        return CellState("resumable", step, steps)
    return CellState("to do", None, steps)


def train_command(d: Path, cell: Cell, extra_set: list[str] | None = None) -> list[str]:
    """`python -m dytrim train ...` for the cell: `--resume DIR` once the directory holds a run, else the fresh run.
    `extra_set`: resumable keys for this launch only (e.g. train.threads)."""
    base = [sys.executable, "-m", "dytrim", "train"]
    extra = [x for s in extra_set or [] for x in ("--set", s)]
    if run_traces(d):
        return [*base, "--resume", str(d), *extra]
    return [*base, "--preset", cell.preset, *cell.set_args(), *extra, "--out", str(d)]


def last_line(log: Path, since: int = 0) -> str:
    """The last non-empty line a run printed after byte `since` of its log (its error, for a failed run)."""
    try:
        with open(log, "rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def start_attempt(d: Path, launcher: str) -> int:
    """Before an attempt: clear the failure marker; returns the log's size (where this attempt's output starts)."""
    (d / "failed.json").unlink(missing_ok=True)
    try:
        return (d / "train.log").stat().st_size
    except OSError:
        return 0


def end_attempt(d: Path, launcher: str, rc: int, started: float, log_start: int) -> None:
    """After an attempt: one line in attempts.jsonl; failed.json for an exit that is neither done nor stopped."""
    record = {"start": round(started, 3), "end": round(time.time(), 3), "rc": rc, "launcher": launcher,
              "host": socket.gethostname(), "pid": os.getpid(), "job": os.environ.get("SLURM_JOB_ID")}
    with open(d / "attempts.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    if rc != 0 and rc not in EXIT_STOPPED:
        line = last_line(d / "train.log", log_start)
        atomic_write_text(d / "failed.json", json.dumps({"rc": rc, "last_line": line, "at": time.time()}) + "\n")


def attempts(d: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(x) for x in (d / "attempts.jsonl").read_text().splitlines() if x.strip()]
    except (OSError, ValueError):
        return []


def states(out: Path, table: Table) -> list[tuple[Cell, CellState]]:
    return [(c, classify(cell_dir(out, c))) for c in table.cells]


def format_status(out: Path, table: Table) -> str:
    """Every cell as one line of a table: row, column, seed, state, progress, detail; then the counts."""
    found = states(out, table)
    head = ("row", "column", "seed", "state", "step", "cell", "detail")
    lines = [head]
    for cell, st in found:
        prog = f"{st.step if st.step is not None else '-'}/{st.steps if st.steps is not None else '?'}"
        lines.append((cell.row, cell.column, str(cell.seed), st.state, prog, cell.name, st.detail[:120]))
    widths = [max(len(r[i]) for r in lines) for i in range(len(head) - 1)]
    text = ["  ".join(f"{v:<{w}}" for v, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1] for r in lines]
    counts = {s: sum(st.state == s for _, st in found) for s in STATES}
    text.append(f"{len(found)} cells: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    return "\n".join(text)
