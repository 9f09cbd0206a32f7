"""DebiasPL, SAW and Adsh: each rule equals its official code on identical inputs (baselines-spec.md §9.6, §7.6,
§8.6). Expected values are computed here in plain numpy from the official formulas, never by the library."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dytrim.config import ConfigError, load_config
from dytrim.debias.adsh import Adsh, adsh_scores, rectified_targets
from dytrim.debias.debiaspl import DebiasPL
from dytrim.debias.saw import SAW, saw_weights
from dytrim.engine.hooks import Batch, StepOutput

QHAT = np.array([.4, .2, .1, .1, .05, .05, .04, .03, .02, .01])
LB_G100 = [int(1500 * (1 / 100) ** (c / 9)) for c in range(10)]  # [1500, 899, 539, ..., 15]: N1 1500, gamma 100


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class _Ctx:
    """The few RunContext fields the three components read."""

    def __init__(self, lb_counts=LB_G100, n_ulb=8, seed=0):
        self.lb_counts, self.num_classes, self.n_ulb, self.seed = list(lb_counts), len(lb_counts), n_ulb, seed
        self.device, self.whole_set, self.model, self.ema_model = torch.device("cpu"), None, None, None


def _cfg(*sets: str):
    return load_config("mnist-lt-fixmatch", list(sets))


# ---------------------------------------------------------------- DebiasPL (§9)
def test_debiaspl_pseudo_probs_strong_logits_and_qhat_update_equal_the_official_formulas() -> None:
    rng = np.random.default_rng(0)
    z_w, z_s = rng.normal(size=(6, 10)) * 2, rng.normal(size=(6, 10)) * 2
    tau, m = 0.4, 0.999
    comp = DebiasPL(_cfg("debias.methods=debiaspl", f"debiaspl.tau={tau}", f"debiaspl.qhat_m={m}"), _Ctx())
    comp.qhat = torch.tensor(QHAT, dtype=torch.float32)
    adjusted = comp.pseudo_logits(torch.tensor(z_w, dtype=torch.float32), 0)
    strong = comp.train_logits(torch.tensor(z_s, dtype=torch.float32), False, 0)
    # official: causal_inference = softmax(z_w - tau log qhat) (old qhat); update_qhat; z_s + tau log qhat (new)
    want_probs = _softmax(z_w - tau * np.log(QHAT))
    want_qhat = m * QHAT + (1 - m) * _softmax(z_w).mean(axis=0)
    np.testing.assert_allclose(torch.softmax(adjusted, -1).numpy(), want_probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(comp.qhat.numpy(), want_qhat, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(strong.numpy(), z_s + tau * np.log(want_qhat), rtol=1e-5, atol=1e-5)
    lb = torch.tensor(z_s, dtype=torch.float32)
    assert comp.train_logits(lb, True, 0) is lb  # labeled logits untouched


def test_debiaspl_qhat_leaves_uniform_after_one_head_biased_batch() -> None:
    """USB's port updates q̂ with probs.mean() (a scalar 1/C), so q̂ never moves: this catches that bug."""
    comp = DebiasPL(_cfg("debias.methods=debiaspl", "debiaspl.qhat_m=0.9"), _Ctx())
    z = torch.zeros(16, 10)
    z[:, 0] = 5.0  # every sample predicts the head class
    comp.pseudo_logits(z, 0)
    usb = 0.9 * np.full(10, 0.1) + 0.1 * _softmax(z.numpy()).mean()  # USB: the scalar mean
    np.testing.assert_allclose(usb, np.full(10, 0.1))
    assert float(comp.qhat[0]) > 0.1 + 0.05 and float(comp.qhat[1:].max()) < 0.1
    assert abs(float(comp.qhat.sum()) - 1) < 1e-6


def test_debiaspl_refuses_the_supervised_base_in_one_line() -> None:
    with pytest.raises(ConfigError, match=r"^debias\.methods: debiaspl .*supervised\)$"):
        _cfg("debias.methods=debiaspl", "ssl.name=supervised")
    for base in ("fixmatch", "flexmatch", "freematch"):
        _cfg("debias.methods=debiaspl", f"ssl.name={base}")


# ---------------------------------------------------------------- SAW (§7)
def _official_saw(distb: np.ndarray, const: float) -> np.ndarray:
    """getClassWeights, type effective, normalize 1, in numpy (const 1 = the automatic beta)."""
    distb = distb.astype(np.float64)
    n = distb.sum() / len(distb)
    beta = (n - 1) / n
    if const != 1:
        beta = const
    distb = np.where(distb == 0, 1.0, distb)
    w = (1 - beta) / (1 - beta**distb)
    return 1 * len(w) * w / w.sum()


