"""Adsh (Guo & Li, ICML 2022): adaptive per-class thresholds from the sorted confidences of a pass over the
unlabeled set.

Official rule (guolz-ml/Class-Imbalanced-SSL `train.py::update_s`, `algorithms/fixmatch.py::ADSH`):
- a score s ∈ (0, 1]^C starts at τ (0.95) for every class; pseudo-label ŷ = argmax p/s, mask = [max p/s ≥ 1],
  p = softmax of the weak logits; hard labels (the base's targets and mask are replaced: [pseudo_targets]);
- before each epoch with index > 1 (epochs of 512 steps): the raw model, BN in eval mode, predicts the weak view of
  the whole unlabeled set; confidences are grouped by predicted class and sorted in descending order;
  ρ = (number of class-0 confidences ≥ τ) / n_0, or 1 when there are none (or no class-0 prediction);
  for each class k ≥ 1 with n_k > 0: s_k = min(τ, C_k[max(0, round(n_k·ρ − 1))]) (round half to even, as
  `np.round`); class 0 (the head class) keeps s_0 = τ.
Differences kept out: the official pass reads a shuffled `drop_last` loader (a few samples skipped at random); ours
passes every unlabeled sample once. USB's port (`imb_algorithms/adsh`) thresholds at exp(−0.95) until its first
update, masks with argmax p, uses ρ = i/n_0 and index ⌊n_k ρ⌋ − 1 (−1, the least confident, when ρ = 0), updates
class 0 too and passes the EMA model over the test transform; `adsh.model=ema adsh.view=none` gives USB's pass.
Adsh replaces the threshold rule of the base, so it stacks on fixmatch only (flexmatch/freematch are refused).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from dytrim.config import RunConfig, config_section, require
from dytrim.debias.registry import COMPONENTS, require_fixmatch
from dytrim.engine.components import load_generator_state, owned_generator
from dytrim.engine.context import RunContext
from dytrim.engine.hooks import Component
from dytrim.engine.schedules import Periodic


@config_section("adsh")
@dataclass
class AdshConfig:
    """Adsh's threshold, its epoch and the pass that updates the class scores (official defaults)."""

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"model": ("student", "ema"), "view": ("weak", "none")}

    tau: float = 0.95  # tau: every class score starts here and never exceeds it (official --threshold)
    epoch_steps: int = 512  # steps per epoch (official --eval_steps)
    first_epoch: int = 2  # the scores are updated before every epoch from this index on (official: epoch > 1)
    model: str = "student"  # the pass's network: student (official: the raw model) | ema (USB)
    view: str = "weak"  # the pass's input: weak (official: the unlabeled loader's weak view) | none (USB)

    def check(self, cfg: Any) -> None:
        if "adsh" not in cfg.debias.methods:
            return
        require(0 < self.tau <= 1, "adsh.tau", f"must be in (0, 1]; got {self.tau}")
        require(self.epoch_steps >= 1, "adsh.epoch_steps", f"must be >= 1; got {self.epoch_steps}")
        require(self.first_epoch >= 0, "adsh.first_epoch", f"must be >= 0; got {self.first_epoch}")
        require_fixmatch(cfg, "adsh replaces the pseudo-label threshold rule")


def adsh_scores(probs: torch.Tensor, score: torch.Tensor, tau: float) -> torch.Tensor:
    """New class scores [C] from the pass's softmax [N, C] and the current scores [C] (official `update_s`)."""
    conf, cls = probs.float().max(dim=-1)
    new = score.clone()
    head = conf[cls == 0]
    n_conf = int((head >= tau).sum())
    rho = n_conf / len(head) if n_conf > 0 else 1.0  # the leading run of sorted class-0 confidences >= tau
    for k in range(1, len(score)):
        ck = torch.sort(conf[cls == k], descending=True).values
        if len(ck):
            idx = max(0, round(len(ck) * rho - 1))  # Python's round: half to even, as np.round
            new[k] = min(tau, float(ck[idx]))
    return new


def rectified_targets(logits_w: torch.Tensor, score: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(one-hot argmax p/s [Bu, C], mask [max p/s >= 1] [Bu]) from weak logits (official `ADSH.forward`)."""
    probs = F.softmax(logits_w.detach().float(), dim=-1)
    max_r, label = (probs / score.to(probs.device)).max(dim=-1)
    return F.one_hot(label, probs.shape[-1]).to(probs.dtype), (max_r >= 1.0).to(probs.dtype)


@COMPONENTS.register("adsh")
class Adsh(Component):
    """Replaces the base's targets and mask by Adsh's rectified ones; scores updated by a per-epoch pass."""

    name = "adsh"

    def __init__(self, cfg: RunConfig, ctx: RunContext) -> None:
        c = cfg.adsh
        self.ctx, self.tau, self.model, self.view = ctx, c.tau, c.model, c.view
        self.score = torch.full((ctx.num_classes,), float(c.tau))  # float32, as the official `.float()` of it
        self.epochs = Periodic(c.epoch_steps, first=c.first_epoch)
        self.gen = owned_generator(ctx.seed, self.name, ctx.device)  # the pass's weak views

    def before_step(self, step: int) -> None:
        if self.epochs.due(step) and self.ctx.whole_set is not None:
            net = self.ctx.model if self.model == "student" else self.ctx.ema_model
            res = self.ctx.whole_set(net, "unlabeled", "eval", self.view, self.gen if self.view == "weak" else None)
            self.score = adsh_scores(F.softmax(res.logits, dim=-1), self.score.to(res.logits.device), self.tau)

    def pseudo_targets(self, targets: torch.Tensor, mask: torch.Tensor, logits_w: torch.Tensor,
                       ulb_pos: torch.Tensor, step: int,
                       feats_w: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return rectified_targets(logits_w, self.score)

    def eval_fields(self) -> dict[str, Any]:
        return {"adsh_score": [round(float(s), 5) for s in self.score]}

    def state_dict(self) -> dict[str, Any]:
        return {"score": self.score.clone(), "epochs": self.epochs.state_dict(), "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.score = state["score"].clone().float()
        self.epochs.load_state_dict(state["epochs"])
        load_generator_state(self.gen, state["gen"])
