"""DASO (Oh et al., CVPR 2022): blend the linear pseudo-label with a semantic one from class prototypes of
EMA-model features, more strongly for the classes pseudo-labelled most, plus a semantic alignment loss.

Official rule (ytaek-oh/daso `lib/models/daso_model.py::forward_train`, `feature_queue.py`, `dist_logger.py`,
`lib/algorithm/daso.py`, `configs/cifar10/fixmatch_daso.yaml`), every step t:
- the EMA model, in train mode (batch BN statistics), embeds the weak labeled batch without gradient; the features
  join per-class FIFO queues of 256 (balanced); prototype_c = mean of queue c (zero until class c arrives);
- from step `warm` on (official PRETRAIN_STEPS 5000 of 250k): s_w = softmax(cos(f_w, proto)/T_proto), f_w the
  student's weak features; p = softmax(z_w); v = pl_dist^(1/T_dist) / Σ, then / max;
  p~ = (1 − v_{argmax p}) p + v_{argmax p} s_w; target one-hot argmax p~, mask = [max p~ ≥ ssl.p_cutoff] (0.95);
  loss += w · (−Σ s_w log softmax(cos(f_s, proto)/T_proto)) / B over the strong view (term `daso_align`, w 1);
- pl_dist = class counts of the final pseudo-labels of every unlabeled sample (masked or not, pretraining
  included) of the last 100 steps, recounted after every 100th step (before step 100, 200, ... here).
EMA BN (`daso.ema_bn`): `update` (official) lets the labeled forward move the EMA's running buffers with the
model's BN momentum, before the EMA step averages them with the student's; `frozen` restores them
(engine/probe.py::frozen_bn_stats). Under DDP the labeled images and labels are gathered (ctx.gather) and every rank
embeds the global batch, so BN sees the official batch and every rank's queue and EMA buffers stay equal.
The queue push runs at [weight], the one hook that sees the labeled batch before the pseudo-labels (weights are
left alone). With ssl.n_strong > 1 the alignment loss is the mean over the strong views (official: one view).
USB's port (semilearn `imb_algorithms/daso`) blends the previous batch's s_w (computed after its pseudo-label hook),
masks on the unblended probabilities, pre-trains 5120 steps, forwards the EMA weights through the student module and
does not checkpoint the queue; none of these is reproduced. Ours is exact on resume (queues, window, schedule).
DASO replaces the base's pseudo-label rule, so it stacks on fixmatch only, with hard labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from dytrim.config import RunConfig, config_section, require
from dytrim.config.schedule import step_of
from dytrim.debias.daso_parts import ClassQueues, LabelWindow, alignment_loss, blend, dist_weights, semantic_logits
from dytrim.debias.registry import COMPONENTS, require_fixmatch
from dytrim.engine.context import RunContext
from dytrim.engine.hooks import Batch, Component, Views
from dytrim.engine.probe import frozen_bn_stats
from dytrim.engine.schedules import Periodic


@config_section("daso")
@dataclass
class DASOConfig:
    """DASO's pretraining length, queues, temperatures, window and alignment weight (official CIFAR-10 defaults)."""

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"ema_bn": ("update", "frozen")}

    warm: int | float = 5000  # pretraining steps before the blend and the alignment loss: an integer is a step, a
    #   float in [0, 1] a fraction of train.steps (as debias.start); official PRETRAIN_STEPS 5000 of 250k (0.02)
    queue_size: int = 256  # EMA features kept per class (official MODEL.QUEUE.MAX_SIZE, balanced queue)
    t_proto: float = 0.05  # temperature of the prototype similarities (official PROTO_TEMP)
    t_dist: float = 1.5  # v = pl_dist^(1/t_dist), normalised (official CIFAR-10 config: 1.5 when gamma_l == gamma_u,
    #   else 0.3)
    pl_period: int = 100  # steps of the pseudo-label window, recounted every pl_period steps (PL_DIST_UPDATE_PERIOD)
    dist_aware: bool = True  # blend weight v_{argmax p} (official WITH_DIST_AWARE); false: the fixed interp_alpha
    interp_alpha: float = 0.5  # fixed blend weight when dist_aware is false (official INTERP_ALPHA)
    align_weight: float = 1.0  # weight of the semantic alignment loss (official PSA_LOSS_WEIGHT)
    ema_bn: str = "update"  # the EMA model's labeled forward: update (official: train mode moves its BN running
    #   buffers) | frozen (batch statistics, running buffers restored)

    def check(self, cfg: Any) -> None:
        if "daso" not in cfg.debias.methods:
            return
        require_fixmatch(cfg, "daso replaces the pseudo-label rule with its blend")
        require(cfg.ssl.hard_label, "ssl.hard_label", "daso's pseudo-labels are the one-hot argmax of its blend "
                "(official); set ssl.hard_label=true")
        require(self.queue_size >= 1, "daso.queue_size", f"must be >= 1; got {self.queue_size}")
        require(self.t_proto > 0, "daso.t_proto", f"must be > 0; got {self.t_proto}")
        require(self.t_dist > 0, "daso.t_dist", f"must be > 0; got {self.t_dist}")
        require(self.pl_period >= 1, "daso.pl_period", f"must be >= 1; got {self.pl_period}")
        require(0 <= self.interp_alpha <= 1, "daso.interp_alpha", f"must be in [0, 1]; got {self.interp_alpha}")
        require(self.align_weight >= 0, "daso.align_weight", f"must be >= 0; got {self.align_weight}")
        start = step_of(cfg, "daso.warm")
        require(start >= self.pl_period or start >= cfg.train.steps, "daso.warm",
                f"the blend needs one pseudo-label window first: warm (step {start}) must be >= daso.pl_period "
                f"({self.pl_period})")


