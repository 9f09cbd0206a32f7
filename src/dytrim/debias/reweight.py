"""Class-balanced re-weighting of per-sample losses (Cui et al. 2019; DASO's cost-sensitive CE)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from dytrim.config import RunConfig, config_section, require
from dytrim.debias.registry import COMPONENTS
from dytrim.engine.context import RunContext
from dytrim.engine.hooks import Batch, Component


def class_weights(counts: list[int], kind: str = "inverse", beta: float = 0.999) -> torch.Tensor:
    """Per-class weights normalised to sum C: 1/n_c ("inverse") or (1-β)/(1-β^n_c) ("effective")."""
    n = torch.tensor(counts, dtype=torch.float64).clamp_min(1)
    w = 1.0 / n if kind == "inverse" else (1.0 - beta) / (1.0 - beta**n)
    return (w * len(counts) / w.sum()).float()


@config_section("reweight")
@dataclass
class ReweightConfig:
    """Class-balanced loss weights."""

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"kind": ("inverse", "effective")}

    kind: str = "inverse"  # inverse: 1/n_c | effective: (1 - beta) / (1 - beta^n_c)
    beta: float = 0.999  # beta of the effective-number weights (kind=effective)
    unlabeled: bool = False  # also weight pseudo-labeled samples by their predicted class

    def check(self, cfg: Any) -> None:
        require(0 < self.beta < 1, "reweight.beta", f"must be in (0, 1); got {self.beta}")


@COMPONENTS.register("reweight")
class ReWeight(Component):
    """Multiplies labeled losses by w[y]; with reweight.unlabeled, pseudo-labeled losses by
    w[predicted class]."""

    name = "reweight"

    def __init__(self, cfg: RunConfig, ctx: RunContext) -> None:
        self.w = class_weights(ctx.lb_counts, cfg.reweight.kind, cfg.reweight.beta)
        self.unlabeled = cfg.reweight.unlabeled

    def _w_on(self, device: torch.device) -> torch.Tensor:
        """The class weights on `device`, copied there at the first use only (not once per step)."""
        if self.w.device != device:
            self.w = self.w.to(device)
        return self.w

    def weight(self, batch: Batch, step: int) -> None:
        batch.w_lb = batch.w_lb * self._w_on(batch.w_lb.device)[batch.y_lb]

    def weight_unlabeled(self, batch: Batch, targets: torch.Tensor, mask: torch.Tensor, step: int) -> None:
        if self.unlabeled and batch.w_ulb is not None:
            batch.w_ulb = batch.w_ulb * self._w_on(targets.device)[targets.argmax(dim=-1)]
