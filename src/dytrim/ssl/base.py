"""The SSL algorithm interface: pseudo-label targets and masks from weak-view logits, plus state."""

from __future__ import annotations

from typing import Any

import torch

from dytrim.config import SSLConfig, register_choices
from dytrim.registry import Registry


class SSLAlgorithm:
    """Base: supervised-only. Subclasses produce targets and masks for the unlabeled batch."""

    uses_unlabeled = False
    mixes = False  # True: the base forms the step's losses from its own mixed forwards (ReMixMatch; engine/step.py)
    lb_strong = False  # True: the batch carries a strong view of the labeled images (Batch.x_lb_s)

    def __init__(self, cfg: SSLConfig, num_classes: int, num_ulb: int) -> None:
        self.cfg = cfg
        self.num_classes = num_classes
        self.num_ulb = num_ulb

    def pseudo_targets(
        self, logits_w: torch.Tensor, ulb_pos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(targets [N, C] distributions, mask [N] in [0, 1]) from weak-view logits of unlabeled
        positions `ulb_pos` (indices into the unlabeled pool, for algorithms with per-sample state)."""
        raise NotImplementedError(f"{type(self).__name__} does not use unlabeled data")

    def bind(self, cfg: Any, ctx: Any, components: list[Any]) -> None:
        """Once, before training: the run's config, context (engine/context.py) and components, for a base that
        needs more than its ssl section (ReMixMatch: class counts, a head, its own section); refuses what cannot
        stack with it (ConfigError)."""

    def heads(self) -> dict[str, Any]:
        """Heads of the base on the penultimate features (ReMixMatch's rotation head), attached to the model as the
        components' are (engine/components.py); called after `bind`."""
        return {}

    def extra_loss(self, logits_s: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
        """An additional scalar loss term (FreeMatch's fairness loss); None for most algorithms."""
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state


ALGORITHMS: Registry[SSLAlgorithm] = Registry("SSL algorithm")
register_choices("ssl.name", ALGORITHMS.names)  # the config accepts exactly the registered names


def create_ssl(cfg: SSLConfig, num_classes: int, num_ulb: int) -> SSLAlgorithm:
    """Build the configured algorithm (`ssl.name`)."""
    return ALGORITHMS.create(cfg.name, cfg, num_classes, num_ulb)
