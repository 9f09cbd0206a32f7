"""Crash safety: a run killed with SIGKILL at a random moment resumes to bitwise-identical metrics."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from dytrim.engine.runlog import read_rows

COMMON = ["--preset", "mnist-lt-fixmatch", "--set", "debias.methods=cdmad,dytrim", "--set", "debias.start=16",
          "--set", "train.steps=96", "--set", "train.eval_every=8", "--set", "train.progress=false",
          "--set", "train.threads=1",
       "--set", "train.device=cpu"]  # the CPU path, also on a GPU machine


def _train(*args: str) -> subprocess.Popen:
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "dytrim", "train", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _metrics(run) -> list[dict]:
    volatile = {"wall_s", "images_per_s"}
    return [{k: v for k, v in r.items() if k not in volatile} for r in read_rows(run / "metrics.jsonl")]


@pytest.mark.slow
def test_sigkill_at_random_step_then_resume_is_bitwise_identical(tmp_path) -> None:
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    assert _train(*COMMON, "--out", str(straight)).wait(timeout=600) == 0
    rng = random.Random()
    for attempt in range(3):  # the kill must land before the run ends
        if crashed.exists():
            subprocess.run(["rm", "-rf", str(crashed)], check=True)
        proc = _train(*COMMON, "--out", str(crashed))
        while not list(crashed.glob("ckpt_*.pt")) and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 2.0 / (attempt + 1)))
        proc.send_signal(signal.SIGKILL)
        if proc.wait(timeout=60) == -signal.SIGKILL and not (crashed / "summary.json").exists():
            break
    else:
        raise AssertionError("the run finished before it could be killed three times")
    killed_at = max(r["step"] for r in read_rows(crashed / "metrics.jsonl"))
    res = subprocess.run([sys.executable, "-m", "dytrim", "train", "--resume", str(crashed)],
                         capture_output=True, text=True, timeout=600, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert _metrics(crashed) == _metrics(straight), f"killed after step {killed_at}"
    summary = json.loads((crashed / "summary.json").read_text())
    assert summary["steps"] == 96


def test_torn_metrics_line_is_dropped(tmp_path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"ste')
    assert read_rows(path) == [{"step": 1}, {"step": 2}]
