"""DASO: each rule equals its official code on identical inputs (baselines-spec.md §11.6). Expected values are
computed here in plain numpy / plain Python from the official formulas (ytaek-oh/daso `daso_model.py`,
`feature_queue.py`, `dist_logger.py`), never by the library."""

from __future__ import annotations

import copy
import io
from collections import deque
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dytrim.config import ConfigError, load_config
from dytrim.debias.daso import DASO
from dytrim.debias.daso_parts import ClassQueues
from dytrim.engine.checkpoint import load_latest, save_checkpoint
from dytrim.engine.hooks import Batch, Views
from dytrim.engine.step import StepFunction
from dytrim.factory import build_trainer
from dytrim.ssl.base import create_ssl

C, F_DIM = 4, 6


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def _cos_over_t(f: np.ndarray, protos: np.ndarray, t: float) -> np.ndarray:
    """cos(f_b, proto_c) / t, 0 against a zero prototype (torch's eps 1e-8 on the norms)."""
    f, protos = f.astype(np.float64), protos.astype(np.float64)
    norms = np.maximum(np.linalg.norm(f, axis=1)[:, None], 1e-8) * np.maximum(np.linalg.norm(protos, axis=1), 1e-8)
    return (f @ protos.T) / norms / t


class _Net(nn.Module):
    """A tiny backbone with BN and `forward_features`, as the EMA model is used."""

    num_features = F_DIM

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(1, F_DIM, 3, padding=1), nn.BatchNorm2d(F_DIM)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)).relu().mean(dim=(2, 3))


class _Ctx:
    """The RunContext fields DASO reads."""

    def __init__(self, num_classes: int = C) -> None:
        self.num_classes, self.device, self.seed = num_classes, torch.device("cpu"), 0
        torch.manual_seed(0)
        self.model = _Net()
        self.ema_model = copy.deepcopy(self.model).eval()
        self.gather = lambda t: t


def _cfg(*sets: str):
    return load_config("mnist-lt-fixmatch", ["debias.methods=daso", *sets])


def _daso(*sets: str, ctx: _Ctx | None = None) -> DASO:
    return DASO(_cfg("daso.warm=5", "daso.pl_period=5", *sets), ctx or _Ctx())


# ---------------------------------------------------------------- s_w, v, p~, targets and mask (§11.1)
def test_semantic_probs_weights_blend_targets_and_mask_equal_the_official_formulas() -> None:
    rng = np.random.default_rng(0)
    f_w = rng.normal(size=(12, F_DIM)).astype(np.float32)
    protos = rng.normal(size=(C, F_DIM)).astype(np.float32)
    protos[3] = 0  # a class not queued yet: zero prototype, cos 0
    z_w = (rng.normal(size=(12, C)) * 4).astype(np.float32)
    z_w[:4, 0] += 12  # confident rows, so the mask has both values
    counts = np.array([700, 250, 40, 10])
    t_proto, t_dist = 0.05, 1.5
    comp = _daso(f"daso.t_dist={t_dist}")
    comp.queue.prototypes = torch.tensor(protos)
    comp.window.counts = torch.tensor(counts)
    targets, mask = comp.pseudo_targets(torch.zeros(12, C), torch.zeros(12), torch.tensor(z_w), torch.arange(12), 5,
                                        feats_w=torch.tensor(f_w))
    # official forward_train, in numpy
    s_w = _softmax(_cos_over_t(f_w, protos, t_proto))
    v = (counts / counts.sum()) ** (1.0 / t_dist)
    v = v / v.sum()
    v = v / v.max()
    p = _softmax(z_w.astype(np.float64))
    w = v[p.argmax(axis=1)][:, None]
    blended = (1 - w) * p + w * s_w
    label, conf = blended.argmax(axis=1), blended.max(axis=1)
    assert (label != p.argmax(axis=1)).any() and 0 < (conf >= 0.95).sum() < 12  # the blend and the mask both bite
    np.testing.assert_array_equal(targets.argmax(-1).numpy(), label)
    np.testing.assert_array_equal(targets.sum(-1).numpy(), np.ones(12))
    np.testing.assert_array_equal(mask.numpy(), (conf >= 0.95).astype(np.float32))
    # the parts, value by value
    from dytrim.debias.daso_parts import blend, dist_weights, semantic_logits

    got_s = torch.softmax(semantic_logits(torch.tensor(f_w), torch.tensor(protos), t_proto), dim=1)
    np.testing.assert_allclose(got_s.numpy(), s_w, rtol=1e-4, atol=1e-6)
    got_v = dist_weights(comp.window.dist(), t_dist)
    np.testing.assert_allclose(got_v.numpy(), v, rtol=1e-5, atol=1e-7)
    got_b = blend(torch.tensor(p, dtype=torch.float32), got_s, got_v[torch.tensor(p.argmax(1))].view(-1, 1))
    np.testing.assert_allclose(got_b.numpy(), blended, rtol=1e-4, atol=1e-6)


