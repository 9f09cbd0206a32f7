"""ACR: each rule equals the official `train.py` (Gank0078/ACR) on identical inputs (baselines-spec.md §10.6).
Expected values are re-derived here in plain numpy from the official statements, never by the library."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

from dytrim.config import ConfigError, load_config
from dytrim.debias.acr import ACR, adjustment, class_vector, divergences
from dytrim.engine.components import attach_heads, eval_model
from dytrim.engine.hooks import Batch, Views
from dytrim.engine.step import StepFunction
from dytrim.ssl.base import create_ssl

COUNTS = [40, 10, 4]
PI = np.array(COUNTS, dtype=np.float64) / sum(COUNTS)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _ce(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-sample F.cross_entropy(z, y, reduction='none')."""
    zs = z - z.max(axis=-1, keepdims=True)
    return -(zs - np.log(np.exp(zs).sum(-1, keepdims=True)))[np.arange(len(y)), y]


def _adj(tau: float) -> np.ndarray:
    return np.log(PI**tau + 1e-12)  # official compute_adjustment_by_py


def _sym_kl(p: np.ndarray, q: np.ndarray) -> float:
    """0.5 * KLDivLoss(sum)(q.log(), p) + 0.5 * KLDivLoss(sum)(p.log(), q)."""
    return 0.5 * float(np.sum(p * (np.log(p) - np.log(q)))) + 0.5 * float(np.sum(q * (np.log(q) - np.log(p))))


def _kls(u: np.ndarray) -> np.ndarray:
    return np.array([_sym_kl(u, PI), _sym_kl(u, np.full(len(PI), 1 / len(PI))), _sym_kl(u, PI[::-1])])


def _official_tau(count: np.ndarray, steps: int, tau_max: float = 2.0) -> float:
    """count_KL / eval_step; tau = taumin + (taumax - taumin) * exp(c0) / (exp(c0) + exp(c1) + exp(c2)), float32."""
    with np.errstate(invalid="ignore", over="ignore"):
        e = np.exp(count.astype(np.float32) / np.float32(steps))
        return float(np.float32(tau_max) * (e[0] / (e[0] + e[1] + e[2])))


class _Model(nn.Module):
    """Features = the input; h1 a fixed Linear; components' heads in aux_heads."""

    num_features = 4

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, len(COUNTS))
        self.aux_heads = nn.ModuleDict()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class _Ctx:
    """The RunContext fields ACR reads."""

    def __init__(self, n_ulb: int = 12) -> None:
        self.model, self.num_classes, self.n_ulb = _Model(), len(COUNTS), n_ulb
        self.lb_prior = torch.tensor(PI)
        self.ulb_in_lb = torch.zeros(n_ulb, dtype=torch.bool)
        self.ulb_in_lb[:3] = True  # the first three pool positions hold labeled images (official target -2)


def _acr(*sets: str, ctx: _Ctx | None = None) -> tuple[ACR, _Ctx]:
    ctx = ctx or _Ctx()
    comp = ACR(load_config("mnist-lt-fixmatch", ["debias.methods=acr", *sets]), ctx)
    ctx.model.aux_heads["acr"] = comp.head
    rng = np.random.default_rng(7)  # fixed h1 and h2 weights: the tests do not depend on the global RNG
    with torch.no_grad():
        for layer in (ctx.model.fc, comp.head):
            layer.weight.copy_(_t(rng.normal(size=tuple(layer.weight.shape)) * 0.6))
            layer.bias.copy_(_t(rng.normal(size=tuple(layer.bias.shape)) * 0.1))
    return comp, ctx


def _params(layer: nn.Linear) -> tuple[np.ndarray, np.ndarray]:
    return layer.weight.detach().double().numpy(), layer.bias.detach().double().numpy()


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float32)


# ---------------------------------------------------------------- the pure rules
def test_adjustment_vectors_equal_the_official_formula() -> None:
    comp, _ = _acr("acr.tau12=1.5", "acr.tau2=0.5")
    for tau in (0.0, 2 / 3, 1.0, 2.0):
        np.testing.assert_allclose(adjustment(torch.tensor(PI), tau).numpy(), _adj(tau), rtol=1e-12)
    np.testing.assert_allclose(comp.adj1.numpy(), _adj(2.0), rtol=1e-12)  # tau1 starts at tau_max
    np.testing.assert_allclose(comp.adj12.numpy(), _adj(1.5), rtol=1e-12)
    np.testing.assert_allclose(comp.adj2.numpy(), _adj(0.5), rtol=1e-12)


