"""The unified view: what each debiaser does to one FixMatch step's G (and sample set), side by side.

Each method is the library's own component stack (`dytrim.debias.create_components`) on a `RunContext` of the
analysis model, driven through the training loop's own step function (engine/step.py: weight -> forward ->
pseudo_logits -> pseudo-labels -> weight_unlabeled -> train_logits -> loss) on one batch. The loss's logit
gradient G (per-sample weights and the batch mean included) is then pushed through the decomposition at the
baseline image I and at observation digits: Δlog π = −η·T·K·G per method.

DyTrim needs scores from an earlier pass: one scoring pass over the whole pools is fed to its `observe` hook,
and its samplers are advanced past their first (unpruned) pass, so its labeled and unlabeled pruning both act.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dytrim.config import RunConfig
from dytrim.data.augment import normalize, strong_augment
from dytrim.data.sources import LTData
from dytrim.debias import create_components
from dytrim.dynamics.decompose import decompose_step
from dytrim.dynamics.mnist_lt import BatchMaker
from dytrim.engine.build import data_context
from dytrim.engine.context import RunContext
from dytrim.engine.hooks import Batch, Component
from dytrim.engine.probe import eval_mode, step_probe
from dytrim.engine.step import StepFunction
from dytrim.ssl import create_ssl

METHODS = ("fixmatch", "logit_adjust", "reweight", "resample", "cdmad", "dytrim", "cdmad+dytrim")


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


def analysis_context(model: nn.Module, data: LTData, cfg: RunConfig) -> RunContext:
    """The RunContext of an analysis model on the CPU (the model stands for the EMA teacher too)."""
    return data_context(cfg, data, model, model, torch.device("cpu"), uses_unlabeled=True)


def _eval_forward(model: nn.Module) -> Any:
    """The step function's forward for the analysis: eval-mode BN, no graph (G is taken from the logits)."""

    def forward(xs: list[torch.Tensor], grad: list[bool]) -> list[torch.Tensor]:
        with torch.no_grad(), eval_mode(model):
            return [model(x) for x in xs]

    return forward


def _scoring_pass(model: nn.Module, step_fn: StepFunction, comps: list[Component], maker: BatchMaker) -> None:
    """Feed every labeled and unlabeled sample's loss once to the components' `observe` (DyTrim's scores)."""
    d = maker.data
    lb_pos, ulb_pos = torch.arange(len(d.lb_idx)), torch.arange(len(d.ulb_idx))
    _, x_lb, y_lb = maker.labeled(len(lb_pos), lb_pos)
    x_u = d.x_train[d.ulb_idx]
    x_w = normalize(x_u, d.mean, d.std)
    x_s = strong_augment(x_u, maker.gen, d.mean, d.std, n_ops=maker.aug.n_ops, magnitude=maker.aug.magnitude,
                         cutout_size=maker.aug.cutout, pad=maker.aug.pad, flip=maker.aug.flip)
    batch = Batch(lb_pos=lb_pos, x_lb=x_lb, y_lb=y_lb, w_lb=torch.ones(len(lb_pos)), ulb_pos=ulb_pos,
                  x_ulb_w=x_w, x_ulb_s=[x_s], w_ulb=torch.ones(len(ulb_pos)))
    out = step_fn.run(batch, _eval_forward(model), 0).output()
    for c in comps:
        c.observe(batch, out, 0)


def _draw(sampler: Any) -> torch.Tensor:
    """A batch of positions past the sampler's first pass (DyTrim's first pass is never pruned)."""
    pos = sampler.next()
    if hasattr(sampler, "renew"):
        sampler.renew()
        pos = sampler.next()
    return pos


def method_config(base: RunConfig, method: str) -> RunConfig:
    """`base` with debias.methods from `method` ("fixmatch": none; "a+b": both, in that order), debiasing
    active from step 0."""
    cfg = copy.deepcopy(base)
    cfg.debias.methods = [] if method == "fixmatch" else method.split("+")
    cfg.debias.start = 0
    return cfg


def for_this_command(message: str) -> str:
    """A component's start-up warning as `dytrim dynamics unified` shows it: DyTrim's advice on the labeled
    pruning rule names `prune.min_keep`, a `dytrim train --set` key; here the same key is `--min-keep N`."""
    head, sep, _ = message.partition(" Set prune.min_keep=1")
    if not sep:
        return message
    return (f"{head} The analysis uses the reference rule unless told otherwise: `dytrim dynamics unified "
            "--min-keep 1` keeps at least one labeled image per class (in training: --set prune.min_keep=1).")