def test_a_fixed_blend_weight_when_not_distribution_aware() -> None:
    rng = np.random.default_rng(1)
    f_w, protos, z_w = rng.normal(size=(8, F_DIM)), rng.normal(size=(C, F_DIM)), rng.normal(size=(8, C)) * 3
    comp = _daso("daso.dist_aware=false", "daso.interp_alpha=0.3", "ssl.p_cutoff=0.5")
    comp.queue.prototypes = torch.tensor(protos, dtype=torch.float32)
    comp.window.counts = torch.tensor([1, 0, 0, 0])
    targets, mask = comp.pseudo_targets(torch.zeros(8, C), torch.zeros(8), torch.tensor(z_w, dtype=torch.float32),
                                        torch.arange(8), 9, feats_w=torch.tensor(f_w, dtype=torch.float32))
    blended = 0.7 * _softmax(z_w) + 0.3 * _softmax(_cos_over_t(f_w, protos, 0.05))
    np.testing.assert_array_equal(targets.argmax(-1).numpy(), blended.argmax(1))
    np.testing.assert_array_equal(mask.numpy(), (blended.max(1) >= 0.5).astype(np.float32))


# ---------------------------------------------------------------- the queue (§11.6)
def test_the_queue_keeps_the_last_256_per_class_in_order() -> None:
    rng = np.random.default_rng(2)
    queue = ClassQueues(5, 256, 3)
    ref = [deque(maxlen=256) for _ in range(5)]  # class 4 never arrives
    for _ in range(60):
        labels = rng.choice(4, size=int(rng.integers(1, 24)), p=[0.55, 0.3, 0.1, 0.05])
        feats = rng.normal(size=(len(labels), 3)).astype(np.float32)
        queue.push(torch.tensor(feats), torch.tensor(labels))
        for row, y in zip(feats, labels, strict=True):
            ref[y].append(row)
    assert len(ref[0]) == 256 and 0 < len(ref[3]) < 256  # a full, FIFO-trimmed class and a partly filled one
    assert queue.counts() == [len(r) for r in ref]
    for c in range(5):
        want = np.array(list(ref[c]), dtype=np.float32).reshape(-1, 3)
        np.testing.assert_array_equal(queue.banks[c].numpy(), want)
        np.testing.assert_allclose(queue.prototypes[c].numpy(), want.mean(0) if len(want) else np.zeros(3), atol=1e-6)


