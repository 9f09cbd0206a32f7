"""The unified view: what each debiaser does to one FixMatch step's G (and sample set), side by side.

Each method is the library's own component (`dytrim.debias.create_components`), bound to a stand-in
trainer and driven through the loop's hook order on one batch: samplers -> before_step -> weight ->
pseudo_logits -> pseudo-labels -> weight_unlabeled -> train_logits -> loss. The loss's logit gradient
G (per-sample weights and the batch mean included) is then pushed through the decomposition at the
baseline image I and at observation digits: Δlog π = −η·T·K·G per method.

DyTrim needs scores from an earlier pass: one scoring pass over the whole pools is fed to its `observe`
hook, and its samplers are advanced past their first (unpruned) pass. If the `dytrim` component is not
registered or its interface does not fit, its unlabeled gate is emulated instead (keep low-score
confident samples at rate r = 0.3 with weight 1/r; labeled hard pruning left out) and the note says so.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dytrim.config import RunConfig
from dytrim.data.augment import normalize, strong_augment
from dytrim.data.sources import LTData
from dytrim.debias import COMPONENTS, create_components
from dytrim.debias.baseline import baseline_image
from dytrim.dynamics.decompose import decompose_step
from dytrim.dynamics.mnist_lt import BatchMaker
from dytrim.dynamics.ntk import eval_mode
from dytrim.engine.hooks import Batch, Component, StepOutput
from dytrim.ssl import create_ssl, soft_cross_entropy

METHODS = ("fixmatch", "logit_adjust", "reweight", "resample", "cdmad", "dytrim", "cdmad+dytrim")
FALLBACK_KEEP_RATE = 0.3


@dataclass
class MethodView:
    """One method's step: labels, weights and G of both batches, and the predicted Δlog π per unit η."""

    name: str
    y_lb: torch.Tensor
    w_lb: torch.Tensor
    G_lb: torch.Tensor  # [B, C]
    pseudo: torch.Tensor  # [Bu]
    mask: torch.Tensor
    w_ulb: torch.Tensor
    G_ulb: torch.Tensor  # [Bu, C]
    dlogp_I: torch.Tensor  # [C] predicted Δlog π(I) for η = 1
    dlogp_I_terms: dict[str, torch.Tensor]  # "supervised" / "consistency" shares of dlogp_I
    dlogp_true: torch.Tensor  # [No] predicted Δlog π(y_o | x_o) for η = 1
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def mass_lb(self, num_classes: int) -> torch.Tensor:
        """Σ over labeled samples of class c of ‖G_b‖₁: where the supervised gradient budget goes."""
        return torch.zeros(num_classes).index_add_(0, self.y_lb, self.G_lb.abs().sum(-1).float())

    def mass_ulb(self, num_classes: int) -> torch.Tensor:
        """Σ over unlabeled samples pseudo-labelled c of ‖G_u‖₁ (the consistency budget)."""
        return torch.zeros(num_classes).index_add_(0, self.pseudo, self.G_ulb.abs().sum(-1).float())


def _trainer_stub(model: nn.Module, data: LTData, cfg: RunConfig, comps: list[Component]) -> SimpleNamespace:
    """The parts of a Trainer that components read in `bind` (model, EMA model, data, device, ...)."""
    return SimpleNamespace(model=model, ema=SimpleNamespace(model=model), data=data, device=torch.device("cpu"),
                           cfg=cfg, components=comps, ssl=create_ssl(cfg.ssl, data.num_classes, len(data.ulb_idx)),
                           samples_fwd=0, samples_bwd=0, updates=0, step=0)


