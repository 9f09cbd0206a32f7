"""`dytrim sweep` launching real tiny cells: an end-to-end local sweep (2 cells x 2 seeds), a second run that starts
nothing, a scheduler's warning signal to the trainer (requeued, resumed, equal to the uninterrupted run), a
SIGKILLed sweep that the next command resumes, and the Slurm job array written through submitit against fake
sbatch / srun / squeue / sacct / scancel executables."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dytrim.sweep import state
from dytrim.sweep.table import load_table

pytestmark = pytest.mark.slow  # runs the CLI end to end (see pyproject.toml)

ENV = os.environ | {"OMP_NUM_THREADS": "1", "DYTRIM_CPU_BF16": "0"}
COMMON = ("set: {train.steps: 24, train.eval_every: 4, train.device: cpu, data.eval_subset: 50, "
          "train.batch_size: 8, train.uratio: 2}")
TABLE = f"""\
name: tiny
metric: {{key: bacc, stat: last, scale: 100, digits: 1}}
seeds: [0, 1]
{COMMON}
rows:
  - {{name: FixMatch, preset: mnist-lt-fixmatch}}
columns:
  - {{name: c1, set: {{optim.lr: 0.002}}}}
  - {{name: c2, set: {{optim.lr: 0.001}}}}
"""
ONE = f"""\
name: one
metric: {{key: bacc, stat: last}}
seeds: [0]
{COMMON}
rows:
  - {{name: FixMatch, preset: mnist-lt-fixmatch}}
columns:
  - {{name: c1, set: {{optim.lr: 0.002}}}}