def test_divergences_and_tau1_from_the_accumulated_divergences() -> None:
    comp, _ = _acr("acr.epoch_steps=4", "acr.est_epoch=1")
    us = [np.array([.5, .3, .2]), np.array([.2, .3, .5]), np.array([.8, .15, .05]), np.array([.34, .33, .33])]
    count = np.zeros(3)
    for u in us:
        np.testing.assert_allclose(divergences(torch.tensor(u, dtype=torch.float32), torch.tensor(PI)).numpy(),
                                   _kls(u.astype(np.float32).astype(np.float64)), rtol=1e-6)
        count += _kls(u)
    comp.acc = torch.tensor(count, dtype=torch.float32)
    comp.before_step(4)  # start of epoch 1 = est_epoch: no adaptation yet, the accumulators restart
    assert comp.tau1 == 2.0 and float(comp.acc.abs().sum()) == 0
    comp.acc = torch.tensor(count, dtype=torch.float32)
    comp.before_step(8)  # start of epoch 2 > est_epoch
    want = _official_tau(count, 4)
    assert 0 < want < 2 and comp.tau1 == pytest.approx(want, rel=1e-6)
    np.testing.assert_allclose(comp.adj1.numpy(), _adj(want), rtol=1e-6)
    comp.before_step(9)  # within the epoch: nothing
    assert comp.tau1 == pytest.approx(want, rel=1e-6)
    comp.before_step(12)  # zeros accumulated: every anchor equally far, tau = tau_max / 3
    assert comp.tau1 == pytest.approx(_official_tau(np.zeros(3), 4)) == pytest.approx(2 / 3)
    comp.acc = torch.tensor([1e4, 0.0, 0.0])  # exp overflows in float32: inf / inf = NaN, the update is skipped
    comp.before_step(16)
    assert np.isnan(_official_tau(np.array([1e4, 0, 0]), 4)) and comp.tau1 == pytest.approx(2 / 3)
    comp.acc = torch.tensor([0.0, 1e4, 0.0])  # finite / inf = 0: not NaN, so tau1 becomes 0 (as official)
    comp.before_step(20)
    assert comp.tau1 == _official_tau(np.array([0, 1e4, 0]), 4) == 0.0


def test_or_masks_on_hand_made_logits() -> None:
    comp, _ = _acr()
    # weak h1 logits; tau1 = tau12 = 2 adds -log pi^2 = [0.60, 3.37, 5.21]
    z1_w = np.array([
        [10.0, 0.0, 0.0],  # both confident (adjusted .995, raw 1.0)
        [0.0, 0.0, 2.5],  # adjusted only (.987; raw .859)
        [6.0, 0.0, 0.0],  # raw only (.995; adjusted .777)
        [6.0, 0.0, 2.5],  # raw only (.968, class 0) while the adjusted target is class 2 (.742): kept, target 2
        [1.0, 1.0, 1.0],  # neither (adjusted .855 on the tail class, raw 1/3)
    ])
    p_adj, p_raw = _softmax(z1_w - _adj(2.0)), _softmax(z1_w)
    want_y = p_adj.argmax(-1)
    want_m = ((p_adj.max(-1) >= .95) | (p_raw.max(-1) >= .95)).astype(np.float32)
    assert (p_adj.max(-1) >= .95).tolist() == [True, True, False, False, False]
    assert (p_raw.max(-1) >= .95).tolist() == [True, False, True, True, False]
    assert want_y.tolist() == [0, 2, 0, 2, 2] and want_m.tolist() == [1, 1, 1, 1, 0]
    targets, mask = comp.pseudo_targets(torch.zeros(5, 3), torch.zeros(5), _t(z1_w), torch.arange(5), 0)
    np.testing.assert_array_equal(targets.numpy(), np.eye(3)[want_y])
    np.testing.assert_array_equal(mask.numpy(), want_m)
    # h2's: [conf(softmax(h2 weak)) >= .95] OR [conf(softmax(z1_w - tau12 log pi)) >= .95], target the latter's argmax
    with torch.no_grad():
        comp.head.weight.copy_(torch.eye(3, 4) * 10)
        comp.head.bias.zero_()
    f_w = np.zeros((5, 4))
    f_w[4, 0] = 0.6  # only the last row: h2 logits [6, 0, 0], conf .995
    w2 = _params(comp.head)[0]
    want_m12 = ((_softmax(f_w @ w2.T).max(-1) >= .95) | (p_adj.max(-1) >= .95)).astype(np.float32)
    assert want_m12.tolist() == [1, 1, 0, 0, 1]
    f_s = np.random.default_rng(0).normal(size=(5, 4))
    views = Views(torch.zeros(2, 3), _t(z1_w), [_t(f_s)], _t(np.zeros((2, 4))), _t(f_w), [_t(f_s)])
    batch = Batch(torch.arange(2), torch.zeros(2, 4), torch.tensor([0, 1]), torch.ones(2))
    terms = comp.loss_terms(views, batch, None, None, 0)
    np.testing.assert_allclose(float(terms["acr_ub"].detach()), (_ce(f_s @ w2.T, want_y) * want_m12).mean(), rtol=1e-6)


