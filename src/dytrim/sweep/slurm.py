"""The Slurm launcher: one job array per table through submitit's SlurmExecutor (launcher-notes.md §4.3-4.4).

Every array task runs `RunCell(dir)`, which starts the cell's `dytrim train` (fresh, or `--resume` once the
directory holds a run) and polls it. The signal is SIGTERM (`SUBMITIT_PREEMPT_SIGNAL=TERM`, set before submitit is
imported, exported in the job script): sbatch asks for `--signal=TERM@<delay>`, Slurm's time-limit warning and a
preemption both reach every process of the step, the trainer checkpoints and exits 143 (engine/stop.py; it also
treats SIGUSR1/SIGUSR2 as a stop, should a cluster send those), and submitit calls `RunCell.checkpoint`, which waits
for that exit and returns a fresh `RunCell(dir)`: submitit requeues the task (`scontrol requeue`), and the restarted
task continues bit-identically from the checkpoint. A `CANCELLED` marker (dytrim sweep --cancel) makes
`checkpoint` return None, so a cancel is not undone by the requeue (notes §5.3). Nothing is read from submitit's
result pickles or sacct: the cell directory is the truth (state.py).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dytrim.fileio import atomic_write_text
from dytrim.sweep import state
from dytrim.sweep.table import Cell, TableError

PREEMPT_SIGNAL = "TERM"


@dataclass
class SlurmOptions:
    partition: str | None = None
    account: str | None = None
    time_min: int = 24 * 60
    gpus_per_cell: int = 1
    cpus_per_cell: int | None = None
    mem: str | None = None
    array_parallelism: int = 64
    signal_delay_s: int = 180
    max_requeues: int = 20
    setup: tuple[str, ...] = ()

    def parameters(self, name: str) -> dict[str, Any]:
        """SlurmExecutor.update_parameters(...) of one table's array."""
        extra: dict[str, Any] = {"requeue": True}
        if self.account:
            extra["account"] = self.account
        params: dict[str, Any] = {
            "job_name": f"dytrim-{name}", "time": self.time_min, "signal_delay_s": self.signal_delay_s,
            "array_parallelism": self.array_parallelism, "nodes": 1, "ntasks_per_node": 1,
            "setup": [f"export SUBMITIT_PREEMPT_SIGNAL={PREEMPT_SIGNAL}", "export OMP_NUM_THREADS="
                      f"{self.cpus_per_cell or 1}", *self.setup],
            "additional_parameters": extra, "stderr_to_stdout": True,
        }
        if self.gpus_per_cell:
            params["gpus_per_node"] = self.gpus_per_cell
        if self.cpus_per_cell:
            params["cpus_per_task"] = self.cpus_per_cell
        if self.partition:
            params["partition"] = self.partition
        if self.mem:
            params["mem"] = self.mem
        return params


def _submitit() -> Any:
    os.environ.setdefault("SUBMITIT_PREEMPT_SIGNAL", PREEMPT_SIGNAL)  # read by submitit when it is imported
    try:
        import submitit
    except ImportError:
        raise TableError("--launcher slurm needs submitit: pip install 'dytrim[launch]' (or pip install "
                         "'submitit>=1.5.3'); --launcher print writes one command per cell instead") from None
    return submitit


