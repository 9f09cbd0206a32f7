"""ReMixMatch (ssl/remixmatch.py) on identical inputs: both modes' whole step against the official sequence written
out here (CDMAD's remixmatchcdmad.py, USB's remixmatch.py: DA, sharpening, mixup, interleaved chunks and their BN,
the four losses), the DA rules over steps, the refusals, and exact resume (baselines-spec.md §12.6)."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dytrim.cli import main as cli_main
from dytrim.config import ConfigError, load_config
from dytrim.engine.context import Progress
from dytrim.engine.forward import TrainForward
from dytrim.engine.hooks import Batch
from dytrim.engine.mixup import interleave
from dytrim.engine.step import StepFunction
from dytrim.export import load_exported
from dytrim.factory import build_trainer
from dytrim.inference import load_run
from dytrim.ssl.remixmatch import ReMixMatch, ReMixMatchConfig

C, B, BU = 3, 8, 16  # 8 + 3 x 16 = 56 mixed images = 7 chunks of 8


class TinyNet(nn.Module):
    """conv -> BN -> LeakyReLU -> mean pool -> linear: a BN layer whose batch statistics tell the chunks apart."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, C)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.bn(self.conv(x)), 0.1).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def _setup(mode: str, step: int, steps: int = 100, lambda_u: float = 2.0):
    torch.manual_seed(0)
    model = TinyNet()
    r = ReMixMatchConfig(mode=mode)
    cfg = SimpleNamespace(remixmatch=r, seed=0, train=SimpleNamespace(steps=steps),
                          data=SimpleNamespace(imb_ratio_l=100, imb_ratio_u=100, name="cifar10"))
    ctx = SimpleNamespace(lb_counts=[50, 10, 2], n_ulb=124, device=torch.device("cpu"), model=model,
                          progress=Progress(total_steps=steps, step=step))
    ssl = ReMixMatch(SimpleNamespace(lambda_u=lambda_u), C, 124)
    ssl.bind(cfg, ctx, [])
    ssl.rng = np.random.Generator(np.random.PCG64(7))
    g = torch.Generator().manual_seed(1)
    batch = Batch(lb_pos=torch.arange(B), x_lb=torch.randn(B, 1, 6, 6, generator=g),
                  y_lb=torch.tensor([0, 1, 2, 0, 0, 1, 2, 0]), w_lb=torch.ones(B), ulb_pos=torch.arange(BU),
                  x_ulb_w=torch.randn(BU, 1, 6, 6, generator=g),
                  x_ulb_s=[torch.randn(BU, 1, 6, 6, generator=g), torch.randn(BU, 1, 6, 6, generator=g)],
                  w_ulb=torch.ones(BU), x_lb_s=torch.randn(B, 1, 6, 6, generator=g))
    return model, ssl, batch


def _official_interleave(xs: list[torch.Tensor]) -> list[torch.Tensor]:
    """MixMatch's interleave for 7 chunks of 8 rows, written out: slices of 1,1,1,1,1,1,2 rows (offsets 0..6, 8),
    slice p (p >= 1) of chunk 0 swapped with slice p of chunk p."""
    offsets = [0, 1, 2, 3, 4, 5, 6, 8]
    out = [x.clone() for x in xs]
    for p in range(1, 7):
        lo, hi = offsets[p], offsets[p + 1]
        out[0][lo:hi], out[p][lo:hi] = xs[p][lo:hi], xs[0][lo:hi]
    return out


def _ce(logits: torch.Tensor, t: torch.Tensor, eps: float | None) -> torch.Tensor:
    """-mean(sum(t · log(softmax + eps))) as the official codes (eps None: log_softmax)."""
    logp = F.log_softmax(logits, 1) if eps is None else torch.log(F.softmax(logits, 1) + eps)
    return -(logp * t).sum(1).mean()


def _rot(x: torch.Tensor, k: np.ndarray) -> torch.Tensor:
    return torch.cat([torch.rot90(x[i], int(k[i]), [1, 2]).reshape(1, *x.shape[1:]) for i in range(len(x))])


