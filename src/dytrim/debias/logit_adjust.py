"""Logit adjustment (Menon et al. 2021): loss form adds τ·log π to training logits, post-hoc form
subtracts it at prediction; π = labeled class prior (google-research logit_adjustment)."""

from __future__ import annotations

import torch

from dytrim.config import RunConfig
from dytrim.debias import COMPONENTS
from dytrim.engine.hooks import Component


def log_prior_offsets(counts: list[int], tau: float) -> torch.Tensor:
    """τ·log π with π = counts / sum; the reference adds 1e-12 inside the log (π**τ + 1e-12)."""
    c = torch.tensor(counts, dtype=torch.float64)
    return (torch.log((c / c.sum()) ** tau + 1e-12)).float()


@COMPONENTS.register("logit_adjust")
class LogitAdjustLoss(Component):
    """Trains on z + τ·log π (labeled logits; strong-view logits too with debias.la_unlabeled)."""

    name = "logit_adjust"

    def __init__(self, cfg: RunConfig, lb_counts: list[int]) -> None:
        self.offsets = log_prior_offsets(lb_counts, cfg.debias.la_tau)
        self.unlabeled = cfg.debias.la_unlabeled

    def train_logits(self, logits: torch.Tensor, labeled: bool, step: int) -> torch.Tensor:
        if labeled or self.unlabeled:
            self.offsets = _on(self.offsets, logits.device)
            return logits.float() + self.offsets  # in fp32 whatever the forward's precision
        return logits


@COMPONENTS.register("logit_adjust_posthoc")
class LogitAdjustPosthoc(Component):
    """Predicts argmax z − τ·log π; training is untouched."""

    name = "logit_adjust_posthoc"

    def __init__(self, cfg: RunConfig, lb_counts: list[int]) -> None:
        self.offsets = log_prior_offsets(lb_counts, cfg.debias.la_tau)

    def eval_logits(self, logits: torch.Tensor) -> torch.Tensor:
        self.offsets = _on(self.offsets, logits.device)
        return logits.float() - self.offsets


def _on(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`t` on `device`, copied at the first use there only (not once per step)."""
    return t if t.device == device else t.to(device)
