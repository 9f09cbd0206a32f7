"""Debiasing rules on constructed tensors with hand-computed answers, and their wiring in the loop."""

from __future__ import annotations

import math

import pytest
import torch

from dytrim.config import ConfigError, load_config
from dytrim.debias import COMPONENTS
from dytrim.debias.cdmad import CDMAD
from dytrim.debias.logit_adjust import LogitAdjustLoss, LogitAdjustPosthoc, log_prior_offsets
from dytrim.debias.resample import ClassAwareSampler
from dytrim.debias.reweight import ReWeight, class_weights
from dytrim.engine.context import Progress, RunContext
from dytrim.engine.hooks import Batch, Component
from dytrim.engine.probe import baseline_image, baseline_logits, kl, step_probe

COUNTS = [60, 30, 10]  # prior 0.6, 0.3, 0.1


def _cfg(*overrides: str):
    return load_config("mnist-lt-fixmatch", list(overrides))


def test_logit_adjust_offsets_and_forms() -> None:
    off = log_prior_offsets(COUNTS, 1.0)
    assert torch.allclose(off, torch.tensor([math.log(0.6), math.log(0.3), math.log(0.1)]), atol=1e-6)
    assert torch.allclose(log_prior_offsets(COUNTS, 2.0), torch.log(torch.tensor([0.36, 0.09, 0.01])), atol=1e-6)
    z = torch.zeros(2, 3)
    la = LogitAdjustLoss(_cfg("logit_adjust.tau=1.0"), _ctx())
    assert torch.allclose(la.train_logits(z, True, 0), off.expand(2, 3))
    assert torch.equal(la.train_logits(z, False, 0), z)  # consistency logits untouched by default
    la_u = LogitAdjustLoss(_cfg("logit_adjust.unlabeled=true"), _ctx())
    assert torch.allclose(la_u.train_logits(z, False, 0), off.expand(2, 3))
    post = LogitAdjustPosthoc(_cfg(), _ctx())
    # equal logits: the post-hoc prediction picks the rarest class
    assert post.eval_logits(z).argmax(-1).tolist() == [2, 2]


def test_class_balanced_weights() -> None:
    w = class_weights(COUNTS, "inverse")
    inv = torch.tensor([1 / 60, 1 / 30, 1 / 10])
    assert torch.allclose(w, inv * 3 / inv.sum())
    assert w.sum().item() == pytest.approx(3.0)
    b = 0.999
    eff = torch.tensor([(1 - b) / (1 - b**n) for n in COUNTS])
    assert torch.allclose(class_weights(COUNTS, "effective", b), eff * 3 / eff.sum())


def test_reweight_scales_labeled_and_pseudo_labeled_losses() -> None:
    rw = ReWeight(_cfg("reweight.unlabeled=true"), _ctx())
    batch = Batch(lb_pos=torch.arange(3), x_lb=torch.zeros(3, 1, 2, 2), y_lb=torch.tensor([0, 1, 2]),
                  w_lb=torch.ones(3), w_ulb=torch.ones(2))
    rw.weight(batch, 0)
    assert torch.allclose(batch.w_lb, class_weights(COUNTS))
    targets = torch.tensor([[0.1, 0.2, 0.7], [0.8, 0.1, 0.1]])
    rw.weight_unlabeled(batch, targets, torch.ones(2), 0)
    w = class_weights(COUNTS)
    assert torch.allclose(batch.w_ulb, torch.stack([w[2], w[0]]))


def test_class_aware_sampler_balances_classes() -> None:
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    s = ClassAwareSampler(labels, class_weights(COUNTS, "inverse"), batch_size=64, seed=0)
    draws = torch.cat([s.next() for _ in range(500)])  # 32,000 draws
    freq = torch.bincount(labels[draws], minlength=3).double() / len(draws)
    assert torch.allclose(freq, torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.01)
    within = torch.bincount(draws[labels[draws] == 2] - 90, minlength=10).double()
    assert within.min() > 0  # every tail sample is drawn
    state = s.state_dict()
    a = s.next()
    s.load_state_dict(state)
    assert torch.equal(s.next(), a)