def _scoring_pass(model: nn.Module, comps: list[Component], maker: BatchMaker, rule: Any) -> None:
    """Feed every labeled and unlabeled sample's loss once to the components' `observe` (DyTrim's scores)."""
    d = maker.data
    lb_pos, ulb_pos = torch.arange(len(d.lb_idx)), torch.arange(len(d.ulb_idx))
    _, x_lb, y_lb = maker.labeled(len(lb_pos), lb_pos)
    x_u = d.x_train[d.ulb_idx]
    x_w = normalize(x_u, d.mean, d.std)
    x_s = strong_augment(x_u, maker.gen, d.mean, d.std, n_ops=maker.aug.n_ops, magnitude=maker.aug.magnitude,
                         cutout_size=maker.aug.cutout, pad=maker.aug.pad, flip=maker.aug.flip)
    with torch.no_grad(), eval_mode(model):
        z_lb, z_w, z_s = model(x_lb), model(x_w), model(x_s)
        for c in comps:
            z_w = c.pseudo_logits(z_w, 0)
        targets, mask = rule.pseudo_targets(z_w, ulb_pos)
        loss_lb = soft_cross_entropy(z_lb.float(), F.one_hot(y_lb, d.num_classes).float())
        loss_ulb = (soft_cross_entropy(z_s.float(), targets) * mask)[None]
    batch = Batch(lb_pos=lb_pos, x_lb=x_lb, y_lb=y_lb, w_lb=torch.ones(len(lb_pos)), ulb_pos=ulb_pos,
                  x_ulb_w=x_w, x_ulb_s=[x_s], w_ulb=torch.ones(len(ulb_pos)))
    for c in comps:
        c.observe(batch, StepOutput(loss_lb, loss_ulb, targets, mask, z_w), 0)


def _draw(sampler: Any) -> torch.Tensor:
    """A batch of positions past the sampler's first pass (DyTrim's first pass is never pruned)."""
    pos = sampler.next()
    if hasattr(sampler, "renew"):
        sampler.renew()
        pos = sampler.next()
    return pos


def _fallback_gate(loss_u: torch.Tensor, conf: torch.Tensor, tau: float, gen: torch.Generator) -> torch.Tensor:
    """Emulated DyTrim unlabeled gate on one batch: low-score (< mean) confident samples kept at rate r,
    weight 1/r if kept, 0 if pruned; all others weight 1."""
    cand = (loss_u < loss_u.mean()) & (conf >= tau)
    keep = torch.rand(len(loss_u), generator=gen) < FALLBACK_KEEP_RATE
    w = torch.ones(len(loss_u))
    w[cand & keep] = 1.0 / FALLBACK_KEEP_RATE
    w[cand & ~keep] = 0.0
    return w


def method_config(base: RunConfig, method: str) -> RunConfig:
    """`base` with debias.methods from `method` ("fixmatch": none; "a+b": both, in that order), debiasing
    active from step 0."""
    cfg = copy.deepcopy(base)
    cfg.debias.methods = [] if method == "fixmatch" else method.split("+")
    cfg.debias.start = 0
    return cfg


