"""`dytrim sweep --launcher slurm` on a real one-node Slurm that the test starts itself (tests/slurm/one_node.sh:
the Debian packages, munged, slurmctld, slurmd; root and apt needed, else the module is skipped with the reason):
a job array of 4 tiny cells to done and collected, and a task signalled as a preemption (scancel --signal=TERM)
that submitit requeues and that resumes to the uninterrupted run's metrics."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dytrim.sweep import state
from dytrim.sweep.table import load_table

pytestmark = pytest.mark.slow

ENV = os.environ | {"OMP_NUM_THREADS": "1", "DYTRIM_CPU_BF16": "0"}
START = Path(__file__).parent / "slurm" / "one_node.sh"
SET = ("set: {{train.steps: {steps}, train.eval_every: 4, train.device: cpu, data.eval_subset: 50, "
       "train.batch_size: 8, train.uratio: 2}}")
TABLE = """\
name: {name}
metric: {{key: bacc, stat: last, scale: 100, digits: 1}}
seeds: {seeds}
{common}
rows:
  - {{name: FixMatch, preset: mnist-lt-fixmatch}}
columns:
{columns}
"""
TWO = "  - {name: c1, set: {optim.lr: 0.002}}\n  - {name: c2, set: {optim.lr: 0.001}}"


def _start() -> bool:
    """Start the one-node Slurm unless one runs already; True when this test started it (and stops it after)."""
    if subprocess.run(["pgrep", "-x", "slurmctld"], capture_output=True).returncode == 0:
        return False
    res = subprocess.run(["bash", str(START), "start"], capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        pytest.skip(f"no Slurm: {START.name} could not start one here ({(res.stderr or res.stdout).strip()[-300:]})")
    return True


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """(table directory, partition): DYTRIM_SLURM_PARTITION on a cluster of yours, else a one-node Slurm here."""
    part = os.environ.get("DYTRIM_SLURM_PARTITION", "")
    started = False if part else _start()
    part = part or "dytrim"
    assert shutil.which("sbatch") and shutil.which("squeue"), "Slurm started but its commands are not on PATH"
    root = tmp_path_factory.mktemp("slurm")
    (root / "tiny.yaml").write_text(TABLE.format(name="tiny", seeds="[0, 1]", common=SET.format(steps=24),
                                                 columns=TWO))
    (root / "long.yaml").write_text(TABLE.format(name="long", seeds="[0]", common=SET.format(steps=160),
                                                 columns="  - {name: c1}"))
    yield root, part
    if started:
        subprocess.run(["bash", str(START), "stop"], capture_output=True, timeout=60)


def sweep(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dytrim", "sweep", *args], env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def submit(table: Path, out: Path, part: str) -> None:
    res = sweep(str(table), "--out", str(out), "--launcher", "slurm", "--partition", part, "--gpus-per-cell", "0",
                "--cpus-per-cell", "1", "--time", "30", "--signal-delay", "60")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]


def wait_done(table: Path, out: Path, n: int, seconds: int = 900) -> str:
    deadline = time.time() + seconds
    status = ""
    while time.time() < deadline:
        status = sweep(str(table), "--out", str(out), "--status").stdout
        if status.strip().endswith(f"{n} cells: {n} done"):
            return status
        time.sleep(5)
    pytest.fail(status)


def settled_rcs(d: Path, n: int, seconds: int = 60) -> list[int]:
    """The exit codes of the cell's attempts once `n` are recorded, or after `seconds` (the task appends the record
    of an attempt after its trainer wrote summary.json, so --status may say done a moment before)."""
    deadline = time.time() + seconds
    while time.time() < deadline and len(state.attempts(d)) < n:
        time.sleep(0.2)
    return [a["rc"] for a in state.attempts(d)]


def metrics(run: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [{k: v for k, v in r.items() if k not in {"wall_s", "images_per_s"}} for r in rows]


def test_job_array_runs_every_cell(slurm) -> None:
    root, part = slurm
    out = root / "array"
    submit(root / "tiny.yaml", out, part)
    table = load_table(root / "tiny.yaml")
    jobs = [json.loads((state.cell_dir(out, c) / "launcher.json").read_text())["job"] for c in table.cells]
    assert len({j.split("_")[0] for j in jobs}) == 1 and sorted(j.split("_")[1] for j in jobs) == ["0", "1", "2", "3"]
    wait_done(root / "tiny.yaml", out, 4)
    rcs = [settled_rcs(state.cell_dir(out, c), 1) for c in table.cells]
    assert rcs == [[0]] * 4, rcs
    res = sweep(str(root / "tiny.yaml"), "--out", str(out), "--collect")
    assert res.returncode == 0 and (out / "results" / "tiny.md").is_file(), res.stdout + res.stderr


def test_preempted_task_is_requeued_and_resumes_exactly(slurm) -> None:
    root, part = slurm
    table = load_table(root / "long.yaml")
    cell = table.cells[0]
    straight = root / "straight"
    assert sweep(str(root / "long.yaml"), "--out", str(straight), "--threads", "1").returncode == 0
    for attempt in range(3):  # the signal must land while the trainer runs, after its first checkpoint
        out = root / f"pre{attempt}"
        submit(root / "long.yaml", out, part)
        d = state.cell_dir(out, cell)
        job = json.loads((d / "launcher.json").read_text())["job"]
        deadline = time.time() + 300
        while state.newest_step(d) is None and time.time() < deadline and not (d / "summary.json").exists():
            time.sleep(0.2)
        subprocess.run(["scancel", "--signal=TERM", job], check=True)  # what Slurm sends before a preemption
        wait_done(root / "long.yaml", out, 1, seconds=900)  # a requeue waits ~2 min in PENDING (BeginTime)
        if settled_rcs(d, 2)[:1] == [143]:
            break
    else:
        pytest.fail("the run finished before the signal three times")
    assert settled_rcs(d, 2) == [143, 0]
    assert metrics(d) == metrics(state.cell_dir(straight, cell))