def test_the_queue_takes_the_ema_models_train_mode_features_of_the_labeled_batch() -> None:
    x, y = torch.randn(10, 1, 5, 5) * 2 + 1, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 3])
    for mode in ("update", "frozen"):
        ctx = _Ctx()
        comp = _daso(f"daso.ema_bn={mode}", ctx=ctx)
        ref = copy.deepcopy(ctx.ema_model).train()
        with torch.no_grad():
            want = ref.forward_features(x)  # official: the EMA model in train mode (batch statistics)
        before = ctx.ema_model.bn.running_mean.clone()
        comp.weight(Batch(lb_pos=torch.arange(10), x_lb=x, y_lb=y, w_lb=torch.ones(10)), 0)
        assert not ctx.ema_model.training  # its mode is given back
        np.testing.assert_allclose(comp.queue.prototypes[0].numpy(), want[[0, 3, 6]].mean(0).numpy(), atol=1e-6)
        after = ctx.ema_model.bn.running_mean
        if mode == "update":  # official: the forward moves the EMA's running buffers, as the train-mode copy's
            assert torch.equal(after, ref.bn.running_mean) and not torch.equal(after, before)
        else:
            assert torch.equal(after, before)


# ---------------------------------------------------------------- the alignment loss (§11.1)
def test_the_alignment_loss_equals_the_official_formula() -> None:
    rng = np.random.default_rng(3)
    f_w, f_s = rng.normal(size=(9, F_DIM)).astype(np.float32), rng.normal(size=(9, F_DIM)).astype(np.float32)
    protos = rng.normal(size=(C, F_DIM)).astype(np.float32)
    comp = _daso("daso.align_weight=0.5")
    comp.queue.prototypes = torch.tensor(protos)
    strong = torch.tensor(f_s, requires_grad=True)
    views = Views(torch.zeros(2, C), feats_ulb_w=torch.tensor(f_w), feats_ulb_s=[strong])
    (loss,) = comp.loss_terms(views, None, None, None, 5).values()
    s_w = _softmax(_cos_over_t(f_w, protos, 0.05))
    want = 0.5 * -(s_w * _log_softmax(_cos_over_t(f_s, protos, 0.05))).sum() / 9
    assert float(loss.detach()) == pytest.approx(want, rel=1e-5)
    loss.backward()
    assert strong.grad is not None and strong.grad.abs().sum() > 0
    before = comp.loss_terms(views, None, None, None, 4)  # pretraining: the term is there and is zero
    assert list(before) == ["daso_align"] and float(before["daso_align"]) == 0.0


# ---------------------------------------------------------------- the pseudo-label window (§11.1)
def test_the_window_counts_every_final_label_of_the_last_period_before_each_refresh() -> None:
    comp = _daso("daso.warm=10", "daso.pl_period=4")
    comp.queue.prototypes = torch.eye(C, F_DIM)
    rng = np.random.default_rng(4)
    pushed: list[np.ndarray] = []
    for step in range(16):
        comp.before_step(step)
        if step in (4, 8, 12):  # refreshed before these steps: the labels of the 4 steps before, masked or not
            want = np.bincount(np.concatenate(pushed[step - 4:step]), minlength=C)
            np.testing.assert_array_equal(comp.window.counts.numpy(), want)
        z = torch.tensor(rng.normal(size=(6, C)), dtype=torch.float32)
        feats = torch.tensor(rng.normal(size=(6, F_DIM)), dtype=torch.float32)
        out = comp.pseudo_targets(torch.zeros(6, C), torch.zeros(6), z, torch.arange(6), step, feats_w=feats)
        if step < 10:
            assert out is None  # pretraining: the base's targets and mask stay; the linear argmax is counted
            pushed.append(z.argmax(-1).numpy())
        else:
            pushed.append(out[0].argmax(-1).numpy())  # after: the blended (final) label is counted
    np.testing.assert_array_equal(comp.window.pending.numpy(), np.bincount(np.concatenate(pushed[12:]), minlength=C))


def test_before_warm_up_the_bases_targets_and_mask_are_untouched() -> None:
    cfg = _cfg("daso.warm=100", "daso.pl_period=5")
    comp = DASO(cfg, _Ctx())
    ssl = create_ssl(cfg.ssl, C, 16)
    step_fn = StepFunction(ssl, [comp], C, 1.0)
    z = torch.randn(16, C) * 5
    t_base, m_base = ssl.pseudo_targets(z, torch.arange(16))
    targets, mask, _ = step_fn.pseudo_labels(z, torch.arange(16), 99, torch.randn(16, F_DIM))
    assert torch.equal(targets, t_base) and torch.equal(mask, m_base)


