"""SAW (Lai et al., ICML 2022): smoothed adaptive weighting of the losses by class.

Official rule (ZJUJeffLai/SAW_SSL `train_fix_cifar10.py`, `imbOptim/classWeights.py::getClassWeights`, recipe
`train_example.sh`: `--effective 0.99 --distbl gt_l --distbu pseudo --normalize 1`):
- effective-number weights of a count vector D: β = (N̄ − 1)/N̄ with N̄ = mean(D) ("auto"), overridden by the
  `--effective` value when it is not 1 ("fixed", 0.99 in the recipe); zero counts → 1; w_c = (1 − β)/(1 − β^{D_c});
  normalised to Σ w = C;
- labeled loss × w^x[y] with D = labeled counts; consistency loss × w^u[ŷ] (ŷ = the pseudo-label's class) with
  D = argmax counts of a per-sample memory of weak-view softmax vectors (the same N_u × C memory DARP keeps, rows
  uniform at start, each written when its sample is drawn); w^u starts at all ones and is recomputed from the memory
  after every epoch (500 steps); the weights of the epoch's end are used through the next one.
Our memory stores the softmax of the weak logits as the SSL base sees them (after any pseudo_logits hook; with no
other component, the raw weak logits, as the official code). USB's port (`imb_algorithms/saw`) always uses the
auto β and takes the counts from an EMA-model pass over the unlabeled set, clamped at ≥ 1 (not reproduced).
"+LA" has no code in SAW or USB: the presets stack `logit_adjust_posthoc` (τ = 1), so one run reports SAW (raw)
and SAW+LA (the debiased fields).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from dytrim.config import RunConfig, config_section, require
from dytrim.debias.registry import COMPONENTS
from dytrim.engine.components import SampleMemory
from dytrim.engine.context import RunContext
from dytrim.engine.hooks import Batch, Component, StepOutput
from dytrim.engine.schedules import Periodic


@config_section("saw")
@dataclass
class SAWConfig:
    """SAW's weights: the β rule and the epoch after which the unlabeled weights are recomputed."""

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"beta_rule": ("fixed", "auto")}

    beta_rule: str = "fixed"  # fixed: beta = saw.beta (released recipe) | auto: (mean count - 1) / mean count
    beta: float = 0.99  # beta of the fixed rule (official --effective 0.99)
    epoch_steps: int = 500  # the unlabeled weights are recomputed after every epoch of this many steps

    def check(self, cfg: Any) -> None:
        if "saw" not in cfg.debias.methods:
            return
        require(0 < self.beta < 1, "saw.beta", f"must be in (0, 1); got {self.beta}")
        require(self.epoch_steps >= 1, "saw.epoch_steps", f"must be >= 1; got {self.epoch_steps}")


def saw_weights(counts: torch.Tensor, beta_rule: str = "fixed", beta: float = 0.99) -> torch.Tensor:
    """[C] effective-number weights of counts [C], normalised to sum C (official `getClassWeights`, effective)."""
    d = counts.double()
    if beta_rule == "auto":
        n_bar = d.sum() / len(d)
        beta = float((n_bar - 1) / n_bar)
    d = torch.where(d == 0, torch.ones_like(d), d)
    w = (1 - beta) / (1 - beta**d)
    return (len(w) * w / w.sum()).float()


@COMPONENTS.register("saw")
class SAW(Component):
    """Labeled losses × w^x[y]; pseudo-labeled losses × w^u[ŷ], w^u from the memory's argmax counts each epoch."""

    name = "saw"

    def __init__(self, cfg: RunConfig, ctx: RunContext) -> None:
        c = cfg.saw
        self.rule, self.beta = c.beta_rule, c.beta
        self.w_x = saw_weights(torch.tensor(ctx.lb_counts), self.rule, self.beta)
        self.w_u = torch.ones(ctx.num_classes)
        self.memory = SampleMemory(ctx.n_ulb, ctx.num_classes, 1.0 / ctx.num_classes)  # official: uniform rows
        self.epochs = Periodic(c.epoch_steps, first=1)  # at the start of epoch 1, 2, ...: the previous epoch's counts

    def unlabeled_counts(self) -> torch.Tensor:
        """[C] argmax counts of the memory (official `prob2Distribution` of `pseudo_orig`)."""
        return torch.bincount(self.memory.table.argmax(dim=-1), minlength=len(self.w_u))

    def before_step(self, step: int) -> None:
        if self.epochs.due(step):
            self.w_u = saw_weights(self.unlabeled_counts(), self.rule, self.beta)

    def weight(self, batch: Batch, step: int) -> None:
        self.w_x = self.w_x.to(batch.w_lb.device)
        batch.w_lb = batch.w_lb * self.w_x[batch.y_lb]

    def weight_unlabeled(self, batch: Batch, targets: torch.Tensor, mask: torch.Tensor, step: int) -> None:
        if batch.w_ulb is not None:
            self.w_u = self.w_u.to(targets.device)
            batch.w_ulb = batch.w_ulb * self.w_u[targets.argmax(dim=-1)]

    def observe(self, batch: Batch, out: StepOutput, step: int) -> None:
        if out.logits_ulb_w is not None and batch.ulb_pos is not None:
            self.memory.write(batch.ulb_pos, F.softmax(out.logits_ulb_w.detach().float(), dim=-1))

    def eval_fields(self) -> dict[str, Any]:
        return {"saw_w_u": [round(float(w), 5) for w in self.w_u]}

    def state_dict(self) -> dict[str, Any]:
        return {"w_u": self.w_u.clone(), "memory": self.memory.state_dict(), "epochs": self.epochs.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.w_u = state["w_u"].clone().float()
        self.memory.load_state_dict(state["memory"])
        self.epochs.load_state_dict(state["epochs"])
