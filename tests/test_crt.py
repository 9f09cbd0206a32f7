"""cRT's rule on identical inputs against a numpy re-derivation of DARP's `train_crt.py` (class weights, input mixup,
the weighted soft loss), and its configuration (baselines-spec.md §3.6)."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from dytrim.config import ConfigError, load_config
from dytrim.debias.crt import CRT, class_weights
from dytrim.engine.hooks import Batch
from dytrim.engine.stages import LabeledOnly
from dytrim.engine.step import StepFunction

GAMMA100 = [1500, 898, 538, 322, 193, 115, 69, 41, 24, 15]  # N1 1500, γ = 100 (make_imb_data)


class _Ctx:
    lb_counts = GAMMA100
    num_classes = 10
    device = torch.device("cpu")


def _cfg(*sets: str):
    return load_config("mnist-lt-fixmatch", ["debias.methods=crt", *sets])


def test_class_weights_equal_the_official_numpy() -> None:
    official = 1 / np.array(GAMMA100)  # train_crt.py: per_cls_weights = 1 / N; / sum * len
    official = official / np.sum(official) * len(GAMMA100)
    np.testing.assert_array_equal(class_weights(GAMMA100, "inverse").numpy(), official.astype(np.float32))
    assert class_weights(GAMMA100, "inverse").sum().item() == pytest.approx(10.0, rel=1e-6)
    assert torch.equal(class_weights(GAMMA100, "none"), torch.ones(10))


def _official_loss(z: np.ndarray, x: np.ndarray, y: np.ndarray, lam: float, perm: np.ndarray) -> tuple:
    """train_crt.py::train on given λ and permutation: the mixed input and Lx = -mean(sum(log_softmax * ỹ * w))."""
    targets = np.eye(10)[y]
    mixed_input = lam * x + (1 - lam) * x[perm]
    mixed_target = lam * targets + (1 - lam) * targets[perm]
    w = 1 / np.array(GAMMA100)
    w = (w / w.sum() * 10).reshape(1, -1)
    log_p = z - z.max(1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(1, keepdims=True))
    return mixed_input, -np.mean(np.sum(log_p * mixed_target * w, axis=1))


def test_mixed_batch_and_weighted_loss_equal_the_official_formulas() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 1, 4, 4)).astype(np.float32)
    y = rng.integers(0, 10, size=16)
    comp = CRT(_cfg(), _Ctx())
    # the same draws, re-made from a generator of the same seed: λ = max(λ, 1 − λ) of Beta(0.75, 0.75), then perm
    twin = np.random.Generator(np.random.PCG64(0 * 1_000_003 + zlib.crc32(b"crt")))
    lam = float(twin.beta(0.75, 0.75))
    lam, perm = max(lam, 1 - lam), twin.permutation(16)
    batch = Batch(lb_pos=torch.arange(16), x_lb=torch.from_numpy(x.copy()), y_lb=torch.from_numpy(y),
                  w_lb=torch.ones(16))
    comp.transform_labeled(batch, 0)
    z = rng.normal(size=(16, 10)).astype(np.float32)
    mixed_input, official = _official_loss(z.astype(np.float64), x.astype(np.float64), y, lam, perm)
    np.testing.assert_allclose(batch.x_lb.numpy(), mixed_input, rtol=1e-6, atol=1e-6)
    step = StepFunction(LabeledOnly(), [comp], 10, 1.0, ce_eps=0.0)  # the stage's step function, exact CE
    ours = step.supervised_loss(torch.from_numpy(z), batch.y_lb, 0, batch.t_lb).mean().item()
    assert ours == pytest.approx(official, rel=1e-5)
    assert 0.5 <= lam <= 1.0


def test_no_mixup_keeps_the_batch_and_the_state_round_trips() -> None:
    comp = CRT(_cfg("crt.mix_alpha=0"), _Ctx())
    x = torch.randn(8, 1, 4, 4)
    batch = Batch(lb_pos=torch.arange(8), x_lb=x.clone(), y_lb=torch.arange(8) % 10, w_lb=torch.ones(8))
    comp.transform_labeled(batch, 0)
    assert torch.equal(batch.x_lb, x)  # λ = 1
    a, b = CRT(_cfg(), _Ctx()), CRT(_cfg(), _Ctx())
    a.draw(8)
    b.load_state_dict(a.state_dict())
    la, pa = a.draw(8)
    lb, pb = b.draw(8)
    assert la == lb and torch.equal(pa, pb)


def test_config_is_checked_and_the_stage_is_declared() -> None:
    for bad, key in (("crt.steps=0", "crt.steps"), ("crt.lr=0", "crt.lr"), ("crt.mix_alpha=-1", "crt.mix_alpha"),
                     ("crt.weights=sqrt", "crt.weights")):
        with pytest.raises(ConfigError, match=rf"^{key}"):
            _cfg(bad)
    (stage,) = CRT(_cfg("crt.steps=7"), _Ctx()).stages()
    assert (stage.name, stage.steps, stage.start_from, stage.new_head, stage.trains, stage.lr, stage.unlabeled,
            stage.ema) == ("crt", 7, "ema", True, "head", 0.002, False, "student")
