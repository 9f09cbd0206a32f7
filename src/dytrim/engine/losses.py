"""The per-sample losses of a step: soft cross-entropy against target distributions (one-hot or soft)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