def test_duplicate_indices_keep_the_last_value_as_the_official_index_add() -> None:
    cls = torch.tensor([1, 1, 1, 2, 2, 0, 0, 0])
    value = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    official = torch.zeros(4)
    official[cls] += value  # the official statement `now_mask[targets_u_b] += mask_l * mask_b`, on the CPU
    last = np.zeros(4)
    for c, v in zip(cls.tolist(), value.tolist(), strict=True):
        last[c] = v  # numpy re-derivation: each write replaces the previous one
    assert official.tolist() == last.tolist() == [0.0, 0.0, 1.0, 0.0]  # class 1: two count, the last does not
    np.testing.assert_array_equal(class_vector(cls, value, 4, "last").numpy(), last)
    np.testing.assert_array_equal(class_vector(cls, value, 4, "any").numpy(), [1, 1, 1, 0])  # a presence vector
    np.testing.assert_array_equal(class_vector(cls, value, 4, "sum").numpy(), [1, 2, 1, 0])
    rng = np.random.default_rng(0)
    for _ in range(20):
        c, v = torch.tensor(rng.integers(0, 10, 64)), torch.tensor((rng.random(64) < .5).astype(np.float32))
        ref = torch.zeros(10)
        ref[c] += v
        assert torch.equal(class_vector(c, v, 10, "last"), ref)


# ---------------------------------------------------------------- the estimate over epochs
def _official_run(comp: ACR, steps: list[tuple[np.ndarray, np.ndarray, np.ndarray]], epoch_steps: int,
                  est_epoch: int, rho: float, thr: float, in_lb: np.ndarray) -> tuple[np.ndarray, float, list]:
    """The official epoch loop in numpy: (u_py, tau of adjustment_l1, the y1 of every step)."""
    w2, b2 = _params(comp.head)
    u, count, tau, labels = np.full(3, 1 / 3), np.zeros(3), 2.0, []
    for i, (z1_w, f_w, pos) in enumerate(steps):
        epoch = i // epoch_steps
        if i % epoch_steps == 0:
            if epoch > est_epoch and not np.isnan(new := _official_tau(count, epoch_steps)):
                tau = new
            count = np.zeros(3)
        labels.append(_softmax(z1_w - _adj(tau)).argmax(-1))
        if epoch > est_epoch:
            p_b = _softmax(f_w @ w2.T + b2)
            now = np.zeros(3)
            for c, m in zip(p_b.argmax(-1), (p_b.max(-1) >= thr) & ~in_lb[pos], strict=True):
                now[c] = float(m)
            if now.sum() > 0:
                u = rho * u + (1 - rho) * now / now.sum()
                count = count + _kls(u)
    return u, tau, labels


def _inputs(n_steps: int, seed: int = 1) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(8, 3)) * 3, rng.normal(size=(8, 4)) * 4, rng.integers(0, 12, 8))
            for _ in range(n_steps)]