def view_method(
    method: str, model: nn.Module, data: LTData, base: RunConfig, x_o: torch.Tensor, y_o: torch.Tensor,
    n_lb: int = 32, n_ulb: int = 64, seed: int = 0,
) -> MethodView:
    """Run one method's step on one batch (same default batch for every method given the same seed)."""
    cfg = method_config(base, method)
    ctx = analysis_context(model, data, cfg)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        comps = create_components(cfg, ctx)
    for w in caught:  # a start-up warning is re-issued with the advice this command can follow
        warnings.warn(for_this_command(str(w.message)), w.category, stacklevel=2)  # once per text (cdmad+dytrim too)
    step_fn = StepFunction(create_ssl(cfg.ssl, data.num_classes, len(data.ulb_idx)), comps, data.num_classes,
                           cfg.ssl.lambda_u, ce_eps=cfg.ssl.ce_eps)
    maker = BatchMaker(data, cfg, seed)
    lb_labels = data.y_train[data.lb_idx]
    lb_s = [s for c in comps if (s := c.labeled_sampler(lb_labels, n_lb, seed))]
    ulb_s = [s for c in comps if (s := c.unlabeled_sampler(len(data.ulb_idx), n_ulb, seed))]
    step = 0
    if lb_s or ulb_s:
        _scoring_pass(model, step_fn, comps, BatchMaker(data, cfg, seed + 1))
    if any(c.uses_probe for c in comps):  # the loop's order: probe, before_step, then the samplers draw
        ctx.z_I = step_probe(model, ctx.baseline)
    for c in comps:
        c.before_step(step)
    v = maker.fixmatch(n_lb, n_ulb, _draw(lb_s[0]) if lb_s else None, _draw(ulb_s[0]) if ulb_s else None)
    batch = Batch(lb_pos=v.lb_pos, x_lb=v.x_lb, y_lb=v.y_lb, w_lb=torch.ones(len(v.y_lb)), ulb_pos=v.ulb_pos,
                  x_ulb_w=v.x_ulb_w, x_ulb_s=[v.x_ulb_s], w_ulb=torch.ones(len(v.y_ulb)))
    res = step_fn.run(batch, _eval_forward(model), step)  # hooks, pseudo-labels and weights of this batch
    targets, mask = res.targets, res.mask
    assert targets is not None and mask is not None and batch.w_ulb is not None

    def loss_fn(z: dict[str, torch.Tensor]) -> torch.Tensor:
        """The step's loss as a function of the logits (the same terms and weights as training)."""
        z_lb, z_s = z["supervised"], z["consistency"]
        sup = step_fn.supervised_loss(z_lb, batch.y_lb, step) * batch.w_lb
        cons = step_fn.consistency_loss([z_s], targets, mask, step) * batch.w_ulb
        extra = step_fn.ssl.extra_loss(z_s, targets, mask)
        return sup.mean() + cfg.ssl.lambda_u * cons.mean() + (extra if extra is not None else 0.0)

    obs = torch.cat([ctx.baseline.to(x_o.dtype), x_o])
    dec = decompose_step(model, obs, {"supervised": batch.x_lb, "consistency": batch.x_ulb_s[0]}, loss_fn, 1.0,
                         real=False)
    pred = dec.predicted
    return MethodView(
        name=method, y_lb=batch.y_lb, w_lb=batch.w_lb.detach().clone(), G_lb=dec.term("supervised").G.detach(),
        pseudo=targets.argmax(-1), mask=mask, w_ulb=batch.w_ulb.detach().clone(),
        G_ulb=dec.term("consistency").G.detach(), dlogp_I=pred[0].detach(),
        dlogp_I_terms={t.name: t.delta[0].detach() for t in dec.terms},
        dlogp_true=pred[1:].gather(1, y_o[:, None]).squeeze(1).detach(),
    )


def unified_view(
    model: nn.Module, data: LTData, base: RunConfig, x_o: torch.Tensor, y_o: torch.Tensor,
    methods: tuple[str, ...] = METHODS, n_lb: int = 32, n_ulb: int = 64, seed: int = 0,
) -> list[MethodView]:
    """`view_method` for each method on the same model state (a fresh copy each, since hooks may touch it)."""
    return [view_method(m, copy.deepcopy(model), data, base, x_o, y_o, n_lb, n_ulb, seed) for m in methods]
