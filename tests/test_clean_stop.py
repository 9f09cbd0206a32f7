"""Clean stops: SIGTERM (a scheduler's preemption) or Ctrl-C at a random moment writes a checkpoint at the
next step boundary, prints one line naming the step and the resume command, exits 143 / 130, and the resumed
run ends bit-identical to an uninterrupted one; under torchrun every rank stops at the same step."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dytrim.engine.checkpoint import checkpoint_paths
from dytrim.engine.runlog import read_rows

pytestmark = pytest.mark.slow  # trains or runs the CLI end to end (see pyproject.toml)

COMMON = ["--preset", "mnist-lt-fixmatch", "--set", "debias.methods=cdmad,dytrim", "--set", "debias.start=16",
          "--set", "train.steps=96", "--set", "train.eval_every=8", "--set", "train.progress=false",
          "--set", "train.threads=1",
       "--set", "train.device=cpu"]  # gloo on CPU, also on a GPU machine
ENV = os.environ | {"OMP_NUM_THREADS": "1"}
DDP = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port"]


def _metrics(run: Path) -> list[dict]:
    volatile = {"wall_s", "images_per_s"}
    return [{k: v for k, v in r.items() if k not in volatile} for r in read_rows(run / "metrics.jsonl")]


def _stop_at_random(cmd: list[str], run: Path, sig: int, pid_of=None) -> tuple[int, str]:
    """Start `cmd`, wait for its first checkpoint, send `sig` at a random later moment; (exit code, stderr)."""
    for attempt in range(3):  # the signal must land before the run ends
        subprocess.run(["rm", "-rf", str(run)], check=True)
        proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        while not checkpoint_paths(run) and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(random.uniform(0.0, 2.0 / (attempt + 1)))
        os.kill(proc.pid, sig)
        _, err = proc.communicate(timeout=300)
        if not (run / "summary.json").exists():
            return proc.returncode, err
    raise AssertionError("the run finished before the signal three times")


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("straight") / "run"
    res = subprocess.run([sys.executable, "-m", "dytrim", "train", *COMMON, "--out", str(run)], env=ENV,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    return run


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_signal_checkpoints_then_resume_is_bitwise_identical(straight, tmp_path, sig, code) -> None:
    run = tmp_path / "stopped"
    rc, err = _stop_at_random([sys.executable, "-m", "dytrim", "train", *COMMON, "--out", str(run)], run, sig)
    assert rc == code, err[-2000:]
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    m = re.fullmatch(rf"dytrim: stopped at step (\d+); continue with: dytrim train --resume {re.escape(str(run))}",
                     last)
    assert m, err
    step = int(m.group(1))
    assert checkpoint_paths(run)[0].name == f"ckpt_{step:08d}.pt"  # the checkpoint is of the step it stopped at
    assert not list(run.glob(".*.tmp"))
    res = subprocess.run([sys.executable, "-m", "dytrim", "train", "--resume", str(run)], env=ENV,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"from ckpt_{step:08d}.pt (step {step} of 96)" in res.stderr
    assert _metrics(run) == _metrics(straight), f"stopped at step {step}"


def test_sigterm_under_torchrun_stops_every_rank_at_one_step_and_resumes_identically(tmp_path) -> None:
    """SIGTERM to the launcher (as a scheduler sends it): torchrun forwards it to both ranks, which agree on
    the step through a collective, checkpoint both RNG states, and the resumed 2-process run equals an
    uninterrupted 2-process run bit for bit."""
    cfg = [*COMMON, "--set", "train.steps=48"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    res = subprocess.run([*DDP, "29531", "-m", "dytrim", "train", *cfg, "--out", str(straight)], env=ENV,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    _, err = _stop_at_random([*DDP, "29532", "-m", "dytrim", "train", *cfg, "--out", str(stopped)], stopped,
                             signal.SIGTERM)
    m = re.search(r"dytrim: stopped at step (\d+); continue with", err)
    assert m, err[-3000:]
    step = int(m.group(1))
    state = torch.load(checkpoint_paths(stopped)[0], weights_only=True)
    assert state["step"] == step and len(state["rng_ranks"]) == 2  # both ranks' states, one step
    res = subprocess.run([*DDP, "29533", "-m", "dytrim", "train", "--resume", str(stopped)], env=ENV,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert _metrics(stopped) == _metrics(straight), f"stopped at step {step}"
