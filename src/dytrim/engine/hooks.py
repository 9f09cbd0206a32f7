"""Component hooks: the named points at which debiasers act on the one training loop.

The loop calls every component at each point in a fixed order; the base class does nothing, so a
component overrides only the points it needs and several stack (e.g. CDMAD + logit adjustment).
The points mirror the per-step dynamics view Δlog π = -η·T·K·G: samplers and weights act on which
samples enter (and how strongly), logit hooks act on the direction of G, eval hooks on prediction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn


@dataclass
class Batch:
    """One step's inputs. Positions index the labeled/unlabeled pools; weights multiply per-sample losses."""

    lb_pos: torch.Tensor  # [B] positions in the labeled pool
    x_lb: torch.Tensor  # [B, C, H, W] normalised weak view
    y_lb: torch.Tensor  # [B]
    w_lb: torch.Tensor  # [B] per-sample loss weights (1 by default)
    ulb_pos: torch.Tensor | None = None  # [Bu] positions in the unlabeled pool
    x_ulb_w: torch.Tensor | None = None  # [Bu, C, H, W] weak view
    x_ulb_s: list[torch.Tensor] = field(default_factory=list)  # n_strong x [Bu, C, H, W]
    w_ulb: torch.Tensor | None = None  # [Bu]
    t_lb: torch.Tensor | None = None  # [B, C] soft labeled targets (mixup) instead of one_hot(y_lb); None: one-hot
    x_lb_s: torch.Tensor | None = None  # [B, C, H, W] a strong view of the labeled images (a base that asks for it)


@dataclass
class StepOutput:
    """What one step computed, handed to `observe` (per-sample losses for scores, targets, mask)."""

    loss_lb: torch.Tensor  # [B] unweighted per-sample supervised loss
    loss_ulb: torch.Tensor | None  # [n_strong, Bu] unweighted, masked per-sample consistency loss
    targets: torch.Tensor | None  # [Bu, C]
    mask: torch.Tensor | None  # [Bu]
    logits_ulb_w: torch.Tensor | None  # [Bu, C] weak-view logits after pseudo_logits hooks
    logits_ulb_w_raw: torch.Tensor | None = None  # [Bu, C] the same before any pseudo_logits hook


@dataclass
class Views:
    """Logits and penultimate features of every view of a step, with their graphs (features only when some
    component sets `uses_features`; else empty lists). Handed to `loss_terms`."""

    logits_lb: torch.Tensor  # [B, C]
    logits_ulb_w: torch.Tensor | None = None  # [Bu, C] weak view, no graph
    logits_ulb_s: list[torch.Tensor] = field(default_factory=list)  # n_strong x [Bu, C]
    feats_lb: torch.Tensor | None = None  # [B, F]
    feats_ulb_w: torch.Tensor | None = None  # [Bu, F], no graph
    feats_ulb_s: list[torch.Tensor] = field(default_factory=list)  # n_strong x [Bu, F]