def test_saw_labeled_weights_equal_the_spec_vectors_under_both_beta_rules() -> None:
    counts = np.array(LB_G100)
    fixed = saw_weights(torch.tensor(counts), "fixed", 0.99).numpy()
    auto = saw_weights(torch.tensor(counts), "auto").numpy()
    np.testing.assert_allclose(fixed, [.430, .430, .432, .447, .502, .624, .859, 1.272, 1.934, 3.071], atol=6e-4)
    np.testing.assert_allclose(auto, [.151, .163, .194, .255, .366, .553, .875, 1.419, 2.278, 3.747], atol=6e-4)
    np.testing.assert_allclose(fixed, _official_saw(counts, 0.99), rtol=1e-6)
    np.testing.assert_allclose(auto, _official_saw(counts, 1.0), rtol=1e-6)
    with_zero = np.array([50, 20, 0, 3, 1])  # a class no sample is predicted as: count 1, weight (1-b)/(1-b) = 1
    for rule, const in (("fixed", 0.99), ("auto", 1.0)):
        np.testing.assert_allclose(saw_weights(torch.tensor(with_zero), rule, 0.99).numpy(),
                                   _official_saw(with_zero, const), rtol=1e-6)


def test_saw_unlabeled_weights_come_from_the_memory_argmax_counts_each_epoch() -> None:
    comp = SAW(_cfg("debias.methods=saw", "saw.epoch_steps=3"), _Ctx(n_ulb=8))
    assert torch.equal(comp.w_u, torch.ones(10))  # official: ones through the first epoch
    probs = np.full((8, 10), 0.01)
    labels = np.array([0, 0, 0, 1, 1, 2, 9, 0])
    probs[np.arange(8), labels] = 0.91
    logits = torch.tensor(np.log(probs), dtype=torch.float32)
    batch = Batch(torch.arange(2), torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long), torch.ones(2),
                  ulb_pos=torch.arange(8))
    comp.observe(batch, StepOutput(torch.zeros(2), None, None, None, logits), 0)
    for step in (0, 1, 2):
        comp.before_step(step)
    assert torch.equal(comp.w_u, torch.ones(10))
    comp.before_step(3)  # the first step of epoch 1: the weights of the memory at the end of epoch 0
    want = _official_saw(np.bincount(labels, minlength=10), 0.99)
    np.testing.assert_allclose(comp.w_u.numpy(), want, rtol=1e-6)


def test_saw_weighted_losses_equal_the_official_formula() -> None:
    from dytrim.engine.step import StepFunction
    from dytrim.ssl import create_ssl

    cfg = _cfg("debias.methods=saw", "ssl.p_cutoff=0.5")
    comp = SAW(cfg, _Ctx(lb_counts=[40, 10, 2]))
    comp.w_u = torch.tensor([0.5, 1.0, 1.5])
    rng = np.random.default_rng(1)
    z_w, z_lb, z_s = rng.normal(size=(4, 3)) * 3, rng.normal(size=(2, 3)), rng.normal(size=(4, 3))
    y = np.array([0, 2])
    batch = Batch(torch.arange(2), torch.zeros(2, 1, 4, 4), torch.tensor(y), torch.ones(2), torch.arange(4),
                  torch.zeros(4, 1, 4, 4), [torch.zeros(4, 1, 4, 4)], torch.ones(4))
    outs = [torch.tensor(a, dtype=torch.float32, requires_grad=True) for a in (z_w, z_lb, z_s)]
    step_fn = StepFunction(create_ssl(cfg.ssl, 3, 4), [comp], 3, 1.0)
    res = step_fn.run(batch, lambda xs, grad: outs, 0)
    w_x = _official_saw(np.array([40, 10, 2]), 0.99)
    lsm = lambda z: z - np.log(np.exp(z).sum(-1, keepdims=True))  # noqa: E731
    lx = -(w_x[y] * lsm(z_lb)[np.arange(2), y]).mean()  # -(1/B) sum_b w^x_{y_b} log p_{y_b}
    p = _softmax(z_w)
    yhat, mask = p.argmax(-1), (p.max(-1) >= 0.5)
    lu = -(mask * np.array([0.5, 1.0, 1.5])[yhat] * lsm(z_s)[np.arange(4), yhat]).mean()
    np.testing.assert_allclose(float(res.loss.detach()), lx + lu, rtol=1e-5)


