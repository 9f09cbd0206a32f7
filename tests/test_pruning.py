"""DyTrim's pruning: the selection rules on constructed scores, unbiased rescaling, annealing,
checkpoint round-trip and exact resume, the shrinking budget, and short real-data runs of the presets."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys

import pytest
import torch

from dytrim.cli import main
from dytrim.config import ConfigError, load_config
from dytrim.config.schedule import step_of
from dytrim.debias.dytrim import DyTrim
from dytrim.engine.context import Progress, RunContext
from dytrim.engine.loop import Trainer
from dytrim.factory import build_trainer
from dytrim.pruning import PrunedSampler, capped_ratio, keep_count, keep_labeled, soft_prune

# these tiny runs use DyTrim's reference labeled rule (prune.min_keep=0) on a split with 1-image classes, so its
# start-up warning is expected (test_pruning.py checks the warning itself with pytest.warns)
pytestmark = [pytest.mark.filterwarnings("ignore:the labeled pruning rule:UserWarning")]


def _rows(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_keep_labeled_counts_and_highest_scores() -> None:
    gen = torch.Generator().manual_seed(0)
    counts = [50, 31, 17, 9, 4]
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])[torch.randperm(111, generator=gen)]
    scores = torch.rand(111, generator=gen)
    r = torch.tensor([0.41, 0.25, 0.9, 0.0, 1.0])
    kept = keep_labeled(scores, labels, r)
    for c, n in enumerate(counts):
        mine = kept[labels[kept] == c]
        assert len(mine) == int((1 - float(r[c])) * n)  # 29, 23, 1, 9, 0
        others = torch.tensor([i for i in range(111) if labels[i] == c and i not in set(mine.tolist())])
        if len(mine) and len(others):
            assert scores[mine].min() > scores[others].max()  # the kept are the highest scores
    assert [int((labels[kept] == c).sum()) for c in range(5)] == [29, 23, 1, 9, 0]
    floor = keep_labeled(scores, labels, r, min_keep=3)  # option: never fewer than 3 (or N_c) per class
    assert [int((labels[floor] == c).sum()) for c in range(5)] == [29, 23, 3, 9, 3]


def test_keep_labeled_reference_example() -> None:
    """Before the debias start r_c is the labeled frequency: the spec's kept counts at gamma = 100."""
    counts = [1500, 899, 539, 323, 193, 116, 69, 41, 25, 15]
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    prior = torch.tensor(counts, dtype=torch.float64) / sum(counts)
    kept = keep_labeled(torch.ones(len(labels)), labels, prior)
    assert torch.bincount(labels[kept]).tolist() == [895, 681, 460, 294, 182, 112, 67, 40, 24, 14]


def test_soft_prune_selects_below_mean_confident_and_rescales() -> None:
    scores = torch.tensor([0.1, 0.2, 0.3, 5.0, 6.0, 0.05, 0.15, 0.25, 0.35, 0.45])
    conf = torch.tensor([0.9] * 8 + [0.1, 0.1])
    kept, w = soft_prune(scores, conf, keep_rate=0.5, tau=0.5, generator=torch.Generator().manual_seed(1))
    # mean 1.285: candidates are positions 0,1,2,5,6,7 (8, 9 are below the mean but not confident)
    assert {3, 4, 8, 9} <= set(kept.tolist())
    chosen = [i for i in kept.tolist() if i in (0, 1, 2, 5, 6, 7)]
    assert len(chosen) == 3 and len(kept) == 7
    assert torch.equal(w[chosen], torch.full((3,), 2.0))
    assert float(w.sum()) == 10 + 3  # the rest weigh 1
    _, w_off = soft_prune(scores, conf, 0.5, 0.5, torch.Generator().manual_seed(1), rescale=False)
    assert torch.equal(w_off, torch.ones(10))