class _Const(torch.nn.Module):
    """A 'network' whose logits are a fixed vector plus the input mean (to tell images apart)."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.tensor([2.0, 1.0, 0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias + x.mean(dim=(1, 2, 3), keepdim=False)[:, None]


def _ctx(model: torch.nn.Module | None = None, ema: torch.nn.Module | None = None, baseline: str = "zeros"
         ) -> RunContext:
    """A RunContext of 1x4x4 images, COUNTS labeled images, the constant nets unless given."""
    if ema is None:
        ema = _Const()
        ema.bias.data = torch.tensor([0.5, 0.0, -0.5])
    return RunContext(model=model or _Const(), ema_model=ema, device=torch.device("cpu"), seed=0,
                      classes=["a", "b", "c"], lb_counts=list(COUNTS), lb_labels=torch.zeros(0, dtype=torch.int64),
                      n_ulb=0, image_shape=(1, 4, 4), uses_unlabeled=True, progress=Progress(total_steps=10),
                      baseline=baseline_image(baseline, 1, 4, 4, "cpu"))


def test_cdmad_subtraction_and_start_switch() -> None:
    ctx = _ctx(baseline="ones")
    c = CDMAD(_cfg("debias.methods=cdmad", "debias.start=5", "debias.baseline=ones"), ctx)
    assert c.uses_probe  # the loop computes ctx.z_I for it at the start of each step
    assert torch.equal(ctx.baseline, torch.ones(1, 1, 4, 4))
    ctx.z_I = step_probe(ctx.model, ctx.baseline)
    c.before_step(0)
    assert torch.allclose(ctx.z_I, torch.tensor([3.0, 2.0, 1.0]))  # bias + mean(ones)
    z = torch.tensor([[3.0, 2.5, 1.0]])
    assert torch.equal(c.pseudo_logits(z, 4), z)  # before the debias start: untouched
    assert torch.allclose(c.pseudo_logits(z, 5), torch.tensor([[0.0, 0.5, 0.0]]))
    # test time: the EMA model's z(I) = [0.5, 0, -0.5] + 1
    assert torch.allclose(c.eval_logits(torch.zeros(1, 3)), -torch.tensor([[1.5, 1.0, 0.5]]))


def test_baseline_image_and_probe_modes() -> None:
    assert baseline_image("zeros", 3, 2, 2, "cpu").abs().sum() == 0
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                              torch.nn.LazyLinear(3))
    net(torch.randn(8, 1, 6, 6))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    image = torch.randn(1, 1, 6, 6)
    baseline_logits(net, image, "train")
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # train-mode probe leaves BN buffers alone
    assert net.training  # mode restored
    assert kl(torch.tensor([0.5, 0.5]), torch.tensor([0.5, 0.5])) == 0.0
    assert kl(torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.5])) == pytest.approx(math.log(2))


def test_unknown_method_suggests() -> None:
    with pytest.raises(ConfigError, match="cdmad"):
        _cfg("debias.methods=cdmd")
    with pytest.raises(ConfigError, match="twice"):
        _cfg("debias.methods=cdmad,cdmad")


#: every registered method alone (a newly registered one is covered without editing this file), plus two stacks
RUN_METHODS = [*COMPONENTS.names(), "logit_adjust,logit_adjust_posthoc", "cdmad,logit_adjust"]


def _changes_predictions(methods: str) -> bool:
    """Whether any listed component overrides the eval-logit hook (its runs then log *_debiased metrics)."""
    return any(COMPONENTS.get(m).eval_logits is not Component.eval_logits for m in methods.split(","))


def test_run_methods_cover_the_registry() -> None:
    assert set(COMPONENTS.names()) <= set(RUN_METHODS)
    assert {"cdmad", "dytrim", "logit_adjust", "logit_adjust_posthoc", "resample", "reweight"} <= set(RUN_METHODS)
    assert _changes_predictions("cdmad") and _changes_predictions("logit_adjust_posthoc")
    assert not _changes_predictions("reweight") and not _changes_predictions("dytrim,logit_adjust")


# the stages a method declares after the main one, short (their defaults are the official 10k-50k steps)
STAGES = ["--set", "crt.steps=4", "--set", "cossl.steps=4", "--set", "cossl.warm_steps=2", "--set",
          "crest.generations=2"]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:the labeled pruning rule:UserWarning")  # DyTrim's reference rule, on purpose
@pytest.mark.parametrize("methods", RUN_METHODS)
def test_short_run_logs_probe_and_debiased_metrics(tmp_path, methods) -> None:
    from dytrim.cli import main

    out = tmp_path / "r"
    assert main(["train", "--preset", "mnist-lt-fixmatch", "--set", f"debias.methods={methods}", "--set",
                 "debias.start=5", "--set", "train.steps=10", "--set", "train.eval_every=10", "--set",
                 "train.progress=false", *STAGES, "--out", str(out)]) == 0
    import json

    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert len(row["prior_baseline"]) == 10 and sum(row["prior_baseline"]) == pytest.approx(1, abs=1e-4)
    assert "kl_prior_labeled" in row and "kl_prior_uniform" in row
    changes_predictions = _changes_predictions(methods)
    assert ("bacc_debiased" in row) == changes_predictions
    summary = json.loads((out / "summary.json").read_text())
    assert ("bacc_debiased" in summary) == changes_predictions


def test_cdmad_test_bn_mode_selects_the_probe() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))
    net(torch.randn(16, 1, 4, 4) * 3 + 1)  # running statistics far from the constant image's own
    ctx = _ctx(ema=net)
    outs = {}
    for mode in ("eval", "train"):
        c = CDMAD(_cfg("debias.methods=cdmad", f"cdmad.test_bn={mode}"), ctx)
        outs[mode] = c.eval_logits(torch.zeros(1, 3))
        assert torch.allclose(outs[mode], -baseline_logits(net, ctx.baseline, mode)[None])
    assert not torch.allclose(outs["eval"], outs["train"])
