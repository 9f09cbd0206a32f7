"""The loop's component capabilities (baselines-spec.md §14): features beside logits, heads owned by a component
(optimiser, EMA, checkpoint, exact resume, evaluation from the head), named loss terms in metrics.jsonl, owned
random streams, per-sample memory, schedules, and the whole-set pass. A stub ABC-like component exercises them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dytrim.config import load_config
from dytrim.engine.checkpoint import load_latest, save_checkpoint
from dytrim.engine.components import SampleMemory, head_of, owned_generator
from dytrim.engine.evaluate import predict_logits
from dytrim.engine.hooks import Batch, Component, StepOutput, Views
from dytrim.engine.schedules import Periodic
from dytrim.factory import build_trainer

TINY = ["train.batch_size=8", "train.uratio=2", "train.steps=4", "train.eval_every=2", "train.progress=false",
        "train.device=cpu", "train.threads=1", "data.eval_subset=50"]


class AuxHead(Component):
    """A balanced auxiliary head on the features, trained on Bernoulli-masked labeled samples; predicts at eval."""

    name = "aux_stub"
    uses_features = True
    eval_head = "aux"

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.head = nn.Linear(ctx.model.num_features, ctx.num_classes)
        self.gen = owned_generator(ctx.seed, self.name)
        self.memory = SampleMemory(ctx.n_ulb, ctx.num_classes)
        self.seen: list[Views] = []

    def heads(self) -> dict[str, nn.Module]:
        return {"aux": self.head}

    def loss_terms(self, views: Views, batch: Batch, targets, mask, step: int) -> dict[str, torch.Tensor]:
        self.seen.append(views)
        keep = torch.bernoulli(torch.full((len(batch.y_lb),), 0.5), generator=self.gen)
        z = head_of(self.ctx.model, "aux")(views.feats_lb)
        return {"aux": (F.cross_entropy(z, batch.y_lb, reduction="none") * keep).mean()}

    def observe(self, batch: Batch, out: StepOutput, step: int) -> None:
        self.memory.write(batch.ulb_pos, F.softmax(out.logits_ulb_w, -1))

    def state_dict(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state(), "memory": self.memory.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gen.set_state(state["gen"])
        self.memory.load_state_dict(state["memory"])


def _trainer(out: Path, resume: bool = False, extra: tuple[str, ...] = ()):
    """A trainer with the stub after the configured components (it needs the run's context, so it is built where
    the factory builds the registered ones)."""
    import dytrim.factory as factory

    cfg = load_config("mnist-lt-fixmatch", [*TINY, *extra])
    real = factory.create_components

    def create(c, ctx):
        return real(c, ctx) + [AuxHead(ctx)]

    factory.create_components = create
    try:
        return build_trainer(cfg, out, resume=resume)
    finally:
        factory.create_components = real


def test_a_component_head_joins_optimiser_ema_and_checkpoint(tmp_path) -> None:
    tr = _trainer(tmp_path / "a")
    head = tr.components[-1].head
    opt_params = {id(p) for g in tr.optimizer.param_groups for p in g["params"]}
    assert {id(p) for p in head.parameters()} <= opt_params
    assert "aux_heads.aux.weight" in tr.model.state_dict() and "aux_heads.aux.weight" in tr.ema.state_dict()
    before = head.weight.detach().clone()
    ema_before = head_of(tr.ema.model, "aux").weight.clone()
    tr.train_step()
    assert not torch.equal(head.weight, before)  # trained by the main optimiser through its loss term
    assert not torch.equal(head_of(tr.ema.model, "aux").weight, ema_before)  # and averaged by the EMA
    views = tr.components[-1].seen[-1]
    assert views.feats_lb.shape == (8, tr.model.num_features) and views.feats_ulb_w.shape[0] == 16
    assert len(views.feats_ulb_s) == 1 and views.feats_lb.requires_grad and not views.feats_ulb_w.requires_grad


def test_runs_without_heads_keep_the_model_as_it_was(tmp_path) -> None:
    cfg = load_config("mnist-lt-fixmatch", TINY)
    tr = build_trainer(cfg, tmp_path)
    assert not any(k.startswith("aux_heads") for k in tr.model.state_dict())


def test_head_memory_and_rng_resume_exactly_and_eval_uses_the_head(tmp_path) -> None:
    straight = _trainer(tmp_path / "a")
    for _ in range(4):
        straight.train_step()
    first = _trainer(tmp_path / "b")
    for _ in range(2):
        first.train_step()
    (tmp_path / "b").mkdir()
    save_checkpoint(tmp_path / "b", first.step, first.state_dict(), 2)
    load_latest(tmp_path / "b", torch.device("cpu"))
    resumed = _trainer(tmp_path / "b", resume=True)
    assert resumed.restore() is not None and resumed.step == 2
    for _ in range(2):
        resumed.train_step()
    assert resumed._fingerprint() == straight._fingerprint()
    for a, b in zip(resumed.ema.state_dict().values(), straight.ema.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(resumed.components[-1].memory.table, straight.components[-1].memory.table)
    row = straight.evaluate()
    d = straight.data
    ema = straight.ema.model
    z = head_of(ema, "aux")(_features(ema, d.x_test[d.eval_idx], d.mean, d.std))
    assert row["per_class_recall"] == _recall(z.argmax(-1), d.y_test[d.eval_idx], d.num_classes)


def _features(model: nn.Module, x: torch.Tensor, mean, std) -> torch.Tensor:
    from dytrim.data.augment import normalize

    model.eval()
    with torch.no_grad():
        return model.forward_features(normalize(x, mean, std))


def _recall(pred: torch.Tensor, y: torch.Tensor, c: int) -> list[float]:
    from dytrim.metrics import classification_metrics

    return classification_metrics(pred, y, c, [1] * c)["per_class_recall"]


def test_named_loss_terms_reach_metrics_jsonl(tmp_path) -> None:
    tr = _trainer(tmp_path / "run")
    tr.fit()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("loss_aux" in r and r["loss_aux"] >= 0 for r in rows)


def test_periodic_fires_once_per_period_even_when_the_clock_jumps() -> None:
    s = Periodic(10, first=1)
    fired = [t for t in (0, 3, 9, 10, 11, 19, 35, 36, 40) if s.due(t)]
    assert fired == [10, 35, 40]
    t = Periodic(10, first=1)
    t.load_state_dict(s.state_dict())
    assert not t.due(41) and t.due(50)


def test_the_whole_set_pass(tmp_path) -> None:
    cfg = load_config("mnist-lt-fixmatch", TINY)
    tr = build_trainer(cfg, tmp_path)
    d, ctx = tr.data, tr.ctx
    res = ctx.whole_set(ctx.model, "unlabeled", "eval", "none")
    want = predict_logits(ctx.model, d.x_train[d.ulb_idx], d.mean, d.std)
    assert res.logits.shape == (len(d.ulb_idx), d.num_classes) and torch.equal(res.pos, torch.arange(len(d.ulb_idx)))
    torch.testing.assert_close(res.logits, want)
    assert ctx.model.training  # the model's mode is given back
    buffers = {k: v.clone() for k, v in ctx.model.state_dict().items() if "running" in k}
    lb = ctx.whole_set(ctx.model, "labeled", "train", "weak", owned_generator(0, "t"))
    assert lb.feats.shape == (len(d.lb_idx), ctx.model.num_features)
    assert all(torch.equal(buffers[k], v) for k, v in ctx.model.state_dict().items() if "running" in k)
    again = ctx.whole_set(ctx.model, "labeled", "train", "weak", owned_generator(0, "t"))
    assert torch.equal(lb.logits, again.logits)  # the caller's generator makes the weak views reproducible


def test_a_run_that_predicts_with_a_head_predicts_with_it_after_loading(tmp_path) -> None:
    from dytrim.config import ConfigError
    from dytrim.engine.components import HeadModel
    from dytrim.export import build_exported
    from dytrim.inference import load_run

    tr = build_trainer(load_config("mnist-lt-abc", TINY), tmp_path)
    tr.fit()
    run = load_run(tmp_path)
    x = tr.data.x_test[:20]
    want = predict_logits(HeadModel(tr.ema.model, "abc"), x, tr.data.mean, tr.data.std)
    torch.testing.assert_close(run.logits(x)[0], want)
    try:
        build_exported(run)
    except ConfigError as exc:
        assert "auxiliary head 'abc'" in str(exc) and "\n" not in str(exc)
    else:
        raise AssertionError("export of a head-predicting run must refuse")
