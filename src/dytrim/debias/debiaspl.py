"""DebiasPL (Wang et al., CVPR 2022): debiased pseudo-labels from an online prior q̂, and the adaptive marginal loss.

Official rule (frank-xwang/debiased-pseudo-labeling `main_DebiasPL.py`: `causal_inference`, `update_qhat`), each
step, with q̂ starting uniform:
1. pseudo-label probabilities softmax(z_w − τ·log q̂) with the q̂ of before this batch (the SSL base then takes
   the argmax and its threshold, or keeps the soft vector);
2. q̂ ← m·q̂ + (1 − m)·mean_b softmax(z_w) (the weak logits as this component receives them, no adjustment);
3. the strong-view logits enter the consistency loss as z_s + τ·log q̂ with the updated q̂; labeled logits as they are.
So it is logit adjustment with an online prior: step 1 at [pseudo_logits], step 3 at [train_logits].
USB's port (semilearn `imb_algorithms/debiaspl`) updates q̂ with `probs.mean()`, a scalar ≡ 1/C, in v0.3.0 and at
HEAD: q̂ stays uniform and the method is FixMatch. The official rule is the one here (`mean` over the batch);
the official `--masked-qhat` branch (q̂ becomes a B×C tensor) is not reproduced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from dytrim.config import RunConfig, config_section, require
from dytrim.debias.registry import COMPONENTS
from dytrim.engine.context import RunContext
from dytrim.engine.hooks import Component


@config_section("debiaspl")
@dataclass
class DebiasPLConfig:
    """DebiasPL's strength and the momentum of its running prior (official argparse defaults)."""

    tau: float = 1.0  # tau: pseudo-labels from z_w - tau log q, strong logits z_s + tau log q (official --tau 1.0;
    #   its 1% ImageNet script and USB use 0.4, the paper-* presets too)
    qhat_m: float = 0.999  # momentum m of q <- m q + (1 - m) mean softmax(z_w) (official --qhat_m)

    def check(self, cfg: Any) -> None:
        if "debiaspl" not in cfg.debias.methods:
            return
        require(self.tau >= 0, "debiaspl.tau", f"must be >= 0; got {self.tau}")
        require(0 <= self.qhat_m < 1, "debiaspl.qhat_m", f"must be in [0, 1); got {self.qhat_m}")
        require(cfg.ssl.name != "supervised", "debias.methods",
                "debiaspl debiases pseudo-labels: it needs an SSL base that uses unlabeled data (not supervised)")


def debiased_logits(logits_w: torch.Tensor, qhat: torch.Tensor, tau: float) -> torch.Tensor:
    """z_w − τ·log q̂ [Bu, C] (official `causal_inference` before its softmax)."""
    return logits_w.float() - tau * torch.log(qhat)


def update_qhat(logits_w: torch.Tensor, qhat: torch.Tensor, m: float) -> torch.Tensor:
    """m·q̂ + (1 − m)·mean_b softmax(z_w) (official `update_qhat`, unmasked)."""
    return m * qhat + (1 - m) * F.softmax(logits_w.detach().float(), dim=-1).mean(dim=0)


@COMPONENTS.register("debiaspl")
class DebiasPL(Component):
    """Pseudo-labels from z_w − τ log q̂; q̂ a running mean of the weak softmax; strong logits + τ log q̂."""

    name = "debiaspl"

    def __init__(self, cfg: RunConfig, ctx: RunContext) -> None:
        self.tau, self.m = cfg.debiaspl.tau, cfg.debiaspl.qhat_m
        self.qhat = torch.full((ctx.num_classes,), 1.0 / ctx.num_classes)  # [C] running prior, uniform at start

    def pseudo_logits(self, logits_w: torch.Tensor, step: int) -> torch.Tensor:
        self.qhat = self.qhat.to(logits_w.device)
        adjusted = debiased_logits(logits_w, self.qhat, self.tau)  # with the q̂ of before this batch
        self.qhat = update_qhat(logits_w, self.qhat, self.m)
        return adjusted

    def train_logits(self, logits: torch.Tensor, labeled: bool, step: int) -> torch.Tensor:
        if labeled:
            return logits
        self.qhat = self.qhat.to(logits.device)
        return logits.float() + self.tau * torch.log(self.qhat)  # the adaptive marginal loss, updated q̂

    def eval_fields(self) -> dict[str, Any]:
        return {"debiaspl_qhat": [round(float(q), 6) for q in self.qhat]}

    def state_dict(self) -> dict[str, Any]:
        return {"qhat": self.qhat.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "qhat" in state:
            if state["qhat"].shape != self.qhat.shape:
                raise ValueError(f"debiaspl q̂ has shape {tuple(state['qhat'].shape)}; this run has {self.qhat.shape}")
            self.qhat = state["qhat"].clone().float()
