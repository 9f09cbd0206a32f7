"""A non-finite loss stops the run with the step named and keeps the last good checkpoint."""

from __future__ import annotations

import pytest
import torch

from dytrim.config import load_config
from dytrim.engine.checkpoint import checkpoint_paths, load_latest
from dytrim.engine.hooks import Component
from dytrim.engine.loop import TrainingDiverged
from dytrim.factory import build_trainer


class PoisonAt(Component):
    """Turns the supervised logits into NaN from a given step on (a stand-in for a diverging run)."""

    name = "poison"

    def __init__(self, step: int) -> None:
        self.at = step

    def train_logits(self, logits: torch.Tensor, labeled: bool, step: int) -> torch.Tensor:
        return logits * float("nan") if step >= self.at else logits


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path) -> None:
    cfg = load_config("mnist-lt-fixmatch", ["train.steps=20", "train.eval_every=5", "train.progress=false"])
    trainer = build_trainer(cfg, tmp_path, extra_components=[PoisonAt(12)])
    with pytest.raises(TrainingDiverged, match="at step 12"):
        trainer.fit()
    assert [p.name for p in checkpoint_paths(tmp_path)] == ["ckpt_00000010.pt", "ckpt_00000005.pt"]
    state, _ = load_latest(tmp_path)
    assert state["step"] == 10
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not list(tmp_path.glob("*.tmp"))
