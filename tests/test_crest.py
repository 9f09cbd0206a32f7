"""CReST / CReST+ against numpy re-derivations of google-research/crest (baselines-spec.md §4.6): pick rates and
counts, the temperature sequence, the alignment, the +LA prediction and p_data; and its generations as stages: the
labeled pool grown by the picks, every generation from the initial weights, exact resume inside a generation."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from dytrim.config import ConfigError, load_config
from dytrim.debias.crest import align, class_profile, pick, pick_rates, temperature
from dytrim.factory import build_trainer

GAMMA100 = [1500, 898, 538, 322, 193, 115, 69, 41, 24, 15]


def test_pick_rates_equal_the_spec_table() -> None:
    k = np.arange(10)
    gt_p_data = np.power(100.0, -k / 9) / np.power(100.0, -k / 9).sum()  # load_raw_data: ratio^(k/(K-1)), ratio 1/γ
    official = np.power(gt_p_data[::-1] / gt_p_data[0], 1 / 3)  # get_split's sample_rate ** (1 / alpha)
    profile = class_profile(GAMMA100, "analytic", 100)
    np.testing.assert_allclose(profile.numpy(), gt_p_data, rtol=1e-12)
    np.testing.assert_allclose(pick_rates(profile, 3.0).numpy(), official, rtol=1e-12)
    spec = [.215, .256, .303, .359, .426, .506, .600, .711, .843, 1]  # baselines-spec.md §4.1, α 3, γ 100
    np.testing.assert_allclose(pick_rates(profile, 3.0).numpy(), spec, atol=6e-4)
    counts = class_profile(GAMMA100, "counts", 100)  # crest.prior=counts: the int-rounded counts
    np.testing.assert_allclose(pick_rates(counts, 3.0).numpy(), np.power(np.array(GAMMA100[::-1]) / 1500, 1 / 3))
    shuffled = [GAMMA100[i] for i in (3, 0, 9, 1, 2, 4, 5, 6, 7, 8)]  # ranks by count, not by index
    rates = pick_rates(class_profile(shuffled, "analytic", 100), 3.0)
    assert rates[1].item() == pytest.approx(official[0]) and rates[2].item() == pytest.approx(1.0)


def test_picks_equal_the_official_selection() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(500, 10)) + np.linspace(2, 0, 10)  # head-heavy predictions
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    rates = np.power(np.array(GAMMA100[::-1], dtype=np.float64) / GAMMA100[0], 1 / 3)
    want_pos, want_lab = [], []
    for c in range(10):  # get_pseudo_label_list + get_split: by predicted class, most confident first, int(n * rate)
        idx = np.where(probs.argmax(1) == c)[0]
        idx = idx[np.argsort(-probs[idx].max(1), kind="stable")]
        take = int(len(idx) * rates[c])
        want_pos += list(idx[:take])
        want_lab += [c] * take
    pos, lab = pick(torch.from_numpy(probs), torch.from_numpy(rates))
    assert pos.tolist() == want_pos and lab.tolist() == want_lab


def test_temperature_alignment_and_la_prediction_equal_the_formulas() -> None:
    assert [round(temperature(g, 6, 0.5), 10) for g in range(6)] == [1.0, 0.9, 0.8, 0.7, 0.6, 0.5]
    assert temperature(0, 1, 0.5) == 1.0  # one generation: the official formula divides by zero
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(10), size=8)
    prior = np.array(GAMMA100, dtype=np.float64) / sum(GAMMA100)
    target = prior ** 0.7 / (prior ** 0.7).sum()
    p_model = rng.dirichlet(np.ones(10))
    official = p * (1e-6 + target) / (1e-6 + p_model)
    official = official / official.sum(1, keepdims=True)
    ours = align(torch.from_numpy(p), torch.from_numpy(target), torch.from_numpy(p_model)).numpy()
    np.testing.assert_allclose(ours, official, rtol=1e-12)


SETS = ["debias.methods=crest", "crest.generations=3", "train.steps=6", "train.eval_every=3", "train.batch_size=8",
        "train.uratio=2", "data.eval_subset=50", "train.progress=false", "train.threads=1", "train.device=cpu",
        "crest.align=true"]


def _trainer(out: Path, *sets: str, resume: bool = False):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_trainer(load_config("mnist-lt-fixmatch", [*SETS, *sets]), out, resume=resume)


def test_a_generation_starts_from_the_initial_weights_with_the_picks_as_labeled_data(tmp_path) -> None:
    t = _trainer(tmp_path / "r")
    init = {k: v.clone() for k, v in t.model.state_dict().items()}
    crest = next(c for c in t.components if c.name == "crest")
    assert [s.name for s in t.plan.stages] == ["gen1", "gen2"] and t.plan.total == 18 and crest in t.active
    for _ in range(6):
        t.train_step()
    p_data = crest.p_data  # after the main stage: the 0.999-EMA of the labeled batches' class frequencies
    assert not torch.equal(p_data, torch.full((10,), 0.1)) and p_data.sum().item() == pytest.approx(1.0)
    t._enter_stage(1)  # what the first step of gen1 does before it trains
    assert all(torch.equal(t.model.state_dict()[k], init[k]) for k in init)  # from the run's initial weights
    assert all(torch.equal(a, b) for a, b in zip(t.ema.model.state_dict().values(), init.values(), strict=True))
    n_lb, (pos, lab) = len(t.data.lb_idx), crest.picks
    assert len(t.lb_pool[0]) == n_lb + len(pos) and len(pos) > 0
    assert torch.equal(t.lb_pool[0][n_lb:], t.data.ulb_idx[pos]) and torch.equal(t.lb_pool[1][n_lb:], lab)
    assert torch.equal(crest.p_data, torch.full((10,), 0.1))  # p_data and p_model start anew each generation


def test_the_la_prediction_and_p_data_update() -> None:
    rng = np.random.default_rng(2)
    p_data = np.full(10, 0.1)
    for _ in range(5):
        y = rng.integers(0, 10, size=8)
        p_data = p_data * 0.999 + np.eye(10)[y].mean(0) * 0.001  # util.PData.update
    z = rng.normal(size=(4, 10))
    official = (z - np.log(p_data)).argmax(1)  # eval_step: logits - log(p_data())
    from dytrim.debias.crest import CReST

    comp = CReST.__new__(CReST)
    comp.p_data = torch.from_numpy(p_data)
    assert comp.eval_logits(torch.from_numpy(z)).argmax(1).tolist() == official.tolist()


@pytest.mark.parametrize("stop_at", [6, 9], ids=["at-the-switch", "inside-a-generation"])
def test_a_resumed_run_equals_one_uninterrupted(tmp_path, stop_at: int) -> None:
    from test_stages import resumed_against_straight

    resumed, straight = resumed_against_straight(_trainer, tmp_path, stop_at)
    assert torch.equal(resumed.lb_pool[0], straight.lb_pool[0]) and torch.equal(resumed.lb_pool[1], straight.lb_pool[1])


def test_config_is_checked() -> None:
    for bad, key in (("crest.generations=0", "crest.generations"), ("crest.t_min=0", "crest.t_min"),
                     ("crest.alpha=0", "crest.alpha")):
        with pytest.raises(ConfigError, match=rf"^{key}: "):
            load_config("mnist-lt-fixmatch", ["debias.methods=crest", bad])
    with pytest.raises(ConfigError, match=r"^debias\.methods: crest trains generations of FixMatch"):
        load_config("mnist-lt-fixmatch", ["debias.methods=crest", "ssl.name=flexmatch"])


@pytest.mark.slow
def test_two_processes_pick_the_same_images_and_stay_in_sync(tmp_path) -> None:
    import json
    import os
    import subprocess
    import sys

    sets = [x for s in SETS for x in ("--set", s)]
    out = tmp_path / "two"
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          "29571", "-m", "dytrim", "train", "--preset", "mnist-lt-fixmatch", *sets, "--out", str(out)],
                         env=os.environ | {"OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == ["main", "main", "gen1", "gen1", "gen2", "gen2"]
    assert all(r["ranks_in_sync"] for r in rows)  # the same picks, pool, weights and statistics on both ranks
    assert all(r["crest_picks"] > 0 for r in rows[2:])
