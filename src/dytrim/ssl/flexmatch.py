"""FlexMatch (Zhang et al. 2021): FixMatch with curriculum per-class thresholds (USB `flexmatch/utils.py`).

Learning status: `selected_label[i]` is the latest class sample i was predicted with max p >= tau (-1 = never).
sigma_c = #{i : selected_label[i] == c}; beta_c = sigma_c / max(max_c sigma_c, #unused) with thresh_warmup,
sigma_c / max_c sigma_c without. mask = [max p >= tau * beta_c / (2 - beta_c)] at c = argmax p (convex mapping).

Order as USB's `masking`: the mask uses beta from the status *before* this batch; then the confident samples of
the batch update `selected_label` and beta is recomputed (used from the next step on). beta is only recomputed
while no single bin (a class or "unused") holds the whole pool, as USB's `max(pseudo_counter.values()) < len`.
"""

from __future__ import annotations

from typing import Any

import torch

from dytrim.config import SSLConfig
from dytrim.engine.indexing import put_last
from dytrim.ssl.base import ALGORITHMS
from dytrim.ssl.fixmatch import FixMatch


@ALGORITHMS.register("flexmatch")
class FlexMatch(FixMatch):
    """Per-class flexible thresholds tau * M(beta_c) from the pool's learning status."""

    def __init__(self, cfg: SSLConfig, num_classes: int, num_ulb: int) -> None:
        super().__init__(cfg, num_classes, num_ulb)
        self.selected_label = torch.full((num_ulb,), -1, dtype=torch.long)  # [num_ulb] class or -1 (unused)
        self.classwise_acc = torch.zeros(num_classes)  # [C] beta_c, 0 until some sample is selected

    def class_thresholds(self) -> torch.Tensor:
        """[C] current thresholds tau * beta_c / (2 - beta_c) (convex mapping)."""
        return self.cfg.p_cutoff * (self.classwise_acc / (2.0 - self.classwise_acc))

    @torch.no_grad()
    def update_status(self) -> None:
        """Recompute beta_c from `selected_label` (USB `FlexMatchThresholdingHook.update`)."""
        counts = torch.bincount(self.selected_label + 1, minlength=self.num_classes + 1)  # [C+1]: unused, classes
        if int(counts.max()) >= self.num_ulb:  # one bin (all unused, or all one class) holds the pool: keep beta
            return
        denom = counts.max() if self.cfg.thresh_warmup else counts[1:].max()
        # float64 division then float32, as USB's Python int / int stored into a float32 tensor
        self.classwise_acc = (counts[1:].double() / denom.double()).to(self.classwise_acc)

    def mask(self, probs: torch.Tensor, ulb_pos: torch.Tensor) -> torch.Tensor:
        """Mask with the thresholds of the status so far, then record this batch's confident predictions."""
        self.selected_label = self.selected_label.to(probs.device)
        self.classwise_acc = self.classwise_acc.to(probs.device)
        max_p, cls = probs.max(dim=-1)
        beta = self.classwise_acc[cls]
        mask = (max_p >= self.cfg.p_cutoff * (beta / (2.0 - beta))).to(max_p.dtype)
        select = max_p >= self.cfg.p_cutoff  # >=, as USB (`max_probs.ge(p_cutoff)`)
        if bool(select.any()):
            put_last(self.selected_label, ulb_pos[select], cls[select])
        self.update_status()
        return mask

    def state_dict(self) -> dict[str, Any]:
        return {"selected_label": self.selected_label.clone(), "classwise_acc": self.classwise_acc.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        selected, acc = state["selected_label"], state["classwise_acc"]
        if selected.shape != (self.num_ulb,) or acc.shape != (self.num_classes,):
            raise ValueError(
                f"FlexMatch state is for {tuple(selected.shape)} unlabeled samples and {tuple(acc.shape)} classes; "
                f"this run has ({self.num_ulb},) and ({self.num_classes},)"
            )
        self.selected_label = selected.clone().long()
        self.classwise_acc = acc.clone().float()
