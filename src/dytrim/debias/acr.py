"""ACR (Wei & Gan, CVPR 2023): the adaptive consistency regularizer, a second head h2 trained with a logit-adjusted
loss, and a τ1 of h1's pseudo-labels adapted to an estimate û of the unlabeled class distribution.

Official rule (Gank0078/ACR `train.py`, `models/wideresnet.py`), π = labeled prior, adj(τ) = log(π^τ + 1e-12),
p_cutoff 0.95 for every mask:
- h1 = the model's head, h2 = Linear(F, C) (Xavier-normal weight, zero bias) on the same features;
- L_x = CE(h1(x), y); L_xb = CE(h2(x) + adj(τ2), y) (τ2 = 2) [loss_terms `acr_xb`];
- ŷ1 = argmax softmax(z1_w − adj(τ1)), mask1 = [its max ≥ .95] OR [max softmax(z1_w) ≥ .95];
  L_u = mean over the strong views × Bu of CE(h1(s), ŷ1)·mask1: the base's consistency loss [pseudo_targets];
- ŷ12 = argmax softmax(z1_w − adj(τ12)) (τ12 = 2), mask12 = [max softmax(h2(w)) ≥ .95] OR [max softmax(z1_w −
  adj(τ12)) ≥ .95]; L_ub = mean over views × Bu of CE(h2(s), ŷ12)·mask12 [`acr_ub`]; loss = L_x + L_u + L_xb + L_ub;
- in epochs (of 500 steps) with index > est_epoch (5): n = `now_mask[ĉ2] += m` with ĉ2 = argmax of h2's weak
  softmax and m = [its max ≥ .95] on truly unlabeled images (labeled images in the pool count 0); if Σn > 0:
  û ← ρ û + (1 − ρ) n/Σn (û uniform at start) and the symmetric KLs of û to (π, uniform, reversed π) accumulate;
- at the start of each such epoch: τ1 = τmax e^{d̄_0}/Σ_k e^{d̄_k}, d̄ = accumulated / 500 (τmax = τ1's initial 2),
  skipped if NaN; the accumulators restart at every epoch. The first such epoch adapts from zeros: τ1 = τmax/3.
- evaluation: the EMA model's h2 (`eval_head`).
Choices: ρ = 0.99, the official README commands (`--ema-u 0.99`, all three settings; the argparse default is 0.9).
`now_mask[idx] += m` does not accumulate repeated indices: each class keeps the value of its last sample (so n is
0/1, and 0 where the last sample of a class is unconfident or labeled, though others count). `acr.class_count=last`
(default) reproduces that as PyTorch does on the CPU; on CUDA the official order is undefined; `any` is a presence
vector, `sum` counts. Differences: the estimate uses the global batch (official DDP: each rank its own); π is the
labeled counts (official: one shuffled drop_last pass of the labeled loader); τ1, the accumulators and the schedule
are saved, so a resumed run equals an uninterrupted one (official saves û only, so τ1 restarts at 2 and the first
epoch after a resume adapts from zeros). USB/CPE port (`semilearn/imb_algorithms/acr`): the same formulas with one
strong view, no labeled-image exclusion (disjoint pools), ρ 0.9, h2 with PyTorch's default init, USB epochs.
With other components stacked: ŷ1 reads the weak logits after their pseudo_logits hooks, ŷ12 the raw ones, and
h2's terms take no per-sample weights. ACR replaces the threshold rule of the base, so it stacks on fixmatch only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from dytrim.config import RunConfig, config_section, require
from dytrim.debias.registry import COMPONENTS, require_fixmatch
from dytrim.engine.components import head_of, xavier_linear_
from dytrim.engine.context import RunContext
from dytrim.engine.hooks import Batch, Component, Views
from dytrim.engine.schedules import Periodic

#: how the per-step class vector n is formed from (class, value) pairs; see `class_vector`
CLASS_COUNTS = ("last", "any", "sum")


def adjustment(prior: torch.Tensor, tau: float) -> torch.Tensor:
    """[C] log(π^τ + 1e-12), float64 (official `compute_adjustment_by_py`; the 1e-12 kept)."""
    return torch.log(prior.double() ** tau + 1e-12)


def adjusted_labels(logits: torch.Tensor, adj: torch.Tensor | None, p_cutoff: float) -> tuple[torch.Tensor,
                                                                                               torch.Tensor]:
    """(argmax [B], confident [B] bool) of softmax(z − adj) (adj None: of softmax(z)), no gradient. With an
    adjustment the softmax is float64, as the official float32 logits minus its float64 vector promote to."""
    z = logits.detach()
    z = z.float() if adj is None else z.double() - adj.to(z.device)
    conf, label = F.softmax(z, dim=-1).max(dim=-1)
    return label, conf >= p_cutoff


def or_mask(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[B] float mask a OR b (the official `mask + mask_t` of two bool tensors)."""
    return (a | b).float()


