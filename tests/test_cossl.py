"""CoSSL against re-derivations of YUE-FAN/CoSSL (`utils/tfe_init.py`, `train_cifar_fix_cossl.py`;
baselines-spec.md §6.6): imprinting, the synthetic set's sizes and values, the TFE replacement (its probabilities, a
Monte Carlo frequency and the exact seeded draws), the teacher's Adam/EMA step, pseudo-labels and prediction from
the teacher on EMA features (not the student's head), a run across the stage switch and exact resume inside stage 2."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dytrim.cli import main
from dytrim.config import ConfigError, load_config
from dytrim.debias.cossl_parts import (
    Teacher,
    default_linear,
    imprint,
    synthetic_features,
    synthetic_sizes,
    tfe_probability,
    tfe_replace,
)
from dytrim.engine.components import eval_model
from dytrim.engine.runlog import read_rows
from dytrim.export import load_exported
from dytrim.factory import build_trainer
from dytrim.inference import load_run

GAMMA100 = [1500, 899, 539, 323, 193, 116, 69, 41, 25, 15]  # make_imb_data(1500, 10, 100)
SETS = ["train.steps=6", "cossl.steps=6", "cossl.warm_steps=20", "train.eval_every=3", "train.batch_size=8",
        "train.uratio=2", "data.eval_subset=50", "train.progress=false", "train.threads=1", "train.device=cpu"]


def _trainer(out: Path, *sets: str, resume: bool = False):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_trainer(load_config("mnist-lt-cossl", [*SETS, *sets]), out, resume=resume)


def _to_stage_two(t) -> None:
    while t.plan.index == 0:
        t.train_step()


def test_imprinted_rows_are_unit_norm_normalised_class_means() -> None:
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(40, 6)) + 0.5
    labels = np.arange(40) % 4
    w = imprint(torch.from_numpy(feats), torch.from_numpy(labels), 4).numpy()
    for c in range(4):  # weight_imprint: tmp = mean of class c; row = tmp / ||tmp||_2
        tmp = feats[labels == c].mean(0)
        np.testing.assert_allclose(w[c], tmp / np.sqrt((tmp ** 2).sum()), rtol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), 1.0, rtol=1e-12)


def test_synthetic_sizes_and_values_equal_the_official_tfe() -> None:
    assert synthetic_sizes(GAMMA100) == [1500 - n for n in GAMMA100]
    assert sum(synthetic_sizes(GAMMA100)) == 15000 - 3720 == 11280  # baselines-spec.md §6.1 (iii)
    counts = [6, 3, 2]
    rng = np.random.default_rng(1)
    y = np.array([0, 1, 0, 2, 0, 1, 0, 2, 0, 1, 0])  # 6, 3, 2 labeled features
    lb, ub = rng.normal(size=(11, 5)), rng.normal(size=(7, 5))
    lp, up = rng.dirichlet(np.ones(3), size=11), rng.dirichlet(np.ones(3), size=7)
    ours_x, ours_y = synthetic_features(*(torch.from_numpy(a) for a in (lb, y, lp, ub, up)), counts, 0.75,
                                        np.random.default_rng(7))
    twin, want_x, want_y = np.random.default_rng(7), [], []
    for c in range(3):  # TFE(): a by choice with replacement, b = the first `need` of the others sorted by p_c
        need = max(counts) - counts[c]
        if need == 0:
            continue
        own, other = lb[y == c], np.concatenate([lb[y != c], ub])
        order = np.argsort(-np.concatenate([lp[y != c, c], up[:, c]]), kind="stable")
        a_idx = twin.choice(len(own), need, replace=True)
        lam = twin.beta(0.75, 0.75, size=need)[:, None]
        want_x.append(lam * own[a_idx] + (1 - lam) * other[order[:need]])
        want_y += [c] * need
    assert ours_y.tolist() == want_y and [want_y.count(c) for c in range(3)] == [0, 3, 4]
    np.testing.assert_allclose(ours_x.numpy(), np.concatenate(want_x), rtol=1e-12)


def test_tfe_probabilities_equal_the_spec_table() -> None:
    spec = [0, .401, .641, .785, .871, .923, .954, .973, .983, .99]  # baselines-spec.md §6.1, γ = 100
    official = [(max(GAMMA100) - n) / max(GAMMA100) for n in GAMMA100]  # train(): tfe_prob
    np.testing.assert_allclose(tfe_probability(GAMMA100).numpy(), official, rtol=1e-12)
    np.testing.assert_allclose(tfe_probability(GAMMA100).numpy(), spec, atol=5e-4)


def test_tfe_replacement_frequency_and_exact_draws() -> None:
    prob = tfe_probability(GAMMA100).float()
    n = 20_000
    y = torch.arange(n) % 10
    x, u = torch.zeros(n, 3), torch.ones(n, 3)
    out, hit = tfe_replace(x, y, u, prob, 0.6, np.random.default_rng(3))
    for c in range(10):  # Monte Carlo: within 4 standard deviations of (N_max − N_c) / N_max
        p, m = float(prob[c]), n // 10
        freq = hit[y == c].float().mean().item()
        assert abs(freq - p) <= 4 * math.sqrt(p * (1 - p) / m) + 1e-9, (c, freq, p)
    blended = out[hit][:, 0]  # 1 − λ with λ ~ U(0.6, 1)
    assert torch.all(blended >= 0) and torch.all(blended <= 0.4 + 1e-6)
    assert torch.equal(out[~hit], x[~hit])
    rng = np.random.default_rng(5)  # exact: B uniforms r, then B λ ~ U(max_lam, 1); x -> λx + (1 − λ)u where r < p_y
    xs, us, ys = torch.randn(16, 4), torch.randn(16, 4), torch.arange(16) % 10
    ours, _ = tfe_replace(xs, ys, us, prob, 0.6, np.random.default_rng(5))
    r, lam = rng.random(16), rng.uniform(0.6, 1.0, size=16)
    p = np.array([(1500 - GAMMA100[k]) / 1500 for k in ys.tolist()])
    want = np.where((r < p)[:, None], lam[:, None] * xs.numpy() + (1 - lam[:, None]) * us.numpy(), xs.numpy())
    np.testing.assert_allclose(ours.numpy(), want, rtol=1e-6, atol=1e-6)


def test_default_init_and_the_teacher_step_equal_the_formulas() -> None:
    head = default_linear(8, 3, np.random.default_rng(2))
    twin = np.random.default_rng(2)  # reset_parameters: kaiming_uniform(a=√5) and bias, both U(−1/√8, 1/√8)
    np.testing.assert_allclose(head.weight.detach().numpy(), twin.uniform(-8 ** -0.5, 8 ** -0.5, (3, 8)), rtol=1e-6)
    np.testing.assert_allclose(head.bias.detach().numpy(), twin.uniform(-8 ** -0.5, 8 ** -0.5, 3), rtol=1e-6)
    w0, b0 = head.weight.detach().double().clone(), head.bias.detach().double().clone()
    teacher = Teacher(head, lr=0.002, weight_decay=5e-4, ema_decay=0.999)
    f, t = torch.randn(5, 8), F.one_hot(torch.tensor([0, 1, 2, 1, 0]), 3).float()
    teacher.step(f, t)
    w, b = w0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    loss = -(torch.log_softmax(f.double() @ w.T + b, 1) * t.double()).sum(1).mean()
    gw, gb = torch.autograd.grad(loss, [w, b])
    gw = gw + 5e-4 * w0  # Adam's L2 on the weight group only; first Adam step: p − lr g / (|g| + 1e-8)
    want_w, want_b = w0 - 0.002 * gw / (gw.abs() + 1e-8), b0 - 0.002 * gb / (gb.abs() + 1e-8)
    np.testing.assert_allclose(head.weight.detach().double().numpy(), want_w.numpy(), atol=1e-6)
    np.testing.assert_allclose(head.bias.detach().double().numpy(), want_b.numpy(), atol=1e-6)
    np.testing.assert_allclose(teacher.ema.weight.double().numpy(), (0.999 * w0 + 0.001 * want_w).numpy(), atol=1e-6)


def test_pseudo_labels_and_prediction_come_from_the_teacher_on_ema_features(tmp_path) -> None:
    t = _trainer(tmp_path / "r")
    _to_stage_two(t)
    (comp,) = t.active
    assert comp.name == "cossl" and comp.ready
    batch = t._views()
    ema = t.ema.model
    with torch.no_grad():
        ema.eval()
        f = ema.forward_features(batch.x_ulb_w)
        p_teacher = F.softmax(comp.teacher.head(f), dim=1)  # the online teacher, before its update of this step
        p_student = F.softmax(t.model(batch.x_ulb_w), dim=1)
    res = t.step_fn.run(batch, t._forward, t.step)
    assert torch.equal(res.targets.argmax(1), p_teacher.argmax(1))
    assert torch.equal(res.targets.sum(1), torch.ones(len(f)))  # one-hot
    assert torch.equal(res.mask, (p_teacher.max(1).values >= 0.95).float())
    with torch.no_grad():  # a teacher that says 3 everywhere: every pseudo-label is 3, whatever the student says
        comp.teacher.head.weight.zero_()
        comp.teacher.head.bias.copy_(torch.tensor([0.0, 0, 0, 50, 0, 0, 0, 0, 0, 0]))
    res = t.step_fn.run(t._views(), t._forward, t.step)
    assert set(res.targets.argmax(1).tolist()) == {3} and bool(res.mask.all())
    assert set(p_student.argmax(1).tolist()) != {3}
    x = batch.x_lb
    with torch.no_grad():  # evaluation: the EMA backbone through the EMA teacher head
        want = comp.teacher.ema(ema.eval().forward_features(x))
        got = eval_model(ema, t.active).eval()(x)
    assert torch.equal(got, want) and not torch.equal(got, ema(x))


@pytest.mark.slow
def test_a_run_crosses_the_switch_and_the_warm_up_runs_once(tmp_path) -> None:
    out = tmp_path / "r"
    sets = [x for s in SETS for x in ("--set", s)]
    assert main(["train", "--preset", "mnist-lt-cossl", *sets, "--out", str(out)]) == 0
    rows = read_rows(out / "metrics.jsonl")
    assert [(r["step"], r["stage"]) for r in rows] == [(3, "main"), (6, "main"), (9, "cossl"), (12, "cossl")]
    assert "cossl_teacher_loss" not in rows[1] and rows[2]["cossl_synthetic"] == rows[3]["cossl_synthetic"] > 0


@pytest.mark.parametrize("stop_at", [6, 9], ids=["at-the-switch", "inside-stage-two"])
def test_resume_keeps_the_warm_up_and_is_bit_identical(tmp_path, stop_at: int) -> None:
    from test_stages import resumed_against_straight

    calls = []

    def trainer(out: Path, resume: bool = False):
        t = _trainer(out, resume=resume)
        (comp,) = [c for c in t.components if c.name == "cossl"]
        original = comp.warm_up
        comp.warm_up = lambda: (calls.append(out.name), original())[1]
        return t

    resumed, straight = resumed_against_straight(trainer, tmp_path, stop_at)
    # inside stage 2 the first part made the warm-up and the resumed run loads it; at the switch (a checkpoint of the
    # main stage's last step, before the stage is entered) only the resumed run makes it, from the restored EMA model
    assert calls == ["a", "b"]
    a, b = (next(c for c in x.components if c.name == "cossl") for x in (resumed, straight))
    for key in ("head", "ema"):
        for u, v in zip(a.teacher.state_dict()[key].values(), b.teacher.state_dict()[key].values(), strict=True):
            assert torch.equal(u, v)


def test_config_is_checked_and_the_stage_is_declared(tmp_path) -> None:
    for bad, key in (("cossl.steps=0", "cossl.steps"), ("cossl.max_lam=1.5", "cossl.max_lam"),
                     ("cossl.lr=0", "cossl.lr"), ("cossl.ema_decay=1", "cossl.ema_decay"),
                     ("cossl.pseudo_labels=mixed", "cossl.pseudo_labels")):
        with pytest.raises(ConfigError, match=rf"^{key}"):
            load_config("mnist-lt-cossl", [bad])
    with pytest.raises(ConfigError, match=r"^debias.methods: "):
        load_config("mnist-lt-cossl", ["ssl.name=flexmatch"])
    t = _trainer(tmp_path / "r")
    (stage,) = t.plan.stages
    assert (stage.name, stage.steps, stage.start_from, stage.new_head, stage.trains, stage.lr, stage.unlabeled,
            stage.ema, stage.hooks) == ("cossl", 6, "student", False, "all", None, True, "track", "owner")
    assert (stage.optimizer, stage.weight_decay, stage.ema_wd) == ("keep", 0.02 * t.cfg.optim.lr, 0.0)
    assert t.plan.bounds == [0, 6, 12] and t.active == []
    for name, main_steps, stage_steps in (("mnist-lt-cossl", 640, 160), ("cpu-cifar10lt-cossl", 12000, 3000),
                                          ("paper-cifar10lt-g100-cossl", 200000, 50000)):
        cfg = load_config(name)
        assert (cfg.train.steps, cfg.cossl.steps, cfg.cossl.max_lam, cfg.ssl.p_cutoff) == (main_steps, stage_steps,
                                                                                           0.6, 0.95), name


@pytest.mark.slow
def test_two_processes_stay_in_sync_and_resume_inside_stage_two_exactly(tmp_path) -> None:
    from tests.test_stages import two_process_stop_and_resume

    straight, stopped = two_process_stop_and_resume(tmp_path, "mnist-lt-cossl",
                                                    [*SETS, "cossl.steps=30", "train.ckpt_every=1"], 29571)
    volatile = {"wall_s", "images_per_s"}
    rows = [read_rows(run / "metrics.jsonl") for run in (straight, stopped)]
    assert all(r["ranks_in_sync"] for r in rows[0]) and {r["stage"] for r in rows[0]} == {"main", "cossl"}
    assert [{k: v for k, v in r.items() if k not in volatile} for r in rows[1]] == \
           [{k: v for k, v in r.items() if k not in volatile} for r in rows[0]]


def test_stage_two_continues_the_adam_state_with_l2_and_an_ema_without_decay(tmp_path) -> None:
    t = _trainer(tmp_path / "r", "optim.ema_wd=0.04")
    for _ in range(6):
        t.train_step()
    adam, steps_before = t.optimizer, {id(p): int(st["step"]) for p, st in t.optimizer.state.items()}
    t.train_step()  # the switch, then stage 2's first step
    assert t.optimizer is adam  # official: stage 1's optimizer.load_state_dict, not a fresh Adam
    assert all(g["weight_decay"] == 0.02 * t.cfg.optim.lr for g in adam.param_groups)
    assert all(int(st["step"]) == steps_before[id(p)] + 1 for p, st in adam.state.items())
    assert t.plan.ema_wd(t.cfg.optim.ema_wd) == 0.0  # WeightEMA(wd=False) in stage 2; 0.04 in stage 1


def test_eval_of_a_finished_run_predicts_with_the_ema_teacher(tmp_path) -> None:
    out = tmp_path / "r"
    sets = [x for s in SETS for x in ("--set", s)]
    assert main(["train", "--preset", "mnist-lt-cossl", *sets, "--set", "data.eval_subset=0", "--out", str(out)]) == 0
    final = read_rows(out / "metrics.jsonl")[-1]
    assert main(["eval", str(out)]) == 0
    ev = json.loads((out / "eval" / "eval.json").read_text())
    assert ev["bacc"] == pytest.approx(final["bacc"], abs=1e-6)  # the teacher's prediction, not the student head's
    x = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    run = load_run(out)
    path = tmp_path / "m.pt"
    assert main(["export", str(out), "--format", "state_dict", "--out", str(path)]) == 0
    module, _ = load_exported(path)
    with torch.no_grad():  # the exported plain network (teacher weights as its head) predicts as the teacher
        assert torch.allclose(module(x)[0], run.logits(x)[0], atol=1e-5)
