"""DARP (baselines-spec.md §2): the refinement equals the official `estimate_pseudo` / `opt_solver` on a fixed table,
the schedule refines only on its due steps after the warm-up, the mask is taken on the refined rows, and the state
round-trips. Expected values are computed here in numpy + scipy from the official formulas, never by the library."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import optimize

from dytrim.config import ConfigError, dump_yaml, load_config
from dytrim.debias.darp import DARP, refined_targets, target_counts
from dytrim.debias.darp_solver import dual_solve, normalize_selected, refine, remove_noise, secant
from dytrim.engine.checkpoint import load_latest, save_checkpoint
from dytrim.factory import build_trainer
from dytrim.resume import resume_config

LB_G100 = [int(1500 * (1 / 100) ** (c / 9)) for c in range(10)]  # [1500, 899, 539, ..., 15]: N1 1500, gamma 100


def _table(n: int = 2000, k: int = 10, seed: int = 0) -> np.ndarray:
    """Softmax of seeded normal logits plus a head-biased offset, stored in float32 as the memory keeps it."""
    z = np.random.default_rng(seed).normal(size=(n, k)) * 2.0 + np.linspace(2.0, -2.0, k)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32).astype(np.float64)


def _official_estimate_pseudo(q: np.ndarray, q_y: np.ndarray, alpha: float = 2.0):
    """estimate_pseudo: classes from the last to the first, torch's descending sort of each column."""
    n_cls = q.shape[1]
    labels, k_probs = np.zeros_like(q), np.zeros(n_cls)
    for i in range(1, n_cls + 1):
        i = n_cls - i
        num_i = int(alpha * q_y[i])
        sorted_probs, idx = torch.from_numpy(q[:, i]).sort(dim=0, descending=True, stable=True)
        labels[idx[:num_i].numpy(), i] = 1
        k_probs[i] = sorted_probs[:num_i].numpy().sum()
    return labels, (q_y + 1e-6) / (k_probs + 1e-6)


def _official_opt_solver(probs: np.ndarray, target: np.ndarray, num_iter=10, th=0.1, num_newton=30) -> np.ndarray:
    """opt_solver with scipy.optimize.newton (secant: no fprime), as the official code calls it."""

    def f(x, a, b, c, d):
        return np.sum(a * b * np.exp(-1 * x / c)) - d

    entropy = (-1 * probs * np.log(probs + 1e-6)).sum(1)
    w = 1 / entropy
    n, k = probs.shape
    lam, nu, r = np.ones(n), np.ones(k), np.ones(n)
    a_e = probs / math.e
    x_t, y_t = np.exp(-1 * lam / w), np.exp(-1 * nu.reshape(1, -1) / w.reshape(-1, 1))
    prev = np.zeros(k)
    for _ in range(num_iter):
        x_t = r / np.sum(a_e * y_t, 1)
        y_t = np.zeros(k)
        for i in range(k):
            y_t[i] = optimize.newton(f, prev[i], maxiter=num_newton, args=(a_e[:, i], x_t, w, target[i]), tol=th)
        prev = y_t
        y_t = np.exp(-1 * y_t.reshape(1, -1) / w.reshape(-1, 1))
    x_t = r / np.sum(a_e * y_t, 1)
    return a_e * x_t.reshape(-1, 1) * y_t


def _official_refine(q: np.ndarray, c: np.ndarray) -> np.ndarray:
    s, g = _official_estimate_pseudo(q, c)
    scaled = q * (s * g.reshape(1, -1)) + 1e-6
    return _official_opt_solver(scaled / scaled.sum(axis=1, keepdims=True), c)


def _g100_target(n: int) -> np.ndarray:
    lb = np.array(LB_G100, dtype=np.float64)
    return lb * n / lb.sum()