def class_vector(cls: torch.Tensor, value: torch.Tensor, num_classes: int, rule: str = "last") -> torch.Tensor:
    """[C] float32 n from per-sample classes [B] and values [B] (1 = confident and truly unlabeled, else 0).

    last: the official `now_mask[cls] += value`: a repeated index does not accumulate; each class keeps the value
    of its last sample in batch order (what PyTorch does on the CPU; undefined order on CUDA), so a class is 1 only
    when the last sample predicting it counts. any: 1 where some sample of the class counts (a presence vector).
    sum: the number of samples that count (bincount)."""
    value = value.float()
    if len(cls) == 0:
        return value.new_zeros(num_classes)
    hit = cls[:, None] == torch.arange(num_classes, device=cls.device)  # [B, C]: no scatter, deterministic anywhere
    if rule == "last":
        order = torch.arange(len(cls), device=cls.device)[:, None].expand_as(hit)
        last = torch.where(hit, order, torch.full_like(order, -1)).amax(dim=0)  # [C] last sample of each class
        return torch.where(last >= 0, value[last.clamp_min(0)], value.new_zeros(()))
    if rule == "any":
        return (hit & (value > 0)[:, None]).any(dim=0).float()
    if rule == "sum":
        return (hit.float() * value[:, None]).sum(dim=0)
    raise ValueError(f"unknown class-count rule '{rule}' (choose from {CLASS_COUNTS})")


def update_u(u: torch.Tensor, n: torch.Tensor, rho: float) -> torch.Tensor:
    """û ← ρ û + (1 − ρ) n / Σn, where Σn > 0; û unchanged otherwise (official: `if now_mask.sum() > 0`)."""
    total = n.sum()
    new = rho * u + (1 - rho) * (n / total.clamp_min(torch.finfo(n.dtype).tiny))
    return torch.where(total > 0, new, u)


def symmetric_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """½ KL(p‖q) + ½ KL(q‖p), float64, with 0·log 0 = 0 (official `0.5*KLDivLoss(sum)(q.log(), p) + 0.5*(...)`)."""
    p, q = p.double(), q.double()
    return 0.5 * (torch.xlogy(p, p) - p * q.log()).sum() + 0.5 * (torch.xlogy(q, q) - q * p.log()).sum()


def anchors(prior: torch.Tensor) -> torch.Tensor:
    """[3, C] the anchor distributions: the labeled prior π (consistent), uniform, π reversed (official order)."""
    prior = prior.double()
    return torch.stack([prior, torch.full_like(prior, 1.0 / len(prior)), torch.flip(prior, dims=[0])])