def _bn_state(m: nn.Module) -> list[torch.Tensor]:
    return [m.bn.running_mean.clone(), m.bn.running_var.clone()]


def test_interleave_swaps_the_slices_and_is_its_own_inverse() -> None:
    chunks = [torch.arange(8).float() + 100 * i for i in range(7)]
    ours = interleave(chunks, 8)
    for a, b in zip(ours, _official_interleave(chunks), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(interleave(ours, 8), chunks, strict=True):
        assert torch.equal(a, b)


def test_cdmad_mode_step_equals_the_official_sequence() -> None:
    step, steps = 30, 100
    model, ssl, batch = _setup("cdmad", step, steps)
    ref = copy.deepcopy(model)
    rot_w, rot_b = ssl.rot_head.weight.detach().clone(), ssl.rot_head.bias.detach().clone()
    fwd = TrainForward(model, model, "fp32", torch.device("cpu"), False, False)
    res = StepFunction(ssl, [], C, 2.0, ce_eps=1e-8).run(batch, fwd, step)

    rng = np.random.Generator(np.random.PCG64(7))
    k = rng.integers(0, 4, BU)
    lam = rng.beta(0.75, 0.75)
    lam = max(lam, 1 - lam)
    idx = torch.from_numpy(rng.permutation(B + 3 * BU))
    u, u2, u3 = batch.x_ulb_w, batch.x_ulb_s[0], batch.x_ulb_s[1]
    with torch.no_grad():
        p = torch.softmax(ref(u), 1)
        emp = p.mean(0, keepdim=True)  # the window's first batch of this epoch
        target = torch.tensor([50.0, 10.0, 2.0]) * 124 / 62
        pa = p * (target + 1e-6) / (emp.mean(0) + 1e-6)
        q = pa / pa.sum(1, keepdim=True)
    tx = torch.zeros(B, C).scatter_(1, batch.y_lb.view(-1, 1), 1)
    all_x, all_t = torch.cat([batch.x_lb_s, u, u2, u3]), torch.cat([tx, q, q, q])
    mixed_x, mixed_t = lam * all_x + (1 - lam) * all_x[idx], lam * all_t + (1 - lam) * all_t[idx]
    chunks = _official_interleave(list(torch.split(mixed_x, B)))
    logits = _official_interleave([ref(c) for c in chunks])
    lx2 = ref(batch.x_lb)
    lr = F.linear(ref.forward_features(_rot(u2, k)), rot_w, rot_b)
    lu2 = ref(u2)
    ramp = step / steps  # linear_rampup(epoch + batch_idx / 500) over rampup 300 epochs = the whole run
    lx = _ce(logits[0], mixed_t[:B], 1e-8) + _ce(lx2, tx, 1e-8)
    lu = _ce(torch.cat(logits[1:]), mixed_t[B:], 1e-8)
    l_rot = _ce(lr, F.one_hot(torch.from_numpy(k), 4).float(), None)
    l_e = _ce(lu2, q, None)
    expected = lx + 2.0 * ramp * lu + 1.0 * l_rot + 0.5 * l_e * ramp

    assert torch.allclose(res.targets, q, atol=1e-6)
    assert torch.allclose(res.loss, expected, atol=1e-5), (res.loss, expected)
    assert torch.allclose(res.terms["rot"], l_rot, atol=1e-6)
    for a, b in zip(_bn_state(model), _bn_state(ref), strict=True):  # every forward moved the BN statistics, in order
        assert torch.allclose(a, b, atol=1e-6)
    res.loss.backward()
    expected.backward()
    assert torch.allclose(model.conv.weight.grad, ref.conv.weight.grad, atol=1e-5)


def test_usb_mode_step_equals_the_official_sequence() -> None:
    step, steps = 1, 128  # ramp = it / (total / 64) = 0.5
    model, ssl, batch = _setup("usb", step, steps, lambda_u=1.5)
    ref = copy.deepcopy(model)
    rot_w, rot_b = ssl.rot_head.weight.detach().clone(), ssl.rot_head.bias.detach().clone()
    fwd = TrainForward(model, model, "fp32", torch.device("cpu"), False, False)
    res = StepFunction(ssl, [], C, 1.5, ce_eps=0.0).run(batch, fwd, step)

    def frozen(x: torch.Tensor) -> torch.Tensor:  # USB's freeze_bn / unfreeze_bn: batch statistics, buffers restored
        saved = [t.clone() for t in (ref.bn.running_mean, ref.bn.running_var, ref.bn.num_batches_tracked)]
        out = ref(x)
        with torch.no_grad():
            ref.bn.running_mean.copy_(saved[0])
            ref.bn.running_var.copy_(saved[1])
            ref.bn.num_batches_tracked.copy_(saved[2])
        return out

    rng = np.random.Generator(np.random.PCG64(7))
    k = rng.integers(0, 4, BU)
    lam = rng.beta(0.75, 0.75)
    lam = max(lam, 1 - lam)
    idx = torch.from_numpy(rng.permutation(B + 3 * BU))
    s0, s1, w = batch.x_ulb_s[0], batch.x_ulb_s[1], batch.x_ulb_w
    with torch.no_grad():
        p = torch.softmax(frozen(w), 1)
        p_model = p.mean(0)  # first update: the batch mean
        p_target = torch.tensor([50.0, 10.0, 2.0]) / 62
        pa = p * (p_target + 1e-6) / (p_model + 1e-6)
        pa = pa / pa.sum(-1, keepdim=True)
        q = pa ** 2 / (pa ** 2).sum(-1, keepdim=True)  # T = 0.5
        ref(batch.x_lb)  # outs_x_lb: unused logits, BN moves
    u1_logits = frozen(s0)
    all_x = torch.cat([batch.x_lb, s0, s1, w])
    all_t = torch.cat([F.one_hot(batch.y_lb, C).float(), q, q, q])
    mixed_x, mixed_t = lam * all_x + (1 - lam) * all_x[idx], lam * all_t + (1 - lam) * all_t[idx]
    chunks = _official_interleave(list(torch.split(mixed_x, B)))
    logits = _official_interleave([ref(chunks[0])] + [frozen(c) for c in chunks[1:]])
    saved = [ref.bn.running_mean.clone(), ref.bn.running_var.clone()]
    lr = F.linear(ref.forward_features(_rot(s0, k)), rot_w, rot_b)
    with torch.no_grad():
        ref.bn.running_mean.copy_(saved[0])
        ref.bn.running_var.copy_(saved[1])
    warm = 0.5
    expected = (_ce(logits[0], mixed_t[:B], None) + 0.5 * warm * _ce(u1_logits, q, None)
                + 1.5 * warm * _ce(torch.cat(logits[1:]), mixed_t[B:], None)
                + 0.5 * _ce(lr, F.one_hot(torch.from_numpy(k), 4).float(), None))

    assert torch.allclose(res.targets, q, atol=1e-6)
    assert torch.allclose(res.loss, expected, atol=1e-5), (res.loss, expected)
    for a, b in zip(_bn_state(model), _bn_state(ref), strict=True):  # moved by the labeled forward and chunk 0 only
        assert torch.allclose(a, b, atol=1e-6)


def test_the_cdmad_window_restarts_every_epoch_and_usb_keeps_an_ema() -> None:
    _, ssl, _ = _setup("cdmad", 0)
    ssl.r.da_epoch, ssl.r.da_window = 3, 2
    g = torch.Generator().manual_seed(3)
    ps = [torch.softmax(torch.randn(5, C, generator=g), 1) for _ in range(5)]
    target = torch.tensor([50.0, 10.0, 2.0]) * 2
    expect_windows = [[0], [0, 1], [1, 2], [3], [3, 4]]  # epoch of 3 steps, a window of 2 batch means
    for s, (p, win) in enumerate(zip(ps, expect_windows, strict=True)):
        emp = torch.stack([ps[i].mean(0) for i in win]).mean(0)
        pa = p * (target + 1e-6) / (emp + 1e-6)
        assert torch.allclose(ssl.aligned(p, s), pa / pa.sum(1, keepdim=True), atol=1e-6), s
    _, usb, _ = _setup("usb", 0)
    m = 0.999
    p_model = ps[0].mean(0)
    for s, p in enumerate(ps):
        if s:
            p_model = p_model * m + p.mean(0) * (1 - m)
        pa = p * (torch.tensor([50.0, 10.0, 2.0]) / 62 + 1e-6) / (p_model + 1e-6)
        assert torch.allclose(usb.aligned(p, s), pa / pa.sum(1, keepdim=True), atol=1e-6)


def test_cdmad_aligns_only_when_the_two_imbalances_agree() -> None:
    model = TinyNet()
    for ratio_u, name, expect in ((100, "cifar10", True), (1, "cifar10", False), (10, "stl10", False)):
        cfg = SimpleNamespace(remixmatch=ReMixMatchConfig(), seed=0, train=SimpleNamespace(steps=10),
                              data=SimpleNamespace(imb_ratio_l=100 if name != "stl10" else 10, imb_ratio_u=ratio_u,
                                                   name=name))
        ctx = SimpleNamespace(lb_counts=[5, 1, 1], n_ulb=10, device=torch.device("cpu"), model=model,
                              progress=Progress(total_steps=10))
        ssl = ReMixMatch(SimpleNamespace(lambda_u=2.0), C, 10)
        ssl.bind(cfg, ctx, [])
        assert ssl.align is expect


REMIX = ["ssl.name=remixmatch", "ssl.n_strong=2", "train.forward=separate", "train.steps=8", "train.eval_every=4",
         "train.batch_size=8", "train.uratio=2", "data.eval_subset=50", "train.progress=false", "train.threads=1",
         "train.device=cpu", "remixmatch.da_epoch=3"]


def _trainer(out: Path, *sets: str, resume: bool = False):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_trainer(load_config("mnist-lt-fixmatch", [*REMIX, *sets]), out, resume=resume)


@pytest.mark.parametrize("sets, needle", [
    (["train.forward=joint"], "train.forward"),
    (["ssl.n_strong=1"], "ssl.n_strong"),
    (["debias.methods=adsh"], "fixmatch"),
    (["debias.methods=abc"], "penultimate features"),
])
def test_what_cannot_stack_refuses_in_one_line(tmp_path, sets: list[str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as err:
        _trainer(tmp_path / "r", *sets)
    assert "\n" not in str(err.value)


def test_a_short_run_trains_the_rotation_head_and_cdmad_and_dytrim_stack(tmp_path) -> None:
    tr = _trainer(tmp_path / "r", "debias.methods=cdmad,dytrim", "debias.start=2")
    rot0 = tr.model.aux_heads["rot"].weight.detach().clone()
    tr.fit()
    assert not torch.equal(rot0, tr.model.aux_heads["rot"].weight)  # the rotation head joined the optimiser
    p = tr.progress  # 8 steps of 8 labeled + 16 unlabeled images: 2 + 6 forwards, 2 + 5 with a graph
    assert (p.samples_fwd, p.samples_bwd) == (8 * (2 * 8 + 6 * 16), 8 * (2 * 8 + 5 * 16))
    assert "aux_heads.rot.weight" in tr.ema.model.state_dict()
    assert cli_main(["eval", str(tmp_path / "r")]) == 0  # the rotation head is rebuilt beside the weights
    path = tmp_path / "m.pt"
    assert cli_main(["export", str(tmp_path / "r"), "--format", "state_dict", "--out", str(path)]) == 0
    module, _ = load_exported(path)  # the classifier without the rotation head
    x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.allclose(module(x)[0], load_run(tmp_path / "r").logits(x)[0], atol=1e-5)


@pytest.mark.parametrize("sets, stop_at", [([], 5), (["debias.methods=crt", "crt.steps=4"], 10)],
                         ids=["across-a-window-restart", "inside-a-crt-stage"])
def test_a_resumed_run_equals_one_uninterrupted(tmp_path, sets: list[str], stop_at: int) -> None:
    from tests.test_stages import resumed_against_straight

    resumed_against_straight(lambda out, resume=False: _trainer(out, *sets, resume=resume), tmp_path, stop_at)
