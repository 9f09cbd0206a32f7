"""Stages (engine/stages.py) with cRT as the stage: the switch (EMA weights, fresh head, frozen backbone whose BN
statistics still move, the stage's optimiser), rows and summary per stage, and exact resume across and inside a
stage: in process, after SIGTERM and SIGKILL of `dytrim train`, and with two processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from dytrim.cli import main
from dytrim.config import load_config
from dytrim.engine.checkpoint import save_checkpoint
from dytrim.engine.hooks import Component
from dytrim.engine.runlog import read_rows
from dytrim.engine.stages import Stage
from dytrim.factory import build_trainer

SETS = ["debias.methods=crt", "train.steps=6", "crt.steps=6", "train.eval_every=3", "train.batch_size=8",
        "train.uratio=2", "data.eval_subset=50", "train.progress=false", "train.threads=1", "train.device=cpu"]
ENV = os.environ | {"OMP_NUM_THREADS": "1"}


def _trainer(out: Path, *sets: str, resume: bool = False):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_trainer(load_config("mnist-lt-fixmatch", [*SETS, *sets]), out, resume=resume)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _metrics(run: Path) -> list[dict]:
    volatile = {"wall_s", "images_per_s"}
    return [{k: v for k, v in r.items() if k not in volatile} for r in read_rows(run / "metrics.jsonl")]


def test_the_switch_starts_from_the_ema_freezes_the_backbone_and_moves_its_bn_statistics(tmp_path) -> None:
    t = _trainer(tmp_path / "r")
    assert (t.plan.bounds, t.plan.total, t.plan.name) == ([0, 6, 12], 12, "main")
    assert t.active == []  # cRT's hooks run only in its own stage
    for _ in range(6):
        t.train_step()
    ema = _state(t.ema.model)
    t.train_step()  # the first step of the stage
    assert (t.plan.index, t.plan.name, t.step) == (1, "crt", 7)
    after = _state(t.model)
    frozen = [k for k, _ in t.model.named_parameters() if not k.startswith("head.")]
    assert frozen and all(torch.equal(after[k], ema[k]) for k in frozen)  # the EMA weights, untouched by the step
    assert all(not p.requires_grad for n, p in t.model.named_parameters() if not n.startswith("head."))
    bn = [k for k in after if k.endswith("running_mean")]
    assert bn and any(not torch.equal(after[k], ema[k]) for k in bn)  # train mode: BN statistics still move
    assert not torch.equal(after["head.weight"], ema["head.weight"])  # a fresh head, trained
    assert isinstance(t.optimizer, torch.optim.Adam)
    assert {id(p) for g in t.optimizer.param_groups for p in g["params"]} == {id(p) for p in t.model.head.parameters()}
    assert t.optimizer.param_groups[0]["lr"] == 0.002 and t.optimizer.param_groups[0]["weight_decay"] == 0
    assert all(torch.equal(a, b) for a, b in zip(t.ema.model.state_dict().values(), t.model.state_dict().values(),
                                                  strict=True))  # the EMA model is the student in this stage


def test_rows_name_their_stage_and_the_summary_is_the_last_stages(tmp_path) -> None:
    out = tmp_path / "r"
    summary = _trainer(out).fit()
    rows = read_rows(out / "metrics.jsonl")
    assert [(r["step"], r["stage"]) for r in rows] == [(3, "main"), (6, "main"), (9, "crt"), (12, "crt")]
    assert summary["steps"] == 12 and summary["stages"] == {"main": 6, "crt": 6}
    assert summary["bacc"]["last"] == rows[-1]["bacc"]
    assert summary["bacc"]["best"] == max(r["bacc"] for r in rows[2:])  # over the stage's evaluations only
    assert all(r["lr"] == 0.002 for r in rows[2:])
    from dytrim.report.runs import read_run

    record = read_run(out)  # the report reads the summary as the run's (the last stage's), not as stale
    assert record.summary and not any("does not match" in n for n in record.notes)
    from dytrim.engine.runlog import stage_starts

    assert stage_starts(summary["stages"]) == [(6, "crt")]  # the marker of the curves (curves.png, the report)
    assert (out / "curves.png").stat().st_size > 0
    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0


def resumed_against_straight(trainer, tmp_path: Path, stop_at: int) -> tuple:
    """(resumed, straight): a run trained to `stop_at`, checkpointed, resumed in a new Trainer and trained to its
    end, and the same run uninterrupted; `trainer(out, resume=...)` builds either. Asserts the resume restored
    everything compared at the stop and equals the uninterrupted run at the end (weights, state, samplers)."""
    straight = trainer(tmp_path / "a")
    while straight.step < straight.plan.total:
        straight.train_step()
    first = trainer(tmp_path / "b")
    for _ in range(stop_at):
        first.train_step()
    (tmp_path / "b").mkdir()
    save_checkpoint(tmp_path / "b", first.step, first.state_dict(), 2)
    resumed = trainer(tmp_path / "b", resume=True)
    assert resumed.restore() is not None and resumed.step == stop_at
    assert resumed.plan.index == first.plan.index and resumed._fingerprint() == first._fingerprint()
    while resumed.step < resumed.plan.total:
        resumed.train_step()
    assert resumed._fingerprint() == straight._fingerprint()
    for a, b in zip(resumed.ema.model.state_dict().values(), straight.ema.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    return resumed, straight


@pytest.mark.parametrize("stop_at", [6, 8], ids=["at-the-switch", "inside-the-stage"])
def test_a_resumed_run_equals_one_uninterrupted(tmp_path, stop_at: int) -> None:
    resumed_against_straight(_trainer, tmp_path, stop_at)


def test_the_main_stage_cannot_change_length_once_past_it(tmp_path, capsys) -> None:
    out = tmp_path / "r"
    _trainer(out).fit()  # a finished two-stage run: its last checkpoint is inside (at the end of) the stage
    assert main(["train", "--resume", str(out), "--set", "train.steps=12"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len([x for x in err if x.startswith("dytrim: error: ")]) == 1, err
    assert "train.steps: the run is in its stage 'crt' (after the main stage's 6 steps)" in err[-1], err


def _cli(*args: str) -> list[str]:
    sets = [x for s in SETS for x in ("--set", s)]
    return [sys.executable, "-m", "dytrim", "train", "--preset", "mnist-lt-fixmatch", *sets, *args]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_signal_inside_the_stage_then_resume_is_bitwise_identical(tmp_path, sig: signal.Signals) -> None:
    longer = ["--set", "crt.steps=60", "--set", "train.ckpt_every=1"]  # a long stage, a checkpoint at every step
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert subprocess.run(_cli(*longer, "--out", str(straight)), env=ENV, capture_output=True).returncode == 0
    proc = subprocess.Popen(_cli(*longer, "--out", str(stopped)), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # wait for a checkpoint inside the stage
        if any(int(p.stem.split("_")[1]) > 8 for p in stopped.glob("ckpt_*.pt")):
            break
        time.sleep(0.05)
    proc.send_signal(sig)
    rc = proc.wait(timeout=120)
    assert not (stopped / "summary.json").exists(), "the run ended before the signal"
    assert rc == (143 if sig == signal.SIGTERM else -signal.SIGKILL), proc.stderr.read()[-2000:]
    res = subprocess.run([sys.executable, "-m", "dytrim", "train", "--resume", str(stopped)], env=ENV,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert _metrics(stopped) == _metrics(straight)


def two_process_stop_and_resume(tmp_path: Path, preset: str, sets: list[str], port: int, after: int = 8) -> tuple:
    """(straight, stopped) run directories of a 2-process torchrun run of `preset` with `sets`: one uninterrupted,
    one sent SIGTERM once it has a checkpoint past step `after`, then resumed (`port`, port + 1, port + 2)."""
    def torchrun(*args: str, port: int) -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
                "-m", "dytrim", "train", *args]

    flags = [x for s in sets for x in ("--set", s)]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    res = subprocess.run(torchrun("--preset", preset, *flags, "--out", str(straight), port=port), env=ENV,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    proc = subprocess.Popen(torchrun("--preset", preset, *flags, "--out", str(stopped), port=port + 1), env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if any(int(p.stem.split("_")[1]) > after for p in stopped.glob("ckpt_*.pt")):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # torchrun passes it to both workers: each stops at a step boundary
    proc.wait(timeout=120)
    assert not (stopped / "summary.json").exists(), "the run ended before the signal"
    res = subprocess.run(torchrun("--resume", str(stopped), port=port + 2), env=ENV, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return straight, stopped


@pytest.mark.slow
def test_two_processes_resume_inside_the_stage_exactly(tmp_path) -> None:
    straight, stopped = two_process_stop_and_resume(tmp_path, "mnist-lt-fixmatch",
                                                    [*SETS, "crt.steps=40", "train.ckpt_every=1"], 29561)
    rows = read_rows(straight / "metrics.jsonl")
    assert all(r["ranks_in_sync"] for r in rows) and {r["stage"] for r in rows} == {"main", "crt"}
    assert _metrics(stopped) == _metrics(straight)


class _SecondPhase(Component):
    """A test component (no registration) that declares a stage with the other options: from the student as it is,
    every parameter trained, the SSL base and its unlabeled batches, the usual EMA teacher."""

    name = "second_phase"

    def stages(self) -> list[Stage]:
        return [Stage("phase2", 3, lr=0.001, unlabeled=True)]


def test_a_stage_that_keeps_the_student_trains_everything_and_reads_unlabeled_data(tmp_path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = load_config("mnist-lt-fixmatch", [*[s for s in SETS if not s.startswith("debias.methods")]])
        t = build_trainer(cfg, tmp_path / "r", extra_components=[_SecondPhase()])
    for _ in range(6):
        t.train_step()
    student = _state(t.model)
    stats = t.train_step()
    assert t.plan.name == "phase2" and "loss_u" in stats and stats["lr"] == 0.001
    assert all(p.requires_grad for p in t.model.parameters())
    assert {id(p) for g in t.optimizer.param_groups for p in g["params"]} == {id(p) for p in t.model.parameters()}
    assert not torch.equal(_state(t.model)["head.weight"], student["head.weight"])  # trained on from the student
    ema, now = t.ema.model.state_dict(), t.model.state_dict()
    assert not torch.equal(ema["head.weight"], now["head.weight"])  # the EMA teacher still averages