@COMPONENTS.register("daso")
class DASO(Component):
    """Queues EMA labeled features at [weight]; from daso.warm on replaces targets and mask by the blend and adds the
    alignment loss; the label window is recounted every daso.pl_period steps at [before_step]."""

    name = "daso"
    uses_features = True
    starts = ("the semantic pseudo-label blend and alignment loss", "daso.warm", "")

    def __init__(self, cfg: RunConfig, ctx: RunContext) -> None:
        c = cfg.daso
        self.ctx, self.t_proto, self.t_dist, self.alpha = ctx, c.t_proto, c.t_dist, c.interp_alpha
        self.dist_aware, self.align_weight, self.ema_bn = c.dist_aware, c.align_weight, c.ema_bn
        self.p_cutoff = cfg.ssl.p_cutoff  # official CONFIDENCE_THRESHOLD, shared with FixMatch
        self.warm = step_of(cfg, "daso.warm")
        self.queue = ClassQueues(ctx.num_classes, c.queue_size, ctx.model.num_features, ctx.device)
        self.window = LabelWindow(ctx.num_classes)
        self.refresh = Periodic(c.pl_period, first=1)  # before steps pl_period, 2 pl_period, ...

    def before_step(self, step: int) -> None:
        if self.refresh.due(step):
            self.window.refresh()

    @torch.no_grad()
    def weight(self, batch: Batch, step: int) -> None:
        """Push the EMA model's features of the (global) weak labeled batch into the queues; weights untouched."""
        x, y = self.ctx.gather(batch.x_lb), self.ctx.gather(batch.y_lb)
        ema = self.ctx.ema_model
        if self.ema_bn == "frozen":
            with frozen_bn_stats(ema):
                feats = ema.forward_features(x)
        else:
            was = ema.training
            ema.train()
            feats = ema.forward_features(x)
            ema.train(was)
        self.queue.push(feats, y)

    def pseudo_targets(self, targets: torch.Tensor, mask: torch.Tensor, logits_w: torch.Tensor,
                       ulb_pos: torch.Tensor, step: int,
                       feats_w: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
        probs = F.softmax(logits_w.detach().float(), dim=-1)
        if step < self.warm:
            self.window.push(probs.argmax(dim=-1))
            return None
        assert feats_w is not None, "daso needs the weak view's features (uses_features)"
        s_w = F.softmax(semantic_logits(feats_w, self.queue.prototypes, self.t_proto), dim=1)
        if self.dist_aware:
            v = dist_weights(self.window.dist().to(probs.device), self.t_dist)
            weight: torch.Tensor | float = v[probs.argmax(dim=-1)].view(-1, 1)
        else:
            weight = self.alpha
        conf, label = blend(probs, s_w, weight).max(dim=-1)
        self.window.push(label)
        return F.one_hot(label, probs.shape[-1]).to(probs.dtype), (conf >= self.p_cutoff).to(probs.dtype)

    def loss_terms(self, views: Views, batch: Batch, targets: torch.Tensor | None, mask: torch.Tensor | None,
                   step: int) -> dict[str, torch.Tensor]:
        zero = views.logits_lb.new_zeros(())
        if step < self.warm or self.align_weight <= 0 or views.feats_ulb_w is None or not views.feats_ulb_s:
            return {"daso_align": zero}
        protos = self.queue.prototypes
        with torch.no_grad():
            s_w = F.softmax(semantic_logits(views.feats_ulb_w, protos, self.t_proto), dim=1)
        losses = [alignment_loss(s_w, semantic_logits(f, protos, self.t_proto)) for f in views.feats_ulb_s]
        return {"daso_align": self.align_weight * torch.stack(losses).mean()}

    def eval_fields(self) -> dict[str, Any]:
        counts = self.window.counts.float()
        dist = (counts / counts.sum()).tolist() if counts.sum() > 0 else []
        return {"daso_pl_dist": [round(float(v), 5) for v in dist], "daso_queue": self.queue.counts()}

    def state_dict(self) -> dict[str, Any]:
        return {"queue": self.queue.state_dict(), "window": self.window.state_dict(),
                "refresh": self.refresh.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.queue.load_state_dict(state["queue"])
        self.window.load_state_dict(state["window"])
        self.refresh.load_state_dict(state["refresh"])