# ---------------------------------------------------------------- the refinement equals the official functions
def test_noise_removal_and_dual_solve_equal_the_official_functions() -> None:
    q, c = _table(), _g100_target(2000)
    s, g = remove_noise(q, c, 2.0)
    s_ref, g_ref = _official_estimate_pseudo(q, c)
    np.testing.assert_array_equal(s, s_ref)
    np.testing.assert_array_equal(g, g_ref)
    assert s[:, 0].sum() == min(2000, int(2 * c[0])) and s[:, 9].sum() == int(2 * c[9])
    qn = normalize_selected(q, s, g)
    scaled = q * (s_ref * g_ref.reshape(1, -1)) + 1e-6
    qn_ref = scaled / scaled.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(qn, qn_ref, rtol=0, atol=1e-7)
    m, failed = dual_solve(qn, c, 10, 0.1, 30)
    m_ref = _official_opt_solver(qn_ref, c)
    assert failed == 0
    np.testing.assert_allclose(m, m_ref, rtol=0, atol=1e-6)
    np.testing.assert_allclose(refine(q, c)[0], m_ref, rtol=0, atol=1e-6)
    np.testing.assert_allclose(m.sum(axis=1), 1.0, rtol=0, atol=1e-12)  # rows: exactly the simplex
    np.testing.assert_allclose(m.sum(axis=0), c, rtol=1e-3)  # columns: the target, to the secant's tolerance
    assert np.abs(m.sum(axis=0) - c).max() < np.abs(q.sum(axis=0) - c).max() / 100


def test_the_official_float32_precision_gives_the_same_refined_table() -> None:
    """The official code runs the noise removal and A in float32 (torch); ours in float64: same table to 1e-6."""
    q, c = _table(seed=1), _g100_target(2000)
    q32, c32 = q.astype(np.float32), c.astype(np.float32)
    s, g = _official_estimate_pseudo(q32.astype(np.float64), c32.astype(np.float64))
    g32 = g.astype(np.float32)
    scaled = q32 * (s.astype(np.float32) * g32.reshape(1, -1)) + np.float32(1e-6)
    m32 = _official_opt_solver((scaled / scaled.sum(axis=1, keepdims=True)).astype(np.float32), c32)
    np.testing.assert_allclose(refine(q, c32.astype(np.float64))[0], m32.astype(np.float32), rtol=0, atol=1e-6)


def test_secant_equals_scipy_newton_without_derivative() -> None:
    rng = np.random.default_rng(3)
    for _ in range(300):
        a, w, d, x0 = rng.random(40), rng.random(40) + 0.2, rng.random() * 8, float(rng.normal() * 2)
        tol, maxiter = float(rng.choice([1e-6, 0.1, 0.3])), int(rng.integers(1, 30))
        try:
            want = optimize.newton(lambda x, a=a, w=w, d=d: np.sum(a * np.exp(-1 * x / w)) - d, x0, tol=tol,
                                   maxiter=maxiter)
        except RuntimeError:  # scipy (disp=True) raises where ours reports converged=False
            want = None
        got, ok = secant(lambda x, a=a, w=w, d=d: float(np.sum(a * np.exp(-x / w)) - d), x0, tol, maxiter)
        assert (want is None and not ok) or (ok and got == want), (want, got, ok)
    root, ok = secant(lambda x: 5.0, 0.0, 0.1, 30)  # a flat function: scipy raises, ours returns the midpoint
    assert not ok and root == pytest.approx(5e-5)


def test_target_is_the_labeled_prior_scaled_to_the_pool_in_float32() -> None:
    n = 11163  # the paper pool at gamma 100 (labeled images included)
    c = target_counts([float(v) for v in LB_G100], n).numpy()
    want = (np.array(LB_G100, dtype=np.float32) * np.float32(n) / np.float32(sum(LB_G100))).astype(np.float64)
    np.testing.assert_array_equal(c, want)
    assert [round(float(v)) for v in c[:3]] == [4501, 2698, 1617] and abs(c.sum() - n) < 1e-2


# ---------------------------------------------------------------- the component on a stub
class _Ctx:
    """The few RunContext fields DARP reads."""

    def __init__(self, lb_counts=LB_G100, n_ulb=60):
        self.lb_counts, self.num_classes, self.n_ulb = list(lb_counts), len(lb_counts), n_ulb
        self.device = torch.device("cpu")


def _cfg(*sets: str):
    return load_config("mnist-lt-fixmatch", ["debias.methods=darp", *sets])


