"""FreeMatch (Wang et al. 2023): self-adaptive thresholds and the fairness loss (USB `freematch/utils.py`,
`freematch/freematch.py`).

Each step, from the weak probabilities p [Bu, C] with momentum m = ema_p (all initialised to 1/C):
time_p <- m time_p + (1-m) mean_i max p_i; p_model <- m p_model + (1-m) mean_i p_i;
label_hist <- m label_hist + (1-m) histogram(argmax p) / Bu. Then (USB: update first, mask after)
mask = [max p >= time_p * p_model[c] / max(p_model)] at c = argmax p.
Fairness loss (USB `entropy_loss`, sign as USB): lambda_e * sum_c SumNorm(p_model / label_hist)_c
* log(SumNorm(mean p_s / hist_s)_c + 1e-12) over the masked strong predictions, 1/0 scalers set to 0.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from dytrim.config import SSLConfig
from dytrim.ssl.base import ALGORITHMS
from dytrim.ssl.fixmatch import FixMatch


def _inv_or_zero(x: torch.Tensor) -> torch.Tensor:
    """1 / x with the infinities of 1/0 replaced by 0 (USB `replace_inf_to_zero`), no gradient."""
    inv = 1.0 / x.detach()
    return torch.where(inv == float("inf"), torch.zeros_like(inv), inv)


@ALGORITHMS.register("freematch")
class FreeMatch(FixMatch):
    """Self-adaptive global (time_p) and local (p_model) thresholds, plus the self-adaptive fairness loss."""

    def __init__(self, cfg: SSLConfig, num_classes: int, num_ulb: int) -> None:
        super().__init__(cfg, num_classes, num_ulb)
        self.p_model = torch.full((num_classes,), 1.0 / num_classes)  # [C] EMA of mean weak probabilities
        self.label_hist = torch.full((num_classes,), 1.0 / num_classes)  # [C] EMA of the weak argmax histogram
        self.time_p = self.p_model.mean()  # [] EMA of mean max probability (global threshold)

    @torch.no_grad()
    def update(self, probs: torch.Tensor) -> None:
        """EMA step of time_p, p_model, label_hist from weak probabilities [Bu, C] (USB hook `update`)."""
        m = self.cfg.ema_p
        max_p, cls = probs.max(dim=-1)
        self.time_p = self.time_p * m + (1 - m) * max_p.mean()
        self.p_model = self.p_model * m + (1 - m) * probs.mean(dim=0)
        hist = torch.bincount(cls, minlength=self.num_classes).to(self.p_model.dtype)
        self.label_hist = self.label_hist * m + (1 - m) * (hist / hist.sum())

    def class_thresholds(self) -> torch.Tensor:
        """[C] current thresholds time_p * p_model[c] / max(p_model)."""
        return self.time_p * (self.p_model / self.p_model.max())

    def mask(self, probs: torch.Tensor, ulb_pos: torch.Tensor) -> torch.Tensor:
        """Update the EMAs with this batch, then threshold each sample at its predicted class."""
        self.p_model = self.p_model.to(probs.device)
        self.label_hist = self.label_hist.to(probs.device)
        self.time_p = self.time_p.to(probs.device)
        self.update(probs)
        max_p, cls = probs.max(dim=-1)
        return (max_p >= self.class_thresholds()[cls]).to(max_p.dtype)

    def extra_loss(self, logits_s: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
        """lambda_e * fairness loss on strong logits [n_strong * Bu, C] with mask [Bu] (0 if nothing is masked in).

        With n_strong > 1 the views, concatenated view-major, are pooled as one strong batch of n_strong * Bu
        (mask repeated per view): USB's loss on a batch holding each unlabeled image n_strong times. With one
        strong view this is exactly USB.
        """
        del targets
        if logits_s.shape[0] % max(mask.shape[0], 1) != 0:
            raise ValueError(f"strong logits {tuple(logits_s.shape)} are not whole views of a mask of {mask.shape[0]}")
        keep = mask.repeat(logits_s.shape[0] // max(mask.shape[0], 1)).bool()
        if not bool(keep.any()):
            return logits_s.new_zeros((), dtype=torch.float32)
        probs_s = F.softmax(logits_s[keep].float(), dim=-1)  # [K, C] masked strong predictions
        hist_s = torch.bincount(probs_s.argmax(dim=-1), minlength=self.num_classes).to(probs_s.dtype)
        hist_s = hist_s / hist_s.sum()
        mod_prob_model = self.p_model.to(probs_s) * _inv_or_zero(self.label_hist.to(probs_s))
        mod_prob_model = mod_prob_model / mod_prob_model.sum()
        mod_mean_prob_s = probs_s.mean(dim=0) * _inv_or_zero(hist_s)
        mod_mean_prob_s = mod_mean_prob_s / mod_mean_prob_s.sum()
        return self.cfg.lambda_e * (mod_prob_model * torch.log(mod_mean_prob_s + 1e-12)).sum()

    def state_dict(self) -> dict[str, Any]:
        return {"p_model": self.p_model.clone(), "label_hist": self.label_hist.clone(), "time_p": self.time_p.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("p_model", "label_hist"):
            if state[key].shape != (self.num_classes,):
                shape = tuple(state[key].shape)
                raise ValueError(f"FreeMatch {key} has shape {shape}; this run has {self.num_classes} classes")
        self.p_model = state["p_model"].clone().float()
        self.label_hist = state["label_hist"].clone().float()
        self.time_p = state["time_p"].clone().float().reshape(())
