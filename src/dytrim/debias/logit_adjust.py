"""Logit adjustment (Menon et al. 2021): loss form adds τ·log π to training logits, post-hoc form
subtracts it at prediction; π = labeled class prior (google-research logit_adjustment)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dytrim.config import RunConfig, config_section
from dytrim.debias.registry import COMPONENTS
from dytrim.engine.context import RunContext
from dytrim.engine.hooks import Component


def log_prior_offsets(counts: list[int], tau: float) -> torch.Tensor:
    """τ·log π with π = counts / sum; the reference adds 1e-12 inside the log (π**τ + 1e-12)."""
    c = torch.tensor(counts, dtype=torch.float64)
    return (torch.log((c / c.sum()) ** tau + 1e-12)).float()


@config_section("logit_adjust")
@dataclass
class LogitAdjustConfig:
    """Logit adjustment (both forms): the strength and whether the loss form also adjusts consistency logits."""

    tau: float = 1.0  # strength tau (offsets tau * log pi, pi = labeled class prior)
    unlabeled: bool = False  # loss form also on the strong-view (consistency) logits


@COMPONENTS.register("logit_adjust")
class LogitAdjustLoss(Component):
    """Trains on z + τ·log π (labeled logits; strong-view logits too with logit_adjust.unlabeled)."""

    name = "logit_adjust"

    def __init__(self, cfg: RunConfig, ctx: RunContext) -> None:
        self.offsets = log_prior_offsets(ctx.lb_counts, cfg.logit_adjust.tau)
        self.unlabeled = cfg.logit_adjust.unlabeled

    def train_logits(self, logits: torch.Tensor, labeled: bool, step: int) -> torch.Tensor:
        if labeled or self.unlabeled:
            self.offsets = _on(self.offsets, logits.device)
            return logits.float() + self.offsets  # in fp32 whatever the forward's precision
        return logits


@COMPONENTS.register("logit_adjust_posthoc")
class LogitAdjustPosthoc(Component):
    """Predicts argmax z − τ·log π; training is untouched."""

    name = "logit_adjust_posthoc"

    def __init__(self, cfg: RunConfig, ctx: RunContext) -> None:
        self.offsets = log_prior_offsets(ctx.lb_counts, cfg.logit_adjust.tau)

    def eval_logits(self, logits: torch.Tensor) -> torch.Tensor:
        self.offsets = _on(self.offsets, logits.device)
        return logits.float() - self.offsets


def _on(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`t` on `device`, copied at the first use there only (not once per step)."""
    return t if t.device == device else t.to(device)