def divergences(u: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """[3] float64 symmetric KLs of û to (π, uniform, reversed π)."""
    return torch.stack([symmetric_kl(u, a.to(u.device)) for a in anchors(prior)])


def adaptive_tau(acc: torch.Tensor, steps: int, tau_max: float, tau_min: float = 0.0) -> float | None:
    """τ1 = τmin + (τmax − τmin)·e^{d̄_0} / Σ_k e^{d̄_k} with d̄ = acc / steps, in float32 and unstabilised as the
    official code (an overflowing e^{d̄_0} gives inf/inf); None where that is NaN (the official update is skipped)."""
    e = torch.exp(acc.detach().float().cpu() / steps)
    tau = float(tau_min + (tau_max - tau_min) * (e[0] / (e[0] + e[1] + e[2])))  # a float32 value, as official
    return None if math.isnan(tau) else tau


@config_section("acr")
@dataclass
class ACRConfig:
    """ACR's strengths, threshold and distribution estimate (official defaults; ρ of the official run commands)."""

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"class_count": CLASS_COUNTS}

    p_cutoff: float = 0.95  # threshold of every ACR mask (official --threshold)
    tau1: float = 2.0  # h1's pseudo-label strength before adaptation, and tau_max (official --tau1)
    tau12: float = 2.0  # strength of h2's pseudo-labels from h1 (official --tau12)
    tau2: float = 2.0  # h2's logit-adjusted labeled loss (official --tau2)
    ema_u: float = 0.99  # rho of u <- rho u + (1 - rho) n / sum n (README commands 0.99; argparse default 0.9)
    est_epoch: int = 5  # the estimate runs in epochs with index > est_epoch, tau1 adapts at their starts (official)
    epoch_steps: int = 500  # steps per epoch (official --eval-step)
    class_count: str = "last"  # n from the confident h2 classes: last (official index semantics) | any | sum

    def check(self, cfg: Any) -> None:
        if "acr" not in cfg.debias.methods:
            return
        require(0 <= self.p_cutoff <= 1, "acr.p_cutoff", f"must be in [0, 1]; got {self.p_cutoff}")
        for key in ("tau1", "tau12", "tau2"):
            require(getattr(self, key) >= 0, f"acr.{key}", f"must be >= 0; got {getattr(self, key)}")
        require(0 <= self.ema_u < 1, "acr.ema_u", f"must be in [0, 1); got {self.ema_u}")
        require(self.est_epoch >= 0, "acr.est_epoch", f"must be >= 0; got {self.est_epoch}")
        require(self.epoch_steps >= 1, "acr.epoch_steps", f"must be >= 1; got {self.epoch_steps}")
        require_fixmatch(cfg, "acr replaces the pseudo-label threshold rule")


