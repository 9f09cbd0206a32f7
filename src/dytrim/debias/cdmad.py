"""CDMAD (Lee & Kim, CVPR 2024): debias pseudo-labels and predictions by the baseline image's logits.

Training (reference `fixmatchcdmad.py`): each step, z(I) from the training-mode network with no
gradient, taken before the weak forward pass (its BN statistics are those of the one constant image,
and like the reference it updates the running buffers); from `debias.start` on (a step, or a fraction
of train.steps: config/schedule.py), pseudo-labels come from z(weak u) − z(I). Test: argmax z(x) − z(I)
with the EMA model, its BN in eval mode as the reference (running statistics) or, with `cdmad.test_bn=train`,
in train mode (the image's own statistics, as during training; running buffers untouched).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from dytrim.config import RunConfig, config_section
from dytrim.config.schedule import step_of
from dytrim.debias.registry import COMPONENTS
from dytrim.engine.context import RunContext
from dytrim.engine.hooks import Component


@config_section("cdmad")
@dataclass
class CDMADConfig:
    """CDMAD's test-time probe."""

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"test_bn": ("eval", "train")}

    test_bn: str = "eval"  # BN mode of the EMA model's z(I) at test: eval (reference) | train (the image's own stats)


@COMPONENTS.register("cdmad")
class CDMAD(Component):
    """Subtracts z(I) (the loop's per-step probe, ctx.z_I) from weak-view logits after the debias start and the EMA
    model's z(I) from test logits."""

    name = "cdmad"
    uses_probe = True
    starts = ("pseudo-label debiasing z(u) - z(I)", "debias.start", "")

    def __init__(self, cfg: RunConfig, ctx: RunContext) -> None:
        self.ctx = ctx
        self.start = step_of(cfg, "debias.start")  # a step, or a fraction of train.steps resolved to one
        self.test_bn = cfg.cdmad.test_bn

    def pseudo_logits(self, logits_w: torch.Tensor, step: int) -> torch.Tensor:
        z_I = self.ctx.z_I
        if step >= self.start and z_I is not None:
            return logits_w.float() - z_I.float()  # in fp32: the loop's logits and z(I) both are
        return logits_w

    def eval_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """z(x) − z(I), with z(I) from the EMA model in BN mode `cdmad.test_bn` (reference: eval)."""
        return logits.float() - self.ctx.ema_baseline_logits(self.test_bn).float()
