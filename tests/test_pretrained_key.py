"""`model.pretrained`: a local weights file is loaded into the fresh model before training, what was loaded is
recorded in run.json, and a missing or non-matching file stops before training naming the key."""

from __future__ import annotations

import json

import pytest
import torch

from dytrim.cli import main
from dytrim.config import load_config
from dytrim.factory import build_trainer
from dytrim.models import create_model

BASE = ["train", "--preset", "mnist-lt-fixmatch", "--set", "train.progress=false"]


def _foreign_weights(path, head_classes: int = 10) -> dict[str, torch.Tensor]:
    torch.manual_seed(12345)  # an init the trainer (seed 0) would never draw
    state = create_model("cnn_small", head_classes, in_channels=1).state_dict()
    torch.save({"ema_model": state, "step": 7}, path)  # wrapped, as checkpoints of other codes are
    return state


def test_weights_are_loaded_into_the_model(tmp_path) -> None:
    weights = tmp_path / "w.pt"
    state = _foreign_weights(weights)
    cfg = load_config("mnist-lt-fixmatch", [f"model.pretrained={weights}", "model.pretrained_key=ema_model"])
    trainer = build_trainer(cfg, tmp_path / "run")
    own = trainer.model.state_dict()
    for name, tensor in state.items():
        assert torch.equal(own[name], tensor), name
    assert trainer.pretrained is not None and trainer.pretrained.clean
    # without the key the plain seeded init stays (the test's weights really differ from it)
    plain = build_trainer(load_config("mnist-lt-fixmatch"), tmp_path / "run2").model.state_dict()
    assert not torch.equal(plain["head.weight"], state["head.weight"])


@pytest.mark.slow
def test_other_head_is_kept_at_init_and_reported(tmp_path) -> None:
    weights = tmp_path / "w.pt"
    state = _foreign_weights(weights, head_classes=7)
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="shape differs"):
        code = main([*BASE, "--set", "train.steps=2", "--set", "train.eval_every=2",
                     "--set", f"model.pretrained={weights}", "--out", str(out)])
    assert code == 0
    meta = json.loads((out / "run.json").read_text())["pretrained"]
    assert any(s.startswith("head.weight") for s in meta["skipped"])
    assert "head.weight" not in meta["loaded"] and len(meta["loaded"]) == len(state) - 2


@pytest.mark.parametrize("kind", ["missing", "no_match"])
def test_bad_weights_stop_before_training(tmp_path, capsys, kind) -> None:
    weights = tmp_path / "w.pt"
    if kind == "no_match":
        torch.save({"something.else": torch.zeros(3)}, weights)
    out = tmp_path / "run"
    assert main([*BASE, "--set", f"model.pretrained={weights}", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "model.pretrained" in err and str(weights) in err, err
    assert not out.exists()


@pytest.mark.slow
def test_resume_needs_no_weights_file(tmp_path) -> None:
    weights = tmp_path / "w.pt"
    _foreign_weights(weights)
    out = tmp_path / "run"
    args = ["--set", "train.eval_every=2", "--set", "train.steps=2", "--set", f"model.pretrained={weights}"]
    assert main([*BASE, *args, "--out", str(out)]) == 0
    weights.unlink()  # moved or deleted after the start: the checkpoint holds the weights
    assert main(["train", "--resume", str(out), "--set", "train.steps=4"]) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 4


@pytest.mark.slow
def test_exported_run_and_training_checkpoint(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    assert main([*BASE, "--set", "train.steps=2", "--set", "train.eval_every=2", "--out", str(run)]) == 0
    exported = tmp_path / "model.pt"
    assert main(["export", str(run), "--format", "state_dict", "--out", str(exported)]) == 0
    cfg = load_config("mnist-lt-fixmatch", [f"model.pretrained={exported}", "seed=5"])
    trainer = build_trainer(cfg, tmp_path / "b")
    assert trainer.pretrained is not None and trainer.pretrained.clean  # the wrapper's prefix and constants go
    ema = torch.load(next(run.glob("ckpt_*.pt")), weights_only=True)["ema"]
    assert all(torch.equal(trainer.model.state_dict()[k], v) for k, v in ema.items())
    ckpt = next(run.glob("ckpt_*.pt"))  # a training checkpoint is refused with the way out named
    assert main([*BASE, "--set", f"model.pretrained={ckpt}", "--out", str(tmp_path / "c")]) == 2
    assert "dytrim export" in capsys.readouterr().err
