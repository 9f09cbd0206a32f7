"""EMA (with the reference decay quirk), LR schedules, the sampler, atomic checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dytrim.config import OptimConfig
from dytrim.engine.checkpoint import checkpoint_paths, load_latest, save_checkpoint
from dytrim.engine.ema import EMATeacher
from dytrim.engine.optim import lr_at
from dytrim.engine.sampler import EpochSampler


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))


def test_ema_update_and_reference_decay() -> None:
    model = _net()
    ema = EMATeacher(model, decay=0.9)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.add_(2.0)
    ema.update(model, decoupled_wd=0.01)
    e = ema.state_dict()
    assert torch.allclose(e["0.weight"], 0.9 * before["0.weight"] + 0.1 * (before["0.weight"] + 1))
    assert torch.allclose(e["1.running_mean"], 0.9 * before["1.running_mean"] + 0.1 * (before["1.running_mean"] + 2))
    # the student (params AND BN buffers) is decayed after the EMA step: x *= 1 - 0.01
    assert torch.allclose(model[0].weight, 0.99 * (before["0.weight"] + 1))
    assert torch.allclose(model[1].running_mean, 0.99 * (before["1.running_mean"] + 2))
    assert model[1].num_batches_tracked.item() == before["1.num_batches_tracked"].item()


def test_ema_copy_buffers() -> None:
    model = _net()
    ema = EMATeacher(model, decay=0.9, buffers="copy")
    with torch.no_grad():
        model[1].running_var.mul_(5.0)
    ema.update(model)
    assert torch.equal(ema.state_dict()["1.running_var"], model[1].running_var)


def test_lr_schedules() -> None:
    c = OptimConfig(lr=0.03, schedule="cosine")
    assert lr_at(0, 1000, c) == pytest.approx(0.03)
    assert lr_at(1000, 1000, c) == pytest.approx(0.03 * math.cos(7 * math.pi / 16))
    assert lr_at(500, 1000, c) == pytest.approx(0.03 * math.cos(7 * math.pi * 500 / 16000))
    w = OptimConfig(lr=0.1, schedule="constant", warmup_steps=10)
    assert lr_at(0, 100, w) == pytest.approx(0.01) and lr_at(9, 100, w) == pytest.approx(0.1)
    assert lr_at(50, 100, w) == 0.1


def test_sampler_passes_drop_last_and_resume() -> None:
    s = EpochSampler(10, 4, seed=3)
    first = [s.next() for _ in range(2)]
    seen = torch.cat(first)
    assert len(set(seen.tolist())) == 8  # one pass: no repeats, last 2 dropped
    state = s.state_dict()
    a = [s.next().tolist() for _ in range(5)]
    t = EpochSampler(10, 4, seed=99)
    t.load_state_dict(state)
    assert [t.next().tolist() for _ in range(5)] == a
    assert s.epoch == 4  # 2 batches per pass: passes 2, 3 and 4 started during the 5 draws
    tiny = EpochSampler(3, 8, seed=0)  # pool smaller than a batch: repeated
    assert len(tiny.next()) == 8


def test_checkpoints_atomic_keep_last_and_fallback(tmp_path) -> None:
    for step in (10, 20, 30):
        save_checkpoint(tmp_path, step, {"step": step, "x": torch.ones(3) * step}, keep=2)
    assert [p.name for p in checkpoint_paths(tmp_path)] == ["ckpt_00000030.pt", "ckpt_00000020.pt"]
    assert not list(tmp_path.glob("*.tmp"))
    state, path = load_latest(tmp_path)
    assert state["step"] == 30
    # truncate the newest: it is reported and the previous one is used
    newest = checkpoint_paths(tmp_path)[0]
    newest.write_bytes(newest.read_bytes()[:100])
    with pytest.warns(UserWarning, match="unreadable"):
        state, path = load_latest(tmp_path)
    assert state["step"] == 20 and path.name == "ckpt_00000020.pt"