def _base(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FixMatch's hard labels and 0.95 mask on the unrefined probabilities."""
    return _one_hot(probs.argmax(-1)), (probs.max(-1).values >= 0.95).float()


def _one_hot(label: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.one_hot(label, 10).float()


def test_refines_only_on_due_steps_after_the_warm_up_and_caches_in_between() -> None:
    ctx = _Ctx()
    comp = DARP(_cfg("darp.warm=25", "darp.every=10"), ctx)
    memory = np.full((ctx.n_ulb, 10), 0.1)  # the official pseudo_orig, written here independently
    rng = np.random.default_rng(0)
    c = _g100_target(ctx.n_ulb)
    refined_at, cached = [], None
    for step in range(52):
        logits = torch.tensor(rng.normal(size=(8, 10)) * 3, dtype=torch.float32)
        pos = torch.tensor(rng.choice(ctx.n_ulb, 8, replace=False))
        probs = torch.softmax(logits, -1)
        memory[pos.numpy()] = probs.double().numpy()
        before = comp.refinements
        out = comp.pseudo_targets(*_base(probs), logits, pos, step)
        np.testing.assert_array_equal(comp.q_orig.table.numpy(), memory.astype(np.float32))  # untouched by refining
        if comp.refinements > before:
            refined_at.append(step)
            cached = _official_refine(memory.astype(np.float32).astype(np.float64), c)
            np.testing.assert_allclose(comp.q_refine.table.numpy(), cached, rtol=0, atol=1e-6)
        if step < 30:
            assert out is None  # before the first refinement: the base's targets and mask
            continue
        rows = torch.tensor(cached[pos.numpy()], dtype=torch.float32)  # the rows of the last refinement
        np.testing.assert_array_equal(out[0].argmax(-1).numpy(), rows.argmax(-1).numpy())
        np.testing.assert_array_equal(out[1].numpy(), (rows.max(-1).values >= 0.95).float().numpy())
    assert refined_at == [30, 40, 50]  # the first multiple of 10 at or after step 25, then every 10


def test_a_jumping_clock_refines_once_per_period() -> None:
    comp = DARP(_cfg("darp.warm=0", "darp.every=10"), _Ctx())
    fired = []
    for step in (0, 7, 14, 21, 23, 35, 36, 52):
        before = comp.refinements
        comp.pseudo_targets(*_base(torch.full((2, 10), 0.1)), torch.zeros(2, 10), torch.tensor([0, 1]), step)
        fired += [step] if comp.refinements > before else []
    assert fired == [0, 14, 21, 35, 52]


def _rows(top: list[tuple[int, float]]) -> torch.Tensor:
    """Probability rows with `p` on class `cls` and the rest spread evenly."""
    out = torch.empty(len(top), 10)
    for r, (cls, p) in enumerate(top):
        out[r] = (1 - p) / 9
        out[r, cls] = p
    return out


def test_the_mask_is_taken_on_the_refined_rows_and_raw_gives_usb_s_mask() -> None:
    refined = _rows([(2, 0.964), (4, 0.5), (7, 0.4)])  # only row 0 is confident after refining
    probs = _rows([(0, 0.5), (1, 0.96), (7, 0.91)])  # before refining, only row 1 passes 0.95
    for mode, want_mask in (("refined", [1.0, 0.0, 0.0]), ("raw", [0.0, 1.0, 0.0])):
        comp = DARP(_cfg("darp.warm=1000", f"darp.mask={mode}"), _Ctx(n_ulb=3))
        comp.q_refine.table, comp.refined = refined.clone(), True  # as after a refinement; none is due at step 5
        targets, mask = comp.pseudo_targets(*_base(probs), torch.log(probs), torch.arange(3), 5)
        assert mask.tolist() == want_mask
        assert targets.argmax(-1).tolist() == [2, 4, 7]  # the label comes from the refined row in both modes
        assert torch.equal(targets, _one_hot(torch.tensor([2, 4, 7])))
    soft, mask = refined_targets(refined, hard=False, tau=0.95)  # ssl.hard_label=false: the refined row itself
    assert torch.equal(soft, refined) and mask.tolist() == [1.0, 0.0, 0.0]


def test_state_round_trip_and_the_warm_up_step_is_kept_on_resume(tmp_path) -> None:
    rng = np.random.default_rng(1)
    cfg_a = _cfg("darp.warm=0.1", "darp.every=4")  # step 80 of the preset's 800
    a = DARP(cfg_a, _Ctx())
    feed = [(torch.tensor(rng.normal(size=(8, 10)), dtype=torch.float32), torch.tensor(rng.choice(60, 8, False)))
            for _ in range(100)]
    for step, (z, pos) in enumerate(feed[:90]):
        a.pseudo_targets(*_base(torch.softmax(z, -1)), z, pos, step)
    assert DARP(_cfg("darp.warm=0.1", "darp.every=4", "train.steps=2000"), _Ctx()).warm == 200  # a fresh run
    (tmp_path / "config.yaml").write_text(dump_yaml(cfg_a))
    cfg_b, note = resume_config(tmp_path, ["train.steps=2000"])  # a longer resumed run: darp.warm is pinned
    assert cfg_b.darp.warm == 80 and isinstance(cfg_b.darp.warm, int) and "darp.warm=0.1 stays at step 80" in note
    b = DARP(cfg_b, _Ctx())
    b.load_state_dict(a.state_dict())
    assert b.warm == 80 and b.refined and b.refinements == a.refinements == 3
    for step, (z, pos) in enumerate(feed[90:], start=90):
        out_a = a.pseudo_targets(*_base(torch.softmax(z, -1)), z, pos, step)
        out_b = b.pseudo_targets(*_base(torch.softmax(z, -1)), z, pos, step)
        assert torch.equal(out_a[0], out_b[0]) and torch.equal(out_a[1], out_b[1])
    assert a.refinements == b.refinements == 5  # steps 80, 84, 88, then 92, 96
    assert torch.equal(a.q_refine.table, b.q_refine.table) and torch.equal(a.q_orig.table, b.q_orig.table)


# ---------------------------------------------------------------- configuration
def test_stacks_on_fixmatch_only_and_checks_its_keys() -> None:
    for base in ("flexmatch", "freematch", "supervised"):
        with pytest.raises(ConfigError, match=r"^debias\.methods: darp replaces .*\(got \w+\)$"):
            _cfg(f"ssl.name={base}")
    for bad, key in (("darp.warm=1.5", "darp.warm"), ("darp.every=0", "darp.every"), ("darp.tol=0", "darp.tol"),
                     ("darp.target=1,0,2", "darp.target"), ("darp.target=a,b", "darp.target")):
        with pytest.raises(ConfigError, match=rf"^{key}: "):
            _cfg(bad)
    with pytest.raises(ConfigError, match=r"^darp\.target: needs one number per class \(10\); got 3$"):
        DARP(_cfg("darp.target=3,2,1"), _Ctx())
    est = [0.3] * 5 + [0.1] * 5  # a user's estimate (--est): rescaled to the pool size
    comp = DARP(_cfg("darp.target=" + ",".join(map(str, est))), _Ctx(n_ulb=60))
    np.testing.assert_allclose(comp.c.numpy(), np.array(est) * 60 / sum(est), rtol=1e-6)


@pytest.mark.slow
def test_a_run_with_refinements_resumes_exactly(tmp_path) -> None:
    tiny = ["debias.methods=darp", "darp.warm=1", "darp.every=2", "train.batch_size=8", "train.uratio=2",
            "train.steps=6", "train.eval_every=3", "train.progress=false", "train.device=cpu", "train.threads=1",
            "data.eval_subset=50"]
    cfg = load_config("mnist-lt-fixmatch", tiny)
    straight = build_trainer(cfg, tmp_path / "a")
    for _ in range(6):
        straight.train_step()
    first = build_trainer(load_config("mnist-lt-fixmatch", tiny), tmp_path / "b")
    for _ in range(3):
        first.train_step()
    (tmp_path / "b").mkdir()
    save_checkpoint(tmp_path / "b", first.step, first.state_dict(), 2)
    state, _ = load_latest(tmp_path / "b", torch.device("cpu"))
    assert state["components"]["darp"]["refinements"] == 1  # step 2
    resumed = build_trainer(load_config("mnist-lt-fixmatch", tiny), tmp_path / "b", resume=True)
    assert resumed.restore() is not None
    for _ in range(3):
        resumed.train_step()
    assert resumed._fingerprint() == straight._fingerprint()
    assert resumed.evaluate()["darp_refinements"] == 2  # steps 2 and 4 (resumed at step 3)