# ---------------------------------------------------------------- Adsh (§8)
def _probs_of(per_class: list[list[float]], num_classes: int = 3) -> torch.Tensor:
    """Softmax rows whose argmax is the class and whose max is the given confidence."""
    rows = []
    for k, confs in enumerate(per_class):
        for c in confs:
            r = np.full(num_classes, (1 - c) / (num_classes - 1))
            r[k] = c
            rows.append(r)
    return torch.tensor(np.array(rows), dtype=torch.float32)


def _official_update_s(probs: np.ndarray, score: np.ndarray, thr: float) -> np.ndarray:
    """`train.py::update_s` in numpy (one batch holding the whole pass)."""
    score = score.copy()
    max_probs, targets_u = probs.max(1), probs.argmax(1)
    lists = [[] for _ in range(probs.shape[1])]
    for i in range(len(targets_u)):
        lists[targets_u[i]].append(max_probs[i])
    lists = [np.sort(np.array(c, dtype=np.float32))[::-1] for c in lists]
    rho = 1.0
    for i in range(lists[0].shape[0]):
        if lists[0][i] < thr:
            break
        rho = (i + 1) / lists[0].shape[0]
    for i in range(1, len(lists)):
        if lists[i].shape[0] != 0:
            idx = max(0, np.round(lists[i].shape[0] * rho - 1).astype(int))
            score[i] = min(thr, lists[i][idx])
    return score


def test_adsh_scores_on_the_spec_lists_and_edge_cases() -> None:
    s0 = torch.full((3,), 0.95)
    got = adsh_scores(_probs_of([[.99, .97, .96, .9], [.9, .8, .7, .6, .5], []]), s0, 0.95)
    # rho = 3/4 -> s_1 = C_1[round(5 * .75 - 1) = 3] = 0.6; class 2 (empty) and class 0 keep tau
    np.testing.assert_allclose(got.numpy(), [0.95, 0.6, 0.95], atol=1e-6)
    usb_rho = 2 / 4  # USB: rho = i / n_0 (i = the first index below tau... here 3 - 1), index floor(n rho) - 1 = 1
    assert [.9, .8, .7, .6, .5][int(5 * usb_rho) - 1] == 0.8 and float(got[1]) != pytest.approx(0.8)
    none_confident = adsh_scores(_probs_of([[.9, .8], [.9, .8, .7, .6, .5], [.7]]), s0, 0.95)
    np.testing.assert_allclose(none_confident.numpy(), [0.95, 0.5, 0.7], atol=1e-6)  # rho = 1: the least confident
    no_head = adsh_scores(_probs_of([[], [.99, .5], [.4]]), s0, 0.95)
    np.testing.assert_allclose(no_head.numpy(), [0.95, 0.5, 0.4], atol=1e-6)  # no class-0 prediction: rho = 1


def test_adsh_scores_equal_the_official_update_on_random_passes() -> None:
    rng = np.random.default_rng(3)
    for trial in range(5):
        logits = rng.normal(size=(300, 10)) * (2 + trial)
        logits[:, 0] += 2.0  # head class
        probs = _softmax(logits).astype(np.float32)
        score = np.full(10, 0.95)
        want = _official_update_s(probs, score, 0.95)
        got = adsh_scores(torch.tensor(probs), torch.tensor(score, dtype=torch.float32), 0.95)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)


def test_adsh_rectified_labels_and_mask_on_a_fixed_p() -> None:
    p = np.array([[.90, .05, .05], [.50, .45, .05], [.30, .30, .40], [.34, .33, .33]])
    s = np.array([.95, .4, .6])
    targets, mask = rectified_targets(torch.tensor(np.log(p), dtype=torch.float32), torch.tensor(s).float())
    r = p / s  # official: rectify_prob = probs / score; argmax; mask = max >= 1
    np.testing.assert_array_equal(targets.argmax(-1).numpy(), r.argmax(-1))
    np.testing.assert_array_equal(mask.numpy(), (r.max(-1) >= 1.0).astype(np.float32))
    assert targets.argmax(-1).tolist() == [0, 1, 1, 1] and mask.tolist() == [0.0, 1.0, 0.0, 0.0]


def test_adsh_updates_before_each_epoch_from_index_two_with_the_pass() -> None:
    calls = []

    class Pass:
        def __call__(self, model, which, bn, view, gen):
            calls.append((which, bn, view, gen is not None))
            return type("R", (), {"logits": torch.tensor(np.log(_probs_of([[.99], [.6, .5], []]).numpy()))})()

    ctx = _Ctx(lb_counts=[10, 5, 1])
    ctx.whole_set, ctx.model = Pass(), object()
    comp = Adsh(_cfg("debias.methods=adsh", "adsh.epoch_steps=4"), ctx)
    for step in range(16):
        comp.before_step(step)
    assert len(calls) == 2 and calls[0] == ("unlabeled", "eval", "weak", True)  # steps 8 and 12, not 0 or 4
    np.testing.assert_allclose(comp.score.numpy(), [0.95, 0.5, 0.95], atol=1e-6)  # rho = 1/1: C_1[round(2 - 1)]


