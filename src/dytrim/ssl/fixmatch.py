"""FixMatch (Sohn et al. 2020) and its reference-code variant; supervised-only as the degenerate base.

FixMatch: q = softmax(z_w); mask = [max q >= p_cutoff]; target = one-hot argmax q (hard_label)
or softmax(z_w / T) (soft). The reference code of CDMAD/DyTrim uses soft targets with p_cutoff = 0 and two
strong views (`paper` presets); USB uses hard labels with p_cutoff = 0.95 (`usb` presets).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dytrim.ssl.base import ALGORITHMS, SSLAlgorithm


@ALGORITHMS.register("supervised")
class Supervised(SSLAlgorithm):
    """Labeled loss only (the unlabeled batch is never drawn)."""


@ALGORITHMS.register("fixmatch")
class FixMatch(SSLAlgorithm):
    """Confidence-thresholded pseudo-labels from the weak view, trained on the strong views."""

    uses_unlabeled = True

    def probs(self, logits_w: torch.Tensor) -> torch.Tensor:
        """Class probabilities of the weak view (no gradient); the mask is taken on these."""
        return F.softmax(logits_w.detach().float(), dim=-1)

    def mask(self, probs: torch.Tensor, ulb_pos: torch.Tensor) -> torch.Tensor:
        """FixMatch's fixed threshold; FlexMatch/FreeMatch override this rule only."""
        return (probs.max(dim=-1).values >= self.cfg.p_cutoff).float()

    def pseudo_targets(
        self, logits_w: torch.Tensor, ulb_pos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        probs = self.probs(logits_w)
        mask = self.mask(probs, ulb_pos)
        if self.cfg.hard_label:
            targets = F.one_hot(probs.argmax(dim=-1), self.num_classes).to(probs.dtype)
        elif self.cfg.temperature != 1.0:
            targets = F.softmax(logits_w.detach().float() / self.cfg.temperature, dim=-1)
        else:
            targets = probs
        return targets, mask