@COMPONENTS.register("acr")
class ACR(Component):
    """h1's targets and OR mask from the adaptive τ1; h2's two loss terms; û and τ1 updated by epoch."""

    name = "acr"
    uses_features = True
    eval_head = "acr"

    def __init__(self, cfg: RunConfig, ctx: RunContext) -> None:
        c = cfg.acr
        self.ctx, self.p_cutoff, self.rho, self.rule = ctx, c.p_cutoff, c.ema_u, c.class_count
        self.tau_max, self.est_epoch, self.epoch_steps = c.tau1, c.est_epoch, c.epoch_steps
        self.head = xavier_linear_(nn.Linear(ctx.model.num_features, ctx.num_classes))
        self.prior = ctx.lb_prior.double()
        self.adj12, self.adj2 = adjustment(self.prior, c.tau12), adjustment(self.prior, c.tau2)
        self.tau1 = float(c.tau1)
        self.adj1 = adjustment(self.prior, self.tau1)
        self.u = torch.full((ctx.num_classes,), 1.0 / ctx.num_classes)  # û, float32 as the official
        self.acc = torch.zeros(3)  # this epoch's summed divergences to (π, uniform, reversed π), float32
        self.est_steps = 0  # steps that ran the estimate (official est_step)
        self.epochs = Periodic(c.epoch_steps)
        in_lb = ctx.ulb_in_lb
        self.true_ulb = ~in_lb if in_lb is not None else torch.ones(ctx.n_ulb, dtype=torch.bool)

    def heads(self) -> dict[str, nn.Module]:
        return {"acr": self.head}

    def _estimating(self, step: int) -> bool:
        return step // self.epoch_steps > self.est_epoch

    def before_step(self, step: int) -> None:
        if self.epochs.due(step):
            if self._estimating(step) and (tau := adaptive_tau(self.acc, self.epoch_steps, self.tau_max)) is not None:
                self.tau1 = tau
                self.adj1 = adjustment(self.prior, tau)
            self.acc = torch.zeros_like(self.acc)

    @torch.no_grad()
    def _estimate(self, feats_w: torch.Tensor, ulb_pos: torch.Tensor) -> None:
        """One step of the distribution estimate from h2 on the weak features of the global batch."""
        self.prior, self.true_ulb = self.prior.to(feats_w.device), self.true_ulb.to(feats_w.device)
        z2 = head_of(self.ctx.model, "acr")(feats_w).float()
        cls, confident = adjusted_labels(z2, None, self.p_cutoff)
        counts = confident & self.true_ulb[ulb_pos]
        n = class_vector(cls, counts, self.ctx.num_classes, self.rule)
        u = self.u.to(n.device)
        self.u = update_u(u, n, self.rho)
        d = torch.where(n.sum() > 0, divergences(self.u, self.prior), 0.0)
        self.acc = (self.acc.to(n.device).double() + d).float()  # float32 sums of float64 terms, as the official
        self.est_steps += 1

    def pseudo_targets(self, targets: torch.Tensor, mask: torch.Tensor, logits_w: torch.Tensor,
                       ulb_pos: torch.Tensor, step: int,
                       feats_w: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        self.adj1, self.adj12 = self.adj1.to(logits_w.device), self.adj12.to(logits_w.device)  # kept on the device
        y1, conf1 = adjusted_labels(logits_w, self.adj1, self.p_cutoff)
        _, conf_raw = adjusted_labels(logits_w, None, self.p_cutoff)
        if feats_w is not None and self._estimating(step):
            self._estimate(feats_w, ulb_pos)
        return F.one_hot(y1, logits_w.shape[-1]).float(), or_mask(conf1, conf_raw)

    def loss_terms(self, views: Views, batch: Batch, targets: torch.Tensor | None, mask: torch.Tensor | None,
                   step: int) -> dict[str, torch.Tensor]:
        assert views.feats_lb is not None
        head = head_of(self.ctx.model, "acr")
        self.adj2 = self.adj2.to(views.feats_lb.device)
        z2_lb = head(views.feats_lb).double() + self.adj2  # float64, as the official
        terms = {"acr_xb": F.cross_entropy(z2_lb, batch.y_lb).float()}
        if views.feats_ulb_w is None or views.logits_ulb_w is None:
            return terms
        with torch.no_grad():
            _, conf_b = adjusted_labels(head(views.feats_ulb_w), None, self.p_cutoff)
        y12, conf12 = adjusted_labels(views.logits_ulb_w, self.adj12, self.p_cutoff)
        m12 = or_mask(conf_b, conf12)
        per_view = [F.cross_entropy(head(f).float(), y12, reduction="none") * m12 for f in views.feats_ulb_s]
        terms["acr_ub"] = torch.stack(per_view).mean()  # mean over n_strong * Bu, as the official `.mean()`
        return terms

    def eval_fields(self) -> dict[str, Any]:
        return {"acr_tau1": round(self.tau1, 6), "acr_u": [round(float(v), 6) for v in self.u]}

    def state_dict(self) -> dict[str, Any]:
        return {"u": self.u.clone(), "acc": self.acc.clone(), "tau1": self.tau1, "est_steps": self.est_steps,
                "epochs": self.epochs.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        if state["u"].shape != self.u.shape:
            raise ValueError(f"acr û has shape {tuple(state['u'].shape)}; this run has {tuple(self.u.shape)}")
        self.u, self.acc = state["u"].clone().float(), state["acc"].clone().float()
        self.tau1, self.est_steps = float(state["tau1"]), int(state["est_steps"])
        self.adj1 = adjustment(self.prior, self.tau1)
        self.epochs.load_state_dict(state["epochs"])