def test_soft_prune_rescaled_loss_is_unbiased() -> None:
    """E[sum over kept of w_i·L_i] = sum_i L_i with rescaling (checked over 4000 draws), not without.

    Exactly so only when r·|candidates| is an integer: int() rounds the kept count down (as the reference),
    which scales the candidates' expected share by int(r·n)/(r·n); the expectation below includes it."""
    gen = torch.Generator().manual_seed(0)
    losses = torch.distributions.Exponential(1.0).sample((400,))
    conf = torch.ones(400)
    full = float(losses.sum())
    cand = losses < losses.mean()
    n = int(cand.sum())
    expected = float(losses[~cand].sum()) + int(0.3 * n) / (0.3 * n) * float(losses[cand].sum())
    assert abs(expected - full) < 0.01 * full
    totals = {True: [], False: []}
    for rescale in (True, False):
        for _ in range(4000):
            kept, w = soft_prune(losses, conf, 0.3, 0.0, gen, rescale)
            totals[rescale].append(float((w[kept] * losses[kept]).sum()))
    est = torch.tensor(totals[True])
    assert abs(float(est.mean()) - expected) < 4 * float(est.std()) / 4000**0.5 + 1e-6 * full
    assert float(torch.tensor(totals[False]).mean()) < 0.95 * full  # without rescaling the loss shrinks


def test_pruned_sampler_passes_and_renew() -> None:
    lists = [torch.arange(10), torch.tensor([3, 4, 5])]
    calls = []

    def select() -> torch.Tensor:
        calls.append(1)
        return lists[min(len(calls) - 1, 1)]

    s = PrunedSampler(select, batch_size=4, seed=0)
    first = torch.cat([s.next(), s.next()])
    assert len(set(first.tolist())) == 8 and s.passes == 1  # without replacement within a pass
    b = s.next()  # 2 left < 4: a new selection
    assert s.passes == 2 and set(b.tolist()) <= {3, 4, 5}  # a list smaller than a batch is repeated
    s.renew()
    s.next()
    assert s.passes == 3


def _trainer(tmp_path, *overrides: str) -> Trainer:
    cfg = load_config("mnist-lt-fixmatch", ["debias.methods=cdmad,dytrim", "train.progress=false",
                                            "train.eval_every=10", *overrides])
    return build_trainer(cfg, tmp_path)


def test_dytrim_prunes_after_first_pass_and_anneals(tmp_path) -> None:
    t = _trainer(tmp_path, "train.steps=100", "debias.start=0", "prune.anneal=0.5")
    dy = next(c for c in t.components if isinstance(c, DyTrim))
    n_lb, n_ulb = len(t.data.lb_idx), len(t.data.ulb_idx)
    t.train_step()
    assert len(t.lb_sampler.kept) == n_lb and len(t.ulb_sampler.kept) == n_ulb  # first pass: full data
    while t.lb_sampler.passes < 2 or t.ulb_sampler.passes < 2:
        t.train_step()
    assert t.step < 50
    r = dy.current_prune_ratio()
    assert torch.allclose(r, torch.softmax(dy.z_I().double(), -1).cpu())  # r_c = pi(I) after debias start
    assert len(t.lb_sampler.kept) < n_lb and len(t.ulb_sampler.kept) < n_ulb
    assert float(dy.w_ulb.max()) == pytest.approx(1 / 0.3)
    counts = torch.bincount(dy.lb_labels, minlength=10)
    kept = torch.bincount(dy.lb_labels[t.lb_sampler.kept], minlength=10)
    assert kept.tolist() == [int((1 - float(dy.prune_ratio[c])) * int(counts[c])) for c in range(10)]
    t.step = dy.step = 50  # annealing: the next selection is the full data with unit weights
    t.ulb_sampler.renew()
    t.lb_sampler.renew()
    t.train_step()
    assert len(t.ulb_sampler.kept) == n_ulb and len(t.lb_sampler.kept) == n_lb
    assert torch.equal(dy.w_ulb, torch.ones_like(dy.w_ulb))


@pytest.mark.slow
def test_dytrim_state_round_trip(tmp_path) -> None:
    a = _trainer(tmp_path / "a", "train.steps=100", "debias.start=0")
    for _ in range(45):
        a.train_step()
    buf = io.BytesIO()  # through bytes, as a checkpoint (a live state_dict shares tensors with `a`)
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=False)
    b = _trainer(tmp_path / "b", "train.steps=100", "debias.start=0")
    b.load_state_dict(state)
    da, db = (next(c for c in t.components if isinstance(c, DyTrim)) for t in (a, b))
    for key in ("score_lb", "score_ulb", "conf_ulb", "w_ulb"):
        assert torch.equal(getattr(da, key), getattr(db, key)), key
    assert torch.equal(a.ulb_sampler.perm, b.ulb_sampler.perm) and a.ulb_sampler.pos == b.ulb_sampler.pos
    for _ in range(15):  # both continue identically, across a re-selection
        sa, sb = a.train_step(), b.train_step()
        assert sa == sb
    assert torch.equal(da.score_ulb, db.score_ulb) and torch.equal(da.w_ulb, db.w_ulb)


