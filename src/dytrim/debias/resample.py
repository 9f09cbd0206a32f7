"""Class-aware re-sampling of labeled batches: draws with replacement, class c with total mass ∝ n_c·w_c."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from dytrim.config import RunConfig, config_section, require
from dytrim.debias.registry import COMPONENTS
from dytrim.debias.reweight import class_weights
from dytrim.engine.context import RunContext
from dytrim.engine.hooks import Component
from dytrim.engine.rng import set_generator_state


class ClassAwareSampler:
    """Positions drawn i.i.d. with replacement, each sample weighted by its class weight (DASO's
    ClassAwareSampler): with inverse weights every class is equally likely per draw."""

    def __init__(self, labels: torch.Tensor, class_w: torch.Tensor, batch_size: int, seed: int) -> None:
        self.p = class_w.double()[labels.cpu()]
        self.batch_size = batch_size
        self.gen = torch.Generator().manual_seed(seed)

    def next(self) -> torch.Tensor:
        return torch.multinomial(self.p, self.batch_size, replacement=True, generator=self.gen)

    def state_dict(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_generator_state(self.gen, state["gen"])


@config_section("resample")
@dataclass
class ResampleConfig:
    """Class-aware labeled sampling weights (the same kinds as reweight)."""

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"kind": ("inverse", "effective")}

    kind: str = "inverse"  # inverse: every class equally likely per draw | effective: effective-number weights
    beta: float = 0.999  # beta of the effective-number weights (kind=effective)

    def check(self, cfg: Any) -> None:
        require(0 < self.beta < 1, "resample.beta", f"must be in (0, 1); got {self.beta}")


@COMPONENTS.register("resample")
class ReSample(Component):
    """Replaces the labeled sampler by a class-aware one."""

    name = "resample"

    def __init__(self, cfg: RunConfig, ctx: RunContext) -> None:
        self.w = class_weights(ctx.lb_counts, cfg.resample.kind, cfg.resample.beta)

    def labeled_sampler(self, labels: torch.Tensor, batch_size: int, seed: int) -> ClassAwareSampler:
        return ClassAwareSampler(labels, self.w, batch_size, seed)
