"""CDMAD (Lee & Kim, CVPR 2024): debias pseudo-labels and predictions by the baseline image's logits.

Training (reference `fixmatchcdmad.py`): each step, z(I) from the training-mode network with no
gradient, taken before the weak forward pass (its BN statistics are those of the one constant image,
and like the reference it updates the running buffers); after `debias.start` steps, pseudo-labels
come from z(weak u) − z(I). Test: argmax z(x) − z(I) with the EMA model, its BN in eval mode as the
reference (running statistics) or, with `debias.test_bn=train`, in train mode (the image's own
statistics, as during training; running buffers untouched).
"""

from __future__ import annotations

from typing import Any

import torch

from dytrim.config import RunConfig
from dytrim.debias import COMPONENTS
from dytrim.debias.baseline import baseline_image, baseline_logits
from dytrim.engine.hooks import Component


@COMPONENTS.register("cdmad")
class CDMAD(Component):
    """Subtracts z(I) from weak-view logits after the debias start and from test logits."""

    name = "cdmad"

    def __init__(self, cfg: RunConfig, lb_counts: list[int]) -> None:
        self.kind = cfg.debias.baseline
        self.start = cfg.debias.start
        self.test_bn = cfg.debias.test_bn
        self.z_I: torch.Tensor | None = None
        self.trainer: Any = None

    def bind(self, trainer: Any) -> None:
        self.trainer = trainer
        x = trainer.data.x_train
        self.image = baseline_image(self.kind, x.shape[1], x.shape[2], x.shape[3], trainer.device)

    def before_step(self, step: int) -> None:
        model = self.trainer.model
        with torch.no_grad():
            self.z_I = model(self.image)[0].float()  # train mode, as the reference

    def pseudo_logits(self, logits_w: torch.Tensor, step: int) -> torch.Tensor:
        if step >= self.start and self.z_I is not None:
            return logits_w.float() - self.z_I.float()  # in fp32: the loop's logits and z(I) both are
        return logits_w

    def eval_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """z(x) − z(I), with z(I) from the EMA model in BN mode `debias.test_bn` (reference: eval)."""
        return logits.float() - baseline_logits(self.trainer.ema.model, self.image, self.test_bn).float()