def test_adsh_stacks_on_fixmatch_only() -> None:
    _cfg("debias.methods=adsh", "ssl.name=fixmatch")
    for base in ("flexmatch", "freematch", "supervised"):
        with pytest.raises(ConfigError, match=r"^debias\.methods: adsh replaces .*\(got \w+\)$"):
            _cfg("debias.methods=adsh", f"ssl.name={base}")


# ---------------------------------------------------------------- ABC (§5)
def test_abc_bernoulli_parameters_equal_the_spec_tables() -> None:
    from dytrim.debias.abc import balance_rates, unlabeled_rates

    counts = [int(1500 * (1 / 100) ** (c / 9)) for c in range(10)]
    p = balance_rates(counts)
    np.testing.assert_allclose(p.numpy(), [.01, .0167, .0278, .0464, .0777, .129, .217, .366, .6, 1], atol=6e-4)
    np.testing.assert_allclose(p.numpy(), min(counts) / np.array(counts, dtype=np.float64), rtol=1e-6)
    np.testing.assert_allclose(unlabeled_rates(p, 0.0).numpy(), np.ones(10))  # epoch 0
    np.testing.assert_allclose(unlabeled_rates(p, 250 / 500).numpy(),
                               [.505, .508, .514, .523, .539, .565, .609, .683, .8, 1], atol=6e-4)


def test_abc_loss_terms_and_masks_equal_the_official_formulas() -> None:
    from dytrim.debias.abc import ABC
    from dytrim.engine.components import owned_generator
    from dytrim.engine.hooks import Views

    counts = [40, 10, 4]

    class Model(torch.nn.Module):
        num_features = 5

        def __init__(self):
            super().__init__()
            self.aux_heads = torch.nn.ModuleDict()

    ctx = _Ctx(lb_counts=counts)
    ctx.model = Model()
    comp = ABC(_cfg("debias.methods=abc", "abc.p_cutoff=0.5", "abc.epoch_steps=10", "train.steps=100"), ctx)
    ctx.model.aux_heads["abc"] = comp.head
    rng = np.random.default_rng(2)
    f_lb, f_w = rng.normal(size=(6, 5)), rng.normal(size=(8, 5)) * 3
    f_s = [rng.normal(size=(8, 5)), rng.normal(size=(8, 5))]
    y = np.array([0, 0, 1, 2, 2, 1])
    t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    views = Views(torch.zeros(6, 3), torch.zeros(8, 3), [], t(f_lb), t(f_w), [t(f) for f in f_s])
    batch = Batch(torch.arange(6), torch.zeros(6, 1), torch.tensor(y), torch.ones(6))
    terms = comp.loss_terms(views, batch, None, None, step=57)
    # the masks: torch.bernoulli draws of an identical generator, labeled first
    W, b = comp.head.weight.detach().double().numpy(), comp.head.bias.detach().double().numpy()
    aux = lambda f: f @ W.T + b  # noqa: E731
    p = min(counts) / np.array(counts, dtype=np.float64)
    gen = owned_generator(0, "abc")
    m_lb = torch.bernoulli(torch.tensor(p[y], dtype=torch.float32), generator=gen).double().numpy()
    q = _softmax(aux(f_w))
    rates = 1 - (50 / 100) * (1 - p[q.argmax(-1)])  # epoch 5 of 10-step epochs, of 100 steps
    m_u = (q.max(-1) >= 0.5) * torch.bernoulli(torch.tensor(rates, dtype=torch.float32), generator=gen).double().numpy()
    assert 0 < m_lb.sum() < 6 and m_u.sum() > 0  # the masks keep some samples and drop others
    l_lb = -(m_lb * np.log(_softmax(aux(f_lb)))[np.arange(6), y]).mean()
    l_u = sum(-(m_u * (q * np.log(_softmax(aux(f)))).sum(-1)).mean() for f in f_s)
    np.testing.assert_allclose(float(terms["abc_l"].detach()), l_lb, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(terms["abc_u"].detach()), l_u, rtol=1e-5, atol=1e-6)
    assert comp.eval_head == "abc" and comp.heads() == {"abc": comp.head}