def view_method(
    method: str, model: nn.Module, data: LTData, base: RunConfig, x_o: torch.Tensor, y_o: torch.Tensor,
    n_lb: int = 32, n_ulb: int = 64, seed: int = 0, emulate_dytrim: bool = False,
) -> MethodView:
    """Run one method's hooks on one batch (same default batch for every method given the same seed)."""
    cfg = method_config(base, method)
    use_fallback = "dytrim" in cfg.debias.methods and (emulate_dytrim or "dytrim" not in COMPONENTS)
    note = ""
    if use_fallback:
        cfg.debias.methods = [m for m in cfg.debias.methods if m != "dytrim"]
        note = "DyTrim's unlabeled gate emulated (r=0.3, weight 1/r; no labeled pruning)"
    comps = create_components(cfg, data.split.lb_counts)
    rule = create_ssl(cfg.ssl, data.num_classes, len(data.ulb_idx))
    for c in comps:
        c.bind(_trainer_stub(model, data, cfg, comps))
    maker = BatchMaker(data, cfg, seed)
    lb_labels = data.y_train[data.lb_idx]
    lb_s = [s for c in comps if (s := c.labeled_sampler(lb_labels, n_lb, seed))]
    ulb_s = [s for c in comps if (s := c.unlabeled_sampler(len(data.ulb_idx), n_ulb, seed))]
    step = 0
    if lb_s or ulb_s:
        _scoring_pass(model, comps, BatchMaker(data, cfg, seed + 1), rule)
    for c in comps:  # loop order: before_step, then the samplers draw
        c.before_step(step)
    v = maker.fixmatch(n_lb, n_ulb, _draw(lb_s[0]) if lb_s else None, _draw(ulb_s[0]) if ulb_s else None)
    batch = Batch(lb_pos=v.lb_pos, x_lb=v.x_lb, y_lb=v.y_lb, w_lb=torch.ones(len(v.y_lb)), ulb_pos=v.ulb_pos,
                  x_ulb_w=v.x_ulb_w, x_ulb_s=[v.x_ulb_s], w_ulb=torch.ones(len(v.y_ulb)))
    for c in comps:
        c.weight(batch, step)
    with torch.no_grad(), eval_mode(model):
        logits_w = model(batch.x_ulb_w)
    for c in comps:
        logits_w = c.pseudo_logits(logits_w, step)
    targets, mask = rule.pseudo_targets(logits_w, batch.ulb_pos)
    for c in comps:
        c.weight_unlabeled(batch, targets, mask, step)
    if use_fallback:
        with torch.no_grad(), eval_mode(model):
            loss_u = soft_cross_entropy(model(batch.x_ulb_s).float(), targets) * mask
        conf = torch.softmax(logits_w.float(), -1).amax(-1)
        batch.w_ulb = batch.w_ulb * _fallback_gate(loss_u, conf, cfg.prune.tau, torch.Generator().manual_seed(seed))

    def loss_fn(z: dict[str, torch.Tensor]) -> torch.Tensor:
        z_lb, z_s = z["supervised"], z["consistency"]
        for c in comps:
            z_lb = c.train_logits(z_lb, True, step)
            z_s = c.train_logits(z_s, False, step)
        sup = soft_cross_entropy(z_lb, F.one_hot(batch.y_lb, data.num_classes).to(z_lb.dtype)) * batch.w_lb
        cons = soft_cross_entropy(z_s, targets.to(z_s.dtype)) * mask * batch.w_ulb
        return sup.mean() + cfg.ssl.lambda_u * cons.mean()

    image = baseline_image(cfg.debias.baseline, *data.x_train.shape[1:], "cpu").to(x_o.dtype)
    obs = torch.cat([image, x_o])
    dec = decompose_step(model, obs, {"supervised": batch.x_lb, "consistency": batch.x_ulb_s[0]}, loss_fn, 1.0,
                         real=False)
    pred = dec.predicted
    return MethodView(
        name=method, y_lb=batch.y_lb, w_lb=batch.w_lb.detach().clone(), G_lb=dec.term("supervised").G.detach(),
        pseudo=targets.argmax(-1), mask=mask, w_ulb=batch.w_ulb.detach().clone(),
        G_ulb=dec.term("consistency").G.detach(), dlogp_I=pred[0].detach(),
        dlogp_I_terms={t.name: t.delta[0].detach() for t in dec.terms},
        dlogp_true=pred[1:].gather(1, y_o[:, None]).squeeze(1).detach(), note=note,
    )


def unified_view(
    model: nn.Module, data: LTData, base: RunConfig, x_o: torch.Tensor, y_o: torch.Tensor,
    methods: tuple[str, ...] = METHODS, n_lb: int = 32, n_ulb: int = 64, seed: int = 0,
) -> list[MethodView]:
    """`view_method` for each method on the same model state (a fresh copy each, since hooks may touch it).
    If the registered DyTrim component does not fit this driver, its gate is emulated and noted."""
    views = []
    for m in methods:
        try:
            views.append(view_method(m, copy.deepcopy(model), data, base, x_o, y_o, n_lb, n_ulb, seed))
        except (AttributeError, TypeError, KeyError, RuntimeError) as exc:
            if "dytrim" not in m.split("+"):
                raise
            v = view_method(m, copy.deepcopy(model), data, base, x_o, y_o, n_lb, n_ulb, seed, emulate_dytrim=True)
            v.note += f"; the registered component failed here ({type(exc).__name__}: {exc})"
            views.append(v)
    return views