class Component:
    """A debiasing/pruning component. Every hook is a no-op by default.

    Built by its registered factory as `factory(cfg, ctx)`: the run's config (a component reads its own section)
    and the `RunContext` (engine/context.py), which is all it sees of the run.
    Order within a step: [the loop's probe z(I), if `uses_probe`] -> before_step -> (samplers) -> transform_labeled
    -> weight ->
    (forward) -> pseudo_logits -> (the SSL base's targets and mask) -> pseudo_targets -> weight_unlabeled ->
    train_logits -> (losses) -> loss_terms -> (backward, optimiser, EMA) -> observe -> clock_rate. At evaluation:
    the raw logits come from the model's head, from the head named by `eval_head` or from the module `eval_module`
    gives (a head the component owns, CoSSL); then eval_logits, chained
    over the components in config order, then eval_fields.
    Owned parts (engine/components.py): `heads()` join the model (optimiser, EMA, DDP, checkpoints); per-sample
    memory, schedules and random generators live in the component and travel in its state_dict.
    """

    name = "component"
    uses_probe = False  # True: the loop computes ctx.z_I (train-mode z(I), no gradient) at the start of each step
    starts: tuple[str, str, str] | None = None  # (what, key of its start step, key of its end step or ""): a part
    #   of the component that switches on at a schedule point; the run warns at start-up when it never does
    uses_features = False  # True: the step's forward also returns penultimate features of every view (Views)
    eval_head: str | None = None  # evaluation predicts from this auxiliary head (a name of `heads()`), not `head`

    def heads(self) -> dict[str, nn.Module]:
        """Auxiliary heads on the penultimate features, by name; the loop attaches them to the model (so they are
        in the optimiser, the EMA teacher, DDP averaging and checkpoints). Called once, before training."""
        return {}

    def stages(self) -> list[Any]:
        """Stages this component runs after the main one (engine/stages.py `Stage`, e.g. cRT); its hooks then run
        only in them, and the main stage runs without it. Called once, before training."""
        return []

    def stage_labeled(self, k: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """At the start of this component's stage k (also on a resume inside it): (unlabeled positions, labels)
        that join the original labeled pool for the stage (CReST's picks), or None to keep the pool."""
        return None

    def labeled_sampler(self, labels: torch.Tensor, batch_size: int, seed: int) -> Any | None:
        """Replace the labeled sampler (re-sampling); None keeps the default epoch sampler."""
        return None

    def unlabeled_sampler(self, n: int, batch_size: int, seed: int) -> Any | None:
        """Replace the unlabeled sampler (pruning); None keeps the default epoch sampler."""
        return None

    def clock_rate(self) -> float:
        """Steps of the schedule clock one update stands for (> 1 when pruning shrinks the epochs)."""
        return 1.0

    def before_step(self, step: int) -> None:
        """Start of a step, before any forward pass (CDMAD takes the baseline-image logits here)."""

    def pseudo_logits(self, logits_w: torch.Tensor, step: int) -> torch.Tensor:
        """Adjust weak-view logits before pseudo-labels are formed (CDMAD)."""
        return logits_w

    def train_logits(self, logits: torch.Tensor, labeled: bool, step: int) -> torch.Tensor:
        """Adjust logits that enter a training loss (logit-adjusted loss)."""
        return logits

    def transform_labeled(self, batch: Batch, step: int) -> None:
        """Replace the labeled inputs batch.x_lb and give soft targets batch.t_lb, before anything else of the step
        function (cRT's input mixup)."""

    def weight(self, batch: Batch, step: int) -> None:
        """Scale batch.w_lb / batch.w_ulb in place (re-weighting, soft pruning)."""

    def pseudo_targets(
        self, targets: torch.Tensor, mask: torch.Tensor, logits_w: torch.Tensor, ulb_pos: torch.Tensor, step: int,
        feats_w: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Replace the SSL base's targets [Bu, C] and mask [Bu] together (DARP, Adsh, ACR, DASO), given the weak
        logits after the pseudo_logits hooks, the unlabeled positions and, when some component sets
        `uses_features`, the weak view's penultimate features [Bu, F] (all of the global batch); None keeps them."""
        return None

    def weight_unlabeled(self, batch: Batch, targets: torch.Tensor, mask: torch.Tensor, step: int) -> None:
        """Scale batch.w_ulb in place once pseudo-labels exist (re-weighting by predicted class)."""

    def loss_terms(self, views: Views, batch: Batch, targets: torch.Tensor | None, mask: torch.Tensor | None,
                   step: int) -> dict[str, torch.Tensor]:
        """Extra scalar loss terms by name (added to the loss, logged as loss_<name> in metrics.jsonl)."""
        return {}

    def observe(self, batch: Batch, out: StepOutput, step: int) -> None:
        """See the step's per-sample results after the update (scores, statistics)."""

    def eval_module(self, model: nn.Module) -> nn.Module | None:
        """The module evaluation predicts with, built on `model` (the EMA model), when the prediction needs parts
        the component owns outside the model (CoSSL's teacher head with its own EMA); None: the model, or the head
        named by `eval_head`. At most one component of a stage gives one."""
        return None

    def eval_logits(self, logits: torch.Tensor) -> torch.Tensor | None:
        """Debiased test logits of the EMA model, or None if this component does not change predictions."""
        return None

    def eval_fields(self) -> dict[str, Any]:
        """Extra fields for each evaluation row of metrics.jsonl (e.g. DyTrim's `pruning`)."""
        return {}

    def on_finish(self, out_dir: Path, rows: list[dict[str, Any]]) -> None:
        """End of training, with the run directory and all metric rows (e.g. to draw a plot)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state