"""  # its one cell is the (c1, seed 0) cell of TABLE: the same spec, so the same name


def sweep(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dytrim", "sweep", *args], env=env or ENV, capture_output=True,
                          text=True, timeout=900)


def metrics(run: Path) -> list[dict]:
    volatile = {"wall_s", "images_per_s"}
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [{k: v for k, v in r.items() if k not in volatile} for r in rows]


@pytest.fixture(scope="module")
def tables(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    (root / "tiny.yaml").write_text(TABLE)
    (root / "one.yaml").write_text(ONE)
    return root


@pytest.fixture(scope="module")
def swept(tables) -> tuple[Path, Path]:
    root = tables
    res = sweep(str(root / "tiny.yaml"), "--out", str(root / "out"), "--threads", "1")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return root, root / "out"


def test_local_sweep_end_to_end(swept) -> None:
    root, out = swept
    table = load_table(root / "tiny.yaml")
    assert len(table.cells) == 4
    for cell in table.cells:
        d = state.cell_dir(out, cell)
        assert state.classify(d).state == "done"
        assert json.loads((d / "cell.json").read_text())["seed"] == cell.seed
        assert [a["rc"] for a in state.attempts(d)] == [0]
    status = sweep(str(root / "tiny.yaml"), "--out", str(out), "--status")
    assert status.returncode == 0 and status.stdout.strip().endswith("4 cells: 4 done")
    collected = sweep(str(root / "tiny.yaml"), "--out", str(out), "--collect")
    assert collected.returncode == 0, collected.stderr
    md = (out / "results" / "tiny.md").read_text()
    assert "(n=2)" in md and "| FixMatch |" in md and "bacc (%), last evaluation" in md
    for ext in ("csv", "tex", "html", "json", "png"):
        assert (out / "results" / f"tiny.{ext}").exists()
    page = (out / "results" / "tiny.html").read_text()  # dytrim report's figures per column: curves, recall
    for name in ("tiny-col0-curves.png", "tiny-col0-recall.png"):
        assert (out / "results" / name).stat().st_size > 0 and f'src="{name}"' in page


def test_second_run_submits_nothing(swept) -> None:
    root, out = swept
    table = load_table(root / "tiny.yaml")
    before = {c.name: (state.cell_dir(out, c) / "summary.json").stat().st_mtime_ns for c in table.cells}
    res = sweep(str(root / "tiny.yaml"), "--out", str(out), "--threads", "1")
    assert res.returncode == 0 and "4 cells; 0 to run, 4 done" in res.stdout and "started" not in res.stdout
    assert before == {c.name: (state.cell_dir(out, c) / "summary.json").stat().st_mtime_ns for c in table.cells}
    assert all(len(state.attempts(state.cell_dir(out, c))) == 1 for c in table.cells)
    printed = sweep(str(root / "tiny.yaml"), "--out", str(out), "--launcher", "print")
    assert printed.returncode == 0 and "dytrim train" not in printed.stdout


def _wait_for_checkpoint(d: Path, proc: subprocess.Popen) -> bool:
    while proc.poll() is None:
        if state.newest_step(d) is not None and (holder := state.runlock.is_held(d)) and holder.startswith("pid "):
            return True
        time.sleep(0.05)
    return False


def _interrupted(root: Path, tmp_path: Path, prefix: str, interrupt, wanted_rc: int, **popen) -> tuple[Path, str, int]:
    """Run the `one` table's sweep and `interrupt(proc, cell_dir)` it once the cell holds a checkpoint, up to three
    times (the tiny run may end first); -> (cell dir, the sweep's output, its exit code) of the first attempt whose
    trainer (wanted_rc 143) or sweep (wanted_rc -SIGKILL) ended with `wanted_rc`."""
    cell = load_table(root / "one.yaml").cells[0]
    for attempt in range(3):
        out = tmp_path / f"{prefix}{attempt}"
        proc = subprocess.Popen([sys.executable, "-m", "dytrim", "sweep", str(root / "one.yaml"), "--out", str(out),
                                 "--threads", "1"], env=ENV, text=True, **popen)
        d = state.cell_dir(out, cell)
        if _wait_for_checkpoint(d, proc):
            interrupt(proc, d)
        text, _err = proc.communicate(timeout=900)
        rc = [a["rc"] for a in state.attempts(d)][:1] if wanted_rc == 143 else [proc.returncode]
        if rc == [wanted_rc]:
            return d, text or "", proc.returncode
    pytest.fail("the run finished before the interruption three times")


def test_preemption_signal_requeues_and_resumes_exactly(swept, tmp_path) -> None:
    root, out = swept
    straight = state.cell_dir(out, load_table(root / "one.yaml").cells[0])  # the same spec, run uninterrupted above
    assert straight.is_dir()

    def warn(proc: subprocess.Popen, d: Path) -> None:  # a scheduler's warning signal, to the trainer (the task)
        os.kill(int(state.runlock.is_held(d).split()[1]), signal.SIGUSR2)

    d, text, rc = _interrupted(root, tmp_path, "pre", warn, 143, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert rc == 0, text[-3000:]
    assert [a["rc"] for a in state.attempts(d)] == [143, 0]
    assert "stopped with a checkpoint (exit 143); requeued" in text and "--resume" in text
    assert state.classify(d).state == "done"
    assert metrics(d) == metrics(straight)  # bit-identical to the uninterrupted run


def test_sigterm_to_the_sweep_stops_its_cells_once_with_a_checkpoint(swept, tmp_path) -> None:
    """The sweep forwards one SIGTERM per cell (a second one, while the trainer exits, would kill it by signal and
    mark a cleanly stopped cell failed); the next command resumes it bit for bit."""
    root, out = swept

    def stop_sweep(proc: subprocess.Popen, d: Path) -> None:
        proc.send_signal(signal.SIGTERM)

    d, text, rc = _interrupted(root, tmp_path, "term", stop_sweep, 143, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    assert rc == 143 and "SIGTERM received; the cells stopped with a checkpoint" in text, text[-3000:]
    assert [a["rc"] for a in state.attempts(d)] == [143] and state.classify(d).state == "resumable"
    res = sweep(str(root / "one.yaml"), "--out", str(d.parent.parent), "--threads", "1")
    assert res.returncode == 0 and "--resume" in res.stdout, res.stdout[-3000:]
    assert metrics(d) == metrics(state.cell_dir(out, load_table(root / "one.yaml").cells[0]))


def test_sigkilled_sweep_is_resumed_by_the_next_command(swept, tmp_path) -> None:
    root, out = swept
    cell = load_table(root / "one.yaml").cells[0]

    def lose_node(proc: subprocess.Popen, d: Path) -> None:  # the sweep and its trainer: no checkpoint at exit
        os.killpg(proc.pid, signal.SIGKILL)

    d, _, _ = _interrupted(root, tmp_path, "kill", lose_node, -signal.SIGKILL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 30
    while state.classify(d).state == "running" and time.time() < deadline:  # the kernel drops the dead's lock
        time.sleep(0.1)
    assert state.classify(d).state == "resumable"
    res = sweep(str(root / "one.yaml"), "--out", str(d.parent.parent), "--threads", "1")
    assert res.returncode == 0, res.stdout[-3000:]
    assert "1 cells; 1 to run" in res.stdout and "--resume" in res.stdout
    assert metrics(d) == metrics(state.cell_dir(out, cell))


FAKE = {
    "sbatch": 'n=$(ls "$FAKE_SLURM"/script*.sh 2>/dev/null | wc -l); cp "$1" "$FAKE_SLURM/script$n.sh"; '
              'echo "Submitted batch job 424$n"',
    "srun": "exit 0",
    "squeue": 'cat "$FAKE_SLURM/queue" 2>/dev/null; exit 0',
    "sacct": "exit 0",
    "scancel": 'echo "$@" >> "$FAKE_SLURM/scancel.log"',
}


def test_slurm_job_array_with_fake_slurm(swept, tmp_path) -> None:
    root, _ = swept
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in FAKE.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = ENV | {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_SLURM": str(tmp_path)}
    env.pop("SUBMITIT_PREEMPT_SIGNAL", None)
    out = tmp_path / "out"
    args = [str(root / "tiny.yaml"), "--out", str(out), "--launcher", "slurm", "--partition", "gpu", "--account",
            "lab", "--time", "90", "--gpus-per-cell", "2", "--array-parallelism", "3", "--signal-delay", "240",
            "--setup", "module load cuda"]
    dry = sweep(*args, "--dry-run", env=env)
    assert dry.returncode == 0 and "#SBATCH --array=0-3%3" in dry.stdout and not list(tmp_path.glob("script*.sh"))
    res = sweep(*args, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    script = (tmp_path / "script0.sh").read_text()
    for line in ("#SBATCH --array=0-3%3", "#SBATCH --partition=gpu", "#SBATCH --account=lab", "#SBATCH --time=90",
                 "#SBATCH --gpus-per-node=2", "#SBATCH --signal=TERM@240", "#SBATCH --requeue",
                 "#SBATCH --open-mode=append", "module load cuda", "export SUBMITIT_PREEMPT_SIGNAL=TERM"):
        assert line in script.splitlines(), line
    assert "srun --unbuffered" in script and "-m submitit.core._submit" in script
    table = load_table(root / "tiny.yaml")
    jobs = [json.loads((state.cell_dir(out, c) / "launcher.json").read_text())["job"] for c in table.cells]
    assert jobs == [f"4240_{i}" for i in range(4)]
    # what each array task unpickles and runs: a RunCell of its cell (paths only), under torchrun for 2 GPUs
    pickles = sorted(out.glob("submitit/4240_*/4240_*_submitted.pkl"))
    assert len(pickles) == 4
    task = pickle.loads(pickles[0].read_bytes()).function
    assert task.dir == state.cell_dir(out, table.cells[0]).resolve() and "torch.distributed.run" in task.command()
    assert task.checkpoint().function.cell == task.cell  # a requeue runs the same cell again
    # queued jobs are not submitted twice; --cancel marks the cells and scancels their jobs, and no requeue follows
    (tmp_path / "queue").write_text("\n".join(jobs) + "\n")
    again = sweep(*args, env=env)
    assert again.returncode == 0 and "4 cells still queued on Slurm" in again.stdout
    assert not (tmp_path / "script1.sh").exists()
    cancel = sweep(str(root / "tiny.yaml"), "--out", str(out), "--cancel", env=env)
    assert cancel.returncode == 0 and "cancelled 4 cells" in cancel.stdout
    assert (tmp_path / "scancel.log").read_text().split() == jobs
    assert task.checkpoint() is None
    status = sweep(str(root / "tiny.yaml"), "--out", str(out), "--status", env=env)
    assert status.stdout.strip().endswith("4 cells: 4 cancelled")


def test_submitit_requeue_protocol_resumes_exactly(swept, tmp_path, monkeypatch) -> None:
    """The Slurm task's protocol, run by submitit's LocalExecutor: the task gets the preemption signal (SIGTERM,
    SUBMITIT_PREEMPT_SIGNAL=TERM), RunCell.checkpoint lets the trainer checkpoint (exit 143) and returns a fresh
    RunCell, submitit requeues the task, and the restarted task resumes to the uninterrupted run's result."""
    submitit = pytest.importorskip("submitit")
    from dytrim.sweep.slurm import RunCell

    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "TERM")  # read by submitit in the task process
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    root, out = swept
    table = load_table(root / "one.yaml")
    cell = table.cells[0]
    for attempt in range(3):
        out5 = tmp_path / f"sub{attempt}"
        state.write_specs(out5, table)
        d = state.cell_dir(out5, cell)
        ex = submitit.LocalExecutor(folder=str(tmp_path / f"submitit{attempt}"), max_num_timeout=3)
        ex.update_parameters(timeout_min=30, signal_delay_s=30)
        job = ex.submit(RunCell(cell, str(out5), 1, ("train.threads=1",)))
        controller = job._process
        if _wait_for_checkpoint(d, controller):
            children = Path(f"/proc/{controller.pid}/task/{controller.pid}/children").read_text().split()
            os.kill(int(children[0]), signal.SIGTERM)  # the task (RunCell's process), not the trainer
        deadline = time.time() + 900
        while not job.done() and time.time() < deadline:
            time.sleep(0.5)
        if [a["rc"] for a in state.attempts(d)][:1] == [143]:
            break
    else:
        pytest.fail("the run finished before the signal three times")
    assert job.result() == "done"
    assert [a["rc"] for a in state.attempts(d)] == [143, 0]
    assert "Requeued job" in job.stderr() or "Requeued job" in (job.stdout() or "")
    assert metrics(d) == metrics(state.cell_dir(out, cell))


def test_cancel_stops_a_running_local_cell_without_requeue(tables, tmp_path, capsys) -> None:
    from dytrim import cli

    root = tables
    longer = ["--set", "train.steps=2000"]  # a long run to cancel (its own cell: the length names the cell)
    cell = load_table(root / "one.yaml", ["train.steps=2000"]).cells[0]
    out6 = tmp_path / "cancel"
    proc = subprocess.Popen([sys.executable, "-m", "dytrim", "sweep", str(root / "one.yaml"), "--out", str(out6),
                             "--threads", "1", *longer], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    d = state.cell_dir(out6, cell)
    assert _wait_for_checkpoint(d, proc)
    assert cli.main(["sweep", str(root / "one.yaml"), "--out", str(out6), *longer, "--cancel"]) == 0
    assert "cancelled 1 cells (1 running here stopped with a checkpoint" in capsys.readouterr().out
    text, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, text[-2000:]
    assert [a["rc"] for a in state.attempts(d)] == [143] and "requeued" not in text
    assert state.classify(d).state == "cancelled" and state.newest_step(d) is not None