def _drive(comp: ACR, inputs: list, first: int = 0) -> list[np.ndarray]:
    labels = []
    for i, (z1_w, f_w, pos) in enumerate(inputs, start=first):
        comp.before_step(i)
        targets, _ = comp.pseudo_targets(torch.zeros(8, 3), torch.zeros(8), _t(z1_w), torch.tensor(pos), i,
                                         feats_w=_t(f_w))
        labels.append(targets.argmax(-1).numpy())
    return labels


def test_estimate_and_tau1_over_epochs_equal_the_official_loop() -> None:
    sets = ("acr.epoch_steps=3", "acr.est_epoch=1", "acr.ema_u=0.9", "acr.p_cutoff=0.8")
    comp, ctx = _acr(*sets)
    inputs = _inputs(21)
    labels = _drive(comp, inputs)
    u, tau, want_labels = _official_run(comp, inputs, 3, 1, 0.9, 0.8, ctx.ulb_in_lb.numpy())
    assert comp.est_steps == 21 - 6  # epochs 2..6 of 3 steps
    np.testing.assert_allclose(comp.u.numpy(), u, rtol=1e-5)
    assert tau not in (2.0, 2 / 3) and comp.tau1 == pytest.approx(tau, rel=1e-5)
    for got, want in zip(labels, want_labels, strict=True):
        np.testing.assert_array_equal(got, want)


def test_state_dict_round_trip_resumes_exactly() -> None:
    sets = ("acr.epoch_steps=3", "acr.est_epoch=1", "acr.ema_u=0.9", "acr.p_cutoff=0.8")
    inputs = _inputs(21, seed=4)
    straight, _ = _acr(*sets)
    _drive(straight, inputs)
    first, _ = _acr(*sets)
    first.head.load_state_dict(straight.head.state_dict())
    _drive(first, inputs[:11])  # stops inside epoch 3, with divergences accumulated and tau1 adapted
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed, _ = _acr(*sets)
    resumed.head.load_state_dict(straight.head.state_dict())
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    assert resumed.tau1 == first.tau1 != 2.0 and torch.equal(resumed.acc, first.acc) and float(first.acc.sum()) > 0
    _drive(resumed, inputs[11:], first=11)
    assert torch.equal(resumed.u, straight.u) and torch.equal(resumed.acc, straight.acc)
    assert resumed.tau1 == straight.tau1 and resumed.est_steps == straight.est_steps
    assert resumed.state_dict()["epochs"] == straight.state_dict()["epochs"]
    with pytest.raises(ValueError, match="shape"):
        resumed.load_state_dict({**first.state_dict(), "u": torch.ones(5)})


# ---------------------------------------------------------------- the total loss of one step
def test_total_loss_equals_the_official_train_py_loss() -> None:
    comp, ctx = _acr("acr.epoch_steps=2", "acr.est_epoch=0")
    comp.tau1, comp.adj1 = 0.7, adjustment(torch.tensor(PI), 0.7)  # an adapted tau1
    h1 = ctx.model.fc
    rng = np.random.default_rng(5)
    f_lb, f_w = rng.normal(size=(6, 4)), rng.normal(size=(10, 4)) * np.linspace(0.2, 6, 10)[:, None]
    f_s = [rng.normal(size=(10, 4)) * 2, rng.normal(size=(10, 4)) * 2]
    y = np.array([0, 0, 1, 2, 0, 1])

    def forward(xs, grad, with_feats=False):
        logits = [h1(x) if g else h1(x).detach() for x, g in zip(xs, grad, strict=True)]
        return (logits, list(xs)) if with_feats else logits

    cfg = load_config("mnist-lt-fixmatch", ["debias.methods=acr", "ssl.n_strong=2"])
    step_fn = StepFunction(create_ssl(cfg.ssl, 3, 12), [comp], 3, 1.0)
    batch = Batch(torch.arange(6), _t(f_lb), torch.tensor(y), torch.ones(6), torch.arange(10), _t(f_w),
                  [_t(f) for f in f_s], torch.ones(10))
    res = step_fn.run(batch, forward, step=4)  # an estimating epoch: the estimate leaves this step's loss alone
    # official train.py, in numpy
    w1, b1 = _params(h1)
    w2, b2 = _params(comp.head)
    z1 = lambda f: f @ w1.T + b1  # noqa: E731
    z2 = lambda f: f @ w2.T + b2  # noqa: E731
    lx = _ce(z1(f_lb), y).mean()
    lx_b = _ce(z2(f_lb) + _adj(2.0), y).mean()
    p1, p12, p_b, p_t = (_softmax(z1(f_w) - _adj(0.7)), _softmax(z1(f_w) - _adj(2.0)), _softmax(z2(f_w)),
                         _softmax(z1(f_w)))
    mask_ss_t = (p1.max(-1) >= .95) | (p_t.max(-1) >= .95)
    mask_ss_b_h2 = (p_b.max(-1) >= .95) | (p12.max(-1) >= .95)
    assert 0 < mask_ss_t.sum() < 10 and 0 < mask_ss_b_h2.sum() < 10  # the masks keep some samples, drop others
    lu = np.concatenate([_ce(z1(f), p1.argmax(-1)) * mask_ss_t for f in f_s]).mean()
    lu_b = np.concatenate([_ce(z2(f), p12.argmax(-1)) * mask_ss_b_h2 for f in f_s]).mean()
    np.testing.assert_allclose(float(res.terms["acr_xb"]), lx_b, rtol=1e-5)
    np.testing.assert_allclose(float(res.terms["acr_ub"]), lu_b, rtol=1e-5)
    np.testing.assert_allclose(float(res.loss_u), lu, rtol=1e-5)
    np.testing.assert_allclose(float(res.loss.detach()), lx + lu + lx_b + lu_b, rtol=1e-5)
    assert comp.est_steps == 1
    res.loss.backward()  # the terms train h1 and h2
    assert h1.weight.grad is not None and comp.head.weight.grad is not None


