"""The local launcher: a small slot pool of `dytrim train` processes on this machine (CPU processes with the
threads split between them, or K runs per listed GPU through CUDA_VISIBLE_DEVICES).

Why not submitit's LocalExecutor (it is used for Slurm, slurm.py): it has no queue (every submitted job starts at
once), no GPU allocator (every job sees the same GPUs), a 2-minute default time limit, and its interrupt test hook
kills its controller instead of preempting (launcher-notes.md §1.1, §5.5); dytrim would need its own slot loop
around it anyway, and a pickled callable per cell, for what one subprocess per cell does here directly.

Each slot runs one cell at a time. A run that stops with a checkpoint (exit 143 / 130: a SIGTERM or SIGUSR1/2 from
outside, i.e. a preemption) is requeued at once with `--resume` unless the sweep itself is stopping or the cell was
cancelled; any other non-zero exit marks the cell failed (failed.json, with its last line) and the others go on.
The children get SIGTERM if this process dies (PR_SET_PDEATHSIG), so a killed sweep leaves checkpoints, not orphans.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dytrim.engine.stop import StopRequest
from dytrim.sweep import state
from dytrim.sweep.table import Cell


@dataclass
class Slot:
    env: dict[str, str]  # OMP_NUM_THREADS, CUDA_VISIBLE_DEVICES
    threads: int
    label: str


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def make_slots(procs: int, gpus: list[str] | None, runs_per_gpu: int, threads: int | None) -> list[Slot]:
    """`procs` CPU slots, or `runs_per_gpu` slots per listed GPU; the CPU threads split between them."""
    labels = [(g, {"CUDA_VISIBLE_DEVICES": g}) for g in gpus for _ in range(runs_per_gpu)] if gpus else \
        [(f"cpu{i}", {"CUDA_VISIBLE_DEVICES": ""}) for i in range(procs)]
    per = threads or max(1, cpu_count() // len(labels))
    return [Slot(env | {"OMP_NUM_THREADS": str(per)}, per, label) for label, env in labels]


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the sweep process dies (Linux; elsewhere nothing)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@dataclass
class _Running:
    proc: subprocess.Popen
    cell: Cell
    dir: Path
    slot: Slot
    started: float
    log_start: int
    requeues: int
    signalled: bool = False  # the stop was sent: once, so that a second SIGTERM cannot kill the clean exit


def run_local(out: Path, cells: list[Cell], slots: list[Slot], max_requeues: int = 3,
              say: Callable[[str], None] = print) -> dict[str, str]:
    """Run `cells` (to do / resumable / failed ones) to the end through `slots`; cell name -> final state."""
    queue: list[tuple[Cell, int]] = [(c, 0) for c in cells]
    free, running = list(slots), []
    result: dict[str, str] = {}
    with StopRequest(announce=False) as stop:
        while queue or running:
            while queue and free and not stop.requested:
                cell, requeues = queue.pop(0)
                running.append(_start(out, cell, free.pop(0), requeues, say))
            time.sleep(0.1)
            if stop.requested:
                for r in running:
                    if r.proc.poll() is None and not r.signalled:
                        r.proc.send_signal(signal.SIGTERM)  # checkpoint and exit 143
                        r.signalled = True
                queue.clear()
            for r in [r for r in running if r.proc.poll() is not None]:
                running.remove(r)
                free.append(r.slot)
                rc = r.proc.returncode
                state.end_attempt(r.dir, "local", rc, r.started, r.log_start)
                cancelled = (r.dir / "CANCELLED").exists()
                if rc in state.EXIT_STOPPED and not stop.requested and not cancelled and r.requeues < max_requeues:
                    say(f"dytrim sweep: {r.cell.name} stopped with a checkpoint (exit {rc}); requeued "
                        f"({max_requeues - r.requeues - 1} requeues left)")
                    queue.insert(0, (r.cell, r.requeues + 1))
                    continue
                st = state.classify(r.dir)
                result[r.cell.name] = st.state
                say(f"dytrim sweep: {r.cell.name}: {st.state}" + (f" ({st.detail})" if st.state == "failed" else ""))
    if stop.requested:
        say(f"dytrim sweep: {signal.Signals(stop.signum).name} received; the cells stopped with a checkpoint; "
            "run the same command again to continue")
        raise SystemExit(128 + int(stop.signum or signal.SIGTERM))
    return result


def _start(out: Path, cell: Cell, slot: Slot, requeues: int, say: Callable[[str], None]) -> _Running:
    d = state.cell_dir(out, cell)
    (d / "CANCELLED").unlink(missing_ok=True)  # launching a cell again un-cancels it
    cmd = state.train_command(d, cell, [f"train.threads={slot.threads}", "train.progress=false"])
    log_start = state.start_attempt(d, "local")
    with open(d / "train.log", "ab") as log:
        log.write(f"\n== {time.strftime('%Y-%m-%d %H:%M:%S')} {slot.label}: {' '.join(cmd[1:])}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=os.environ | slot.env, preexec_fn=_die_with_parent if sys.platform == "linux"
                                else None)
    say(f"dytrim sweep: {cell.name} started on {slot.label} (pid {proc.pid})"
        + (" --resume" if "--resume" in cmd else ""))
    return _Running(proc, cell, d, slot, time.time(), log_start, requeues)
