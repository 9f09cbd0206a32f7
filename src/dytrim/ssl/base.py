"""The SSL algorithm interface: pseudo-label targets and masks from weak-view logits, plus state."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from dytrim.config import SSLConfig
from dytrim.registry import Registry


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Per-sample -sum_c t_c log(softmax(z)_c + eps); [N, C] logits and target distributions -> [N].

    eps = 0 (default) is the exact -sum_c t_c log_softmax(z)_c; with one-hot targets the ordinary
    cross-entropy. eps = 1e-8 is the reference code's loss (`ssl.ce_eps`). The two are not equivalent
    where a target-weighted probability is small: with a_c = t_c p_c / (p_c + eps) the gradient w.r.t.
    the logits is p_j·sum_c a_c − a_j instead of p_j − t_j, so for a one-hot target whose probability is
    p it is p / (p + eps) times the exact one (0.91 at p = 1e-7, 0.50 at p = 1e-8, vanishing below), and
    the loss saturates at -log(eps) (18.42 for 1e-8) where the exact loss keeps growing.
    """
    if eps == 0:
        return -(targets * F.log_softmax(logits, dim=-1)).sum(dim=-1)
    if not eps > 0:
        raise ValueError(f"soft_cross_entropy: eps must be >= 0; got {eps}")
    return -(targets * torch.log(F.softmax(logits, dim=-1) + eps)).sum(dim=-1)


class SSLAlgorithm:
    """Base: supervised-only. Subclasses produce targets and masks for the unlabeled batch."""

    uses_unlabeled = False

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

    def extra_loss(self, logits_s: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
        """An additional scalar loss term (FreeMatch's fairness loss); None for most algorithms."""
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state


ALGORITHMS: Registry[SSLAlgorithm] = Registry("SSL algorithm")


def create_ssl(cfg: SSLConfig, num_classes: int, num_ulb: int) -> SSLAlgorithm:
    """Build the configured algorithm (`ssl.name`)."""
    return ALGORITHMS.create(cfg.name, cfg, num_classes, num_ulb)