# ---------------------------------------------------------------- head, evaluation, stacks
def test_the_eval_head_is_h2_with_xavier_init() -> None:
    ctx = _Ctx()
    comp = ACR(load_config("mnist-lt-fixmatch", ["debias.methods=acr"]), ctx)  # as built: zero bias
    assert comp.eval_head == "acr" and comp.heads() == {"acr": comp.head} and comp.uses_features
    assert torch.count_nonzero(comp.head.bias) == 0
    model = _Model()
    attach_heads(model, comp.heads(), torch.device("cpu"))
    x = torch.randn(5, 4)
    net = eval_model(model, [comp])
    torch.testing.assert_close(net(x), comp.head(x))
    assert not torch.allclose(net(x), model(x))
    wide = _Ctx()  # a wide head: Xavier normal, std sqrt(2 / (fan_in + fan_out))
    wide.model.num_features = 512
    w = ACR(load_config("mnist-lt-fixmatch", ["debias.methods=acr"]), wide).head.weight
    assert w.shape == (3, 512) and abs(float(w.detach().std()) / np.sqrt(2 / 515) - 1) < 0.15


def test_acr_stacks_on_fixmatch_only() -> None:
    load_config("mnist-lt-acr")
    for base in ("flexmatch", "freematch", "supervised"):
        with pytest.raises(ConfigError, match=r"^debias\.methods: acr replaces .*\(got \w+\)$"):
            load_config("mnist-lt-fixmatch", ["debias.methods=acr", f"ssl.name={base}"])
    with pytest.raises(ConfigError, match=r"^acr\.ema_u: "):
        load_config("mnist-lt-acr", ["acr.ema_u=1.0"])
    with pytest.raises(ConfigError, match="acr.class_count"):
        load_config("mnist-lt-acr", ["acr.class_count=mean"])


def test_presets_follow_acr_protocol() -> None:
    for g in (50, 100, 150):
        cfg = load_config(f"paper-cifar10lt-g{g}-acr")
        assert (cfg.data.imb_ratio_l, cfg.data.imb_ratio_u, cfg.data.pool) == (g, g, "paper")
        assert (cfg.optim.name, cfg.optim.lr, cfg.optim.nesterov, cfg.optim.weight_decay, cfg.optim.schedule) == (
            "sgd", 0.03, True, 5e-4, "cosine")
        assert (cfg.train.batch_size, cfg.train.uratio, cfg.ssl.n_strong, cfg.ssl.ce_eps) == (64, 1, 2, 0.0)
        assert cfg.acr.ema_u == 0.99 and cfg.debias.methods == ["acr"]