# ---------------------------------------------------------------- state (§11.3)
def test_state_dict_round_trip_with_a_partly_filled_queue() -> None:
    comp = _daso("daso.queue_size=8")
    rng = np.random.default_rng(5)
    for step in range(7):
        comp.before_step(step)
        comp.queue.push(torch.tensor(rng.normal(size=(5, F_DIM)), dtype=torch.float32),
                        torch.tensor(rng.choice(3, size=5)))  # class 3 stays empty
        comp.window.push(torch.tensor(rng.choice(C, size=5)))
    assert comp.queue.counts()[0] == 8 and comp.queue.counts()[3] == 0
    buf = io.BytesIO()
    torch.save(comp.state_dict(), buf)
    buf.seek(0)
    twin = _daso("daso.queue_size=8")
    twin.load_state_dict(torch.load(buf, weights_only=True))  # the checkpoint's state is plain data
    assert twin.queue.counts() == comp.queue.counts() and twin.refresh.done == comp.refresh.done
    for a, b in zip(twin.queue.banks, comp.queue.banks, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(twin.queue.prototypes, comp.queue.prototypes)
    assert torch.equal(twin.window.counts, comp.window.counts) and torch.equal(twin.window.pending, comp.window.pending)
    more = torch.tensor(rng.normal(size=(6, F_DIM)), dtype=torch.float32), torch.tensor([0, 1, 2, 3, 0, 0])
    comp.queue.push(*more)
    twin.queue.push(*more)
    assert torch.equal(twin.queue.prototypes, comp.queue.prototypes)
    with pytest.raises(ValueError, match="daso queue"):
        _daso("daso.queue_size=4").load_state_dict(comp.state_dict())


TINY = ["train.batch_size=8", "train.uratio=2", "train.steps=6", "train.eval_every=3", "train.progress=false",
        "train.device=cpu", "train.threads=1", "data.eval_subset=50", "daso.warm=2", "daso.pl_period=2"]


def test_a_resumed_run_with_the_blend_on_equals_an_uninterrupted_one(tmp_path: Path) -> None:
    cfg = load_config("mnist-lt-daso", TINY)
    straight = build_trainer(cfg, tmp_path / "a")
    for _ in range(6):
        straight.train_step()
    first = build_trainer(cfg, tmp_path / "b")
    for _ in range(3):
        first.train_step()
    (tmp_path / "b").mkdir()
    save_checkpoint(tmp_path / "b", first.step, first.state_dict(), 2)
    state, _ = load_latest(tmp_path / "b", torch.device("cpu"))
    assert 0 < sum(state["components"]["daso"]["queue"]["count"]) <= 3 * 8
    resumed = build_trainer(cfg, tmp_path / "b", resume=True)
    assert resumed.restore() is not None
    for _ in range(3):
        resumed.train_step()
    assert resumed._fingerprint() == straight._fingerprint()
    for a, b in zip(resumed.ema.model.state_dict().values(), straight.ema.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- configuration
def test_daso_stacks_on_fixmatch_with_hard_labels_only() -> None:
    _cfg()
    for base in ("flexmatch", "freematch", "supervised"):
        with pytest.raises(ConfigError, match=r"^debias\.methods: daso replaces .*\(got \w+\)$"):
            _cfg(f"ssl.name={base}")
    with pytest.raises(ConfigError, match=r"^ssl\.hard_label: "):
        _cfg("ssl.hard_label=false")
    with pytest.raises(ConfigError, match=r"^daso\.warm: the blend needs one pseudo-label window"):
        _cfg("daso.warm=50", "daso.pl_period=100")
    _cfg("daso.warm=0.5", "daso.pl_period=100", "train.steps=400", "train.eval_every=80")  # step 200 >= 100
    with pytest.raises(ConfigError, match=r"^daso\.warm: "):
        _cfg("daso.warm=1.5")