@pytest.mark.slow
def test_dytrim_resume_matches_uninterrupted_run(tmp_path) -> None:
    """A 60-step run 'crashes' after step 30 (later checkpoints and outputs removed) and resumes: the
    metrics, pruning fields included, equal the uninterrupted run's bit for bit."""
    straight = tmp_path / "straight"
    assert main(["train", "--preset", "mnist-lt-fixmatch", "--set", "debias.methods=cdmad,dytrim", "--set",
                 "debias.start=10", "--set", "train.eval_every=10", "--set", "train.progress=false", "--set",
                 "train.steps=60", "--set", "train.keep_ckpts=10", "--out", str(straight)]) == 0
    crashed = tmp_path / "crashed"
    shutil.copytree(straight, crashed)
    for f in crashed.glob("ckpt_*.pt"):
        if int(f.stem.split("_")[1]) > 30:
            f.unlink()
    (crashed / "summary.json").unlink()
    assert main(["train", "--resume", str(crashed)]) == 0
    volatile = {"wall_s", "images_per_s"}
    a = [{k: v for k, v in r.items() if k not in volatile} for r in _rows(straight)]
    b = [{k: v for k, v in r.items() if k not in volatile} for r in _rows(crashed)]
    assert a == b and a[-1]["pruning"]["passes_ulb"] >= 2


@pytest.mark.slow
def test_shrink_budget_saves_updates(tmp_path) -> None:
    out = tmp_path / "shrink"
    assert main(["train", "--preset", "mnist-lt-fixmatch", "--set", "debias.methods=cdmad,dytrim",
                 "--set", "prune.budget=shrink", "--set", "train.steps=120", "--set", "train.eval_every=30",
                 "--set", "train.progress=false", "--set", "prune.anneal=1.0", "--out", str(out)]) == 0
    rows = _rows(out)
    assert rows[-1]["step"] == 120 and [r["step"] for r in rows][:-1] == sorted({r["step"] for r in rows[:-1]})
    assert rows[-1]["updates"] < 120  # pruned passes advance the clock by |U| / |kept U| per update
    assert rows[-1]["samples_bwd"] < 120 * (16 + 32)
    assert (out / "pruning.png").exists()


def test_resample_and_dytrim_exclusive() -> None:
    with pytest.raises(ConfigError, match="labeled sampler"):
        load_config("mnist-lt-fixmatch", ["debias.methods=resample,dytrim"])
    with pytest.raises(ConfigError, match="prune.keep_rate"):
        load_config("mnist-lt-fixmatch", ["prune.keep_rate=0"])


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["cpu-cifar10lt-dytrim", "cpu-cifar10lt-flexmatch-dytrim",
                                    "cpu-cifar10lt-freematch-dytrim", "cpu-cifar10lt-dytrim-shrink"])