class RunCell:
    """What every array task runs: the cell's `dytrim train`, to the end or to a requeue (a picklable callable:
    paths only; the resume state lives in the cell directory)."""

    def __init__(self, cell: Cell, out: str, gpus: int = 1, extra: tuple[str, ...] = ()) -> None:
        self.cell, self.out, self.gpus, self.extra = cell, out, gpus, tuple(extra)  # extra: resumable --set
        self._proc: subprocess.Popen | None = None
        self._started, self._log_start = 0.0, 0

    def __getstate__(self) -> dict[str, Any]:
        return {"cell": self.cell, "out": self.out, "gpus": self.gpus, "extra": self.extra}

    def __setstate__(self, s: dict[str, Any]) -> None:
        self.__init__(s["cell"], s["out"], s["gpus"], s.get("extra", ()))

    @property
    def dir(self) -> Path:
        return state.cell_dir(Path(self.out), self.cell)

    def command(self) -> list[str]:
        cmd = state.train_command(self.dir, self.cell, ["train.progress=false", *self.extra])
        if self.gpus > 1:  # one task, torchrun forwards SIGTERM to every rank (which stop at the same step)
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={self.gpus}",
                   "--shutdown-timeout=120", "-m", *cmd[2:]]
        return cmd

    def __call__(self) -> str:
        d = self.dir
        if state.classify(d).state == "done":
            return "done"
        self._log_start, self._started = state.start_attempt(d, "slurm"), time.time()
        with open(d / "train.log", "ab") as log:
            log.write(f"\n== {time.strftime('%Y-%m-%d %H:%M:%S')} slurm job {os.environ.get('SLURM_JOB_ID')}: "
                      f"{shlex.join(self.command()[1:])}\n".encode())
            log.flush()
            self._proc = proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        while proc.poll() is None:  # never Popen.wait(): checkpoint() must be able to reap (notes §1.1)
            time.sleep(0.5)
        rc = proc.returncode
        self._end(rc)
        if rc in state.EXIT_STOPPED and os.environ.get("SLURM_JOB_ID") and not (d / "CANCELLED").exists():
            time.sleep(300)  # the scheduler stopped the trainer itself: stay alive so that Slurm requeues (§1.2)
        if rc != 0:
            raise RuntimeError(f"{self.cell.name}: dytrim train exited {rc}: {state.last_line(d / 'train.log')}")
        return "done"

    def _end(self, rc: int) -> None:
        if self._proc is not None:
            state.end_attempt(self.dir, "slurm", rc, self._started, self._log_start)
            self._proc = None

    def checkpoint(self) -> Any:
        """submitit's hook on the preemption / time-limit signal: let the trainer checkpoint, then requeue."""
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # it usually got the signal from Slurm already; a second is harmless
            deadline = time.time() + 600
            while proc.poll() is None and time.time() < deadline:
                time.sleep(0.2)
            if proc.returncode is not None:
                self._end(proc.returncode)  # __call__ does not return after this hook: record the attempt here
        if (self.dir / "CANCELLED").exists():
            return None  # cancelled: no requeue
        return _submitit().helpers.DelayedSubmission(RunCell(self.cell, self.out, self.gpus, self.extra))


def submit(out: Path, name: str, cells: list[Cell], opts: SlurmOptions) -> list[str]:
    """One job array of `cells`; returns the job ids (A_i), also written to each cell's launcher.json."""
    submitit = _submitit()
    # absolute paths: the job runs on another node, from another working directory (a shared file system)
    ex = submitit.SlurmExecutor(folder=str(Path(out).resolve() / "submitit" / "%j"), max_num_timeout=opts.max_requeues)
    ex.update_parameters(**opts.parameters(name))
    with ex.batch():
        extra = (f"train.threads={opts.cpus_per_cell}",) if opts.cpus_per_cell else ()
        jobs = [ex.submit(RunCell(c, str(Path(out).resolve()), opts.gpus_per_cell, extra)) for c in cells]
    ids = [j.job_id for j in jobs]
    for cell, job_id in zip(cells, ids, strict=True):
        d = state.cell_dir(out, cell)
        (d / "CANCELLED").unlink(missing_ok=True)
        record = {"launcher": "slurm", "job": job_id, "submitted": round(time.time())}
        atomic_write_text(d / "launcher.json", json.dumps(record) + "\n")
    return ids


def job_script(out: Path, name: str, n: int, opts: SlurmOptions) -> str:
    """The sbatch script submitit writes for an array of `n` cells (for --dry-run; needs no Slurm)."""
    _submitit()
    from submitit.slurm.slurm import _make_sbatch_string  # the function SlurmExecutor itself calls

    folder = Path(out).resolve() / "submitit" / "%j"
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    return _make_sbatch_string(command=command, folder=folder, map_count=n, **opts.parameters(name))


def pending_jobs(out: Path, cells: list[Cell]) -> set[str]:
    """Names of cells whose recorded Slurm job `squeue` still lists (queued or running): not submitted again."""
    recorded = {c.name: j for c in cells if (j := (state.read_json(state.cell_dir(out, c) / "launcher.json")
                                                   or {}).get("job"))}
    if not recorded:
        return set()
    try:
        res = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(recorded.values())], capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return set()
    listed = set(res.stdout.split())
    return {name for name, job in recorded.items() if job in listed}


def cancel(out: Path, cells: list[Cell]) -> list[str]:
    """scancel the recorded jobs of `cells` (their CANCELLED markers are written first); the ids cancelled."""
    jobs = [j for c in cells if (j := (state.read_json(state.cell_dir(out, c) / "launcher.json") or {}).get("job"))]
    if jobs:
        try:
            subprocess.run(["scancel", *jobs], capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return []
    return jobs