def test_dytrim_presets_short_real_run(tmp_path, shared_data, preset) -> None:
    out = tmp_path / preset
    cmd = [sys.executable, "-m", "dytrim", "train", "--preset", preset, "--set", f"data.root={shared_data}",
           "--set", "train.steps=24", "--set", "train.eval_every=12", "--set", "debias.start=6",
           "--set", "data.eval_subset=500", "--set", "train.progress=false", "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = _rows(out)
    p = rows[-1]["pruning"]
    assert {"r_c", "kept_lb_per_class", "kept_ulb", "rescaled_frac", "samples_fwd", "samples_bwd"} <= set(p)
    assert len(p["pi_I"]) == 10 and abs(sum(p["pi_I"]) - 1) < 1e-4
    cfg = load_config(preset).prune
    assert (cfg.min_keep, cfg.max_prior_ratio) == (1, 1.0)  # our presets' rule (README DyTrim)
    assert len(p["r_c"]) == 10 and min(p["kept_lb_per_class"]) >= 1
    assert "bacc_debiased" in rows[-1] and (out / "pruning.png").exists()


@pytest.mark.parametrize("preset", ["paper-cifar10lt-g50-dytrim", "paper-cifar10lt-g100-dytrim",
                                    "paper-cifar10lt-g150-dytrim", "paper-cifar100lt-dytrim"])
def test_paper_dytrim_presets_resolve(preset) -> None:
    cfg = load_config(preset)
    assert cfg.debias.methods == ["cdmad", "dytrim"] and cfg.debias.baseline == "zeros"
    assert (cfg.prune.keep_rate, cfg.prune.anneal, cfg.prune.tau, cfg.prune.budget) == (0.3, 0.875, 0.0, "fixed")
    assert cfg.train.steps == 250_000 and step_of(cfg, "debias.start") == 50_500 and cfg.model.name == "wrn_28_2"


# ---------------------------------------------------------------- rules that never erase a class
MNIST_LT = [100, 59, 35, 21, 12, 7, 4, 2, 1, 1]  # mnist-lt labeled counts (N1 100, gamma 100)
C10_LT = [1500, 899, 539, 323, 193, 116, 69, 41, 25, 15]


def _ctx(counts: list[int]) -> RunContext:
    """A RunContext with these labeled class counts (empty pools: enough to build DyTrim)."""
    net = torch.nn.Linear(1, len(counts))
    return RunContext(model=net, ema_model=net, device=torch.device("cpu"), seed=0,
                      classes=[str(c) for c in range(len(counts))], lb_counts=counts,
                      lb_labels=torch.zeros(0, dtype=torch.int64), n_ulb=0, image_shape=(1, 28, 28),
                      uses_unlabeled=True, progress=Progress(total_steps=100), baseline=torch.zeros(1, 1, 28, 28))


def test_keep_count_reference_floor_round_and_min_keep() -> None:
    assert keep_count(1, 0.004) == 0  # the reference erases a 1-image class for any r_c > 0
    assert keep_count(1, 0.0) == 1 and keep_count(15, 0.004) == 14 and keep_count(100, 0.885) == 11
    assert keep_count(1, 0.004, rounding="round") == 1 and keep_count(1, 0.6, rounding="round") == 0
    assert keep_count(10, 0.75, rounding="round") == 3 and keep_count(10, 0.75) == 2  # 2.5: halves up
    assert keep_count(1, 1.0, min_keep=1) == 1 and keep_count(3, 1.0, min_keep=5) == 3  # at most N_c
    assert keep_count(0, 0.5, min_keep=1) == 0


def test_capped_ratio() -> None:
    prior = torch.tensor([0.41, 0.25, 0.004], dtype=torch.float64)
    pi = torch.tensor([0.88, 0.1, 0.02], dtype=torch.float64)
    assert torch.equal(capped_ratio(pi, prior), pi)  # reference: r_c = pi_theta(I)_c
    assert torch.allclose(capped_ratio(pi, prior, max_prior_ratio=1.0), torch.tensor([0.41, 0.1, 0.004]).double())
    assert torch.allclose(capped_ratio(pi, prior, max_ratio=0.5), torch.tensor([0.5, 0.1, 0.02]).double())


def _min_kept(prune_cfg, counts: list[int], ratios: torch.Tensor) -> int:
    """Fewest labeled images any class keeps under the configured rule, over rows of r_c (each [C])."""
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    prior = torch.tensor(counts, dtype=torch.float64) / sum(counts)
    worst = min(counts)
    for r in ratios:
        r = capped_ratio(r, prior, prune_cfg.max_ratio, prune_cfg.max_prior_ratio)
        kept = keep_labeled(torch.rand(len(labels)), labels, r, prune_cfg.min_keep, prune_cfg.rounding)
        worst = min(worst, int(torch.bincount(labels[kept], minlength=len(counts)).min()))
    return worst


def _ratio_grid(n_cls: int) -> torch.Tensor:
    """r_c over [0, 1]: every class at each of 0, 0.001, ..., 1 (all equal), one-hot extremes, random rows."""
    grid = torch.linspace(0, 1, 1001, dtype=torch.float64)[:, None].repeat(1, n_cls)
    extremes = torch.eye(n_cls, dtype=torch.float64)
    rand = torch.rand(500, n_cls, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return torch.cat([grid, extremes, rand])


OUR_DYTRIM_PRESETS = ["mnist-lt-dytrim", "cpu-cifar10lt-dytrim", "cpu-cifar10lt-dytrim-shrink",
                      "cpu-cifar10lt-flexmatch-dytrim", "cpu-cifar10lt-freematch-dytrim",
                      "cpu-cifar10lt-dytrim-abl-lb", "cpu-cifar10lt-dytrim-abl-norescale"]


@pytest.mark.slow
@pytest.mark.parametrize("preset", OUR_DYTRIM_PRESETS)
def test_our_presets_rule_keeps_every_class_for_any_ratio(preset) -> None:
    """The rule of our own presets keeps >= 1 labeled image of every class for any r_c in [0, 1]."""
    p = load_config(preset).prune
    for counts in (MNIST_LT, C10_LT, [1] * 10, [2, 1, 1]):
        assert _min_kept(p, counts, _ratio_grid(len(counts))) >= 1, counts


@pytest.mark.slow
def test_reference_rule_erases_a_class_so_the_check_can_fail() -> None:
    p = load_config("paper-cifar10lt-g100-dytrim").prune
    assert (p.min_keep, p.rounding, p.max_ratio, p.max_prior_ratio, p.ratio_ema) == (0, "floor", 1.0, 0.0, 0.0)
    assert _min_kept(p, MNIST_LT, _ratio_grid(10)) == 0
    assert _min_kept(p, C10_LT, _ratio_grid(10)) == 0  # r_c > 14/15 erases the CIFAR-10-LT tail too


@pytest.mark.parametrize("preset", ["paper-cifar10lt-g50-dytrim", "paper-cifar10lt-g100-dytrim",
                                    "paper-cifar10lt-g150-dytrim", "paper-cifar100lt-dytrim", "paper-stl10lt-dytrim"])
def test_paper_presets_keep_the_reference_rule(preset) -> None:
    p = load_config(preset).prune
    assert (p.min_keep, p.rounding, p.max_ratio, p.max_prior_ratio, p.ratio_ema) == (0, "floor", 1.0, 0.0, 0.0)


def test_erasure_warning_names_the_key() -> None:
    cfg = load_config("mnist-lt-dytrim", ["prune.min_keep=0", "prune.max_prior_ratio=0", "prune.ratio_ema=0"])
    with pytest.warns(UserWarning, match=r"class 8: N_c = 1, class 9: N_c = 1.*prune\.min_keep=1"):
        DyTrim(cfg, _ctx(MNIST_LT))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DyTrim(load_config("mnist-lt-dytrim", ["prune.min_keep=1"]), _ctx(MNIST_LT))  # the floor: no warning
        DyTrim(load_config("paper-cifar10lt-g100-dytrim"), _ctx(C10_LT))  # 15 images: int(15·(1 - 0.40)) = 9
        DyTrim(load_config("mnist-lt-dytrim", ["prune.min_keep=0", "prune.labeled=false"]), _ctx(MNIST_LT))


@pytest.mark.parametrize(("key", "value"), [("prune.rounding", "ceil"), ("prune.max_ratio", "1.5"),
                                            ("prune.max_prior_ratio", "-1"), ("prune.ratio_ema", "1.0")])
def test_rule_keys_validated(key, value) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("mnist-lt-dytrim", [f"{key}={value}"])


@pytest.mark.slow
def test_rule_options_in_training_and_logged_fields(tmp_path) -> None:
    """EMA of pi(I), prior cap and floor in a short run: r_c obeys the cap, every class keeps an image, and
    each evaluation logs pi_I, pi_I_ema and the masked pseudo-label class shares."""
    t = _trainer(tmp_path, "train.steps=80", "debias.start=5", "prune.min_keep=1", "prune.max_prior_ratio=1.0",
                 "prune.ratio_ema=0.9", "prune.anneal=1.0")
    dy = next(c for c in t.components if isinstance(c, DyTrim))
    for _ in range(60):
        t.train_step()
    assert t.lb_sampler.passes >= 2
    assert bool((dy.prune_ratio <= dy.lb_prior + 1e-12).all())
    assert int(torch.bincount(dy.lb_labels[t.lb_sampler.kept], minlength=10).min()) >= 1
    p = t.evaluate()["pruning"]
    assert len(p["pi_I"]) == 10 and abs(sum(p["pi_I"]) - 1) < 1e-4 and abs(sum(p["pi_I_ema"]) - 1) < 1e-4
    assert abs(sum(p["pseudo_dist"]) - 1) < 1e-4 and p["pseudo_n"] > 0
    assert "pseudo_dist" not in t.evaluate()["pruning"]  # reset at each evaluation: no steps in between
