"""DASO's pure parts: the per-class FIFO feature queues, the pseudo-label distribution window, and the formulas
(semantic probabilities, distribution-aware blend, semantic alignment loss). No run state beyond their own.

Each follows the official code (ytaek-oh/daso `lib/models/feature_queue.py`, `lib/utils/dist_logger.py`,
`lib/models/daso_model.py::forward_train`) step for step, in the same order of operations.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


class ClassQueues:
    """Per-class FIFO banks of at most `size` feature rows (oldest first); prototype_c = the mean of bank c.

    A push appends the batch's rows of each class in batch order and drops the oldest beyond `size`; the prototype
    of a class is recomputed only when it received rows, and stays zero until its first (official `FeatureQueue`)."""

    def __init__(self, num_classes: int, size: int, dim: int, device: torch.device | str = "cpu") -> None:
        self.size, self.dim = int(size), int(dim)
        self.banks = [torch.empty(0, dim, device=device) for _ in range(num_classes)]
        self.prototypes = torch.zeros(num_classes, dim, device=device)  # [C, F]

    @torch.no_grad()
    def push(self, feats: torch.Tensor, labels: torch.Tensor) -> None:
        """Append `feats` [B, F] by their `labels` [B]; keep the newest `size` rows per class."""
        feats = feats.detach().float()
        self.prototypes = self.prototypes.to(feats.device)
        for c in range(len(self.banks)):
            rows = torch.where(labels == c)[0]
            if len(rows):
                bank = torch.cat([self.banks[c].to(feats.device), feats[rows]], 0)
                self.banks[c] = bank[max(0, len(bank) - self.size):]
                self.prototypes[c] = self.banks[c].mean(0)

    def counts(self) -> list[int]:
        return [len(b) for b in self.banks]

    def state_dict(self) -> dict[str, Any]:
        """The banks concatenated in class order (each oldest first) with their fill counts, and the prototypes."""
        return {"feats": torch.cat(self.banks, 0).clone(), "count": torch.tensor(self.counts(), dtype=torch.long),
                "prototypes": self.prototypes.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        count = [int(n) for n in state["count"]]
        feats, protos = state["feats"], state["prototypes"]
        if len(count) != len(self.banks) or feats.shape[1:] != (self.dim,) or max(count, default=0) > self.size:
            raise ValueError(f"daso queue of {len(count)} classes x {tuple(feats.shape[1:])} features (fills {count}) "
                             f"does not fit this run's {len(self.banks)} x ({self.dim},), {self.size} per class")
        device = self.prototypes.device
        self.banks = [b.clone().to(device) for b in feats.split(count, 0)]
        self.prototypes = protos.clone().float().to(device)


class LabelWindow:
    """Class counts of the final pseudo-labels: `pending` since the last refresh, `counts` of the last window
    (official `DistributionLogger`: every label of every step is pushed, masked or not; `update_pl_dist` counts the
    list and empties it). `dist()` is counts / sum (official `get_pl_dist`)."""

    def __init__(self, num_classes: int) -> None:
        self.pending = torch.zeros(num_classes, dtype=torch.long)
        self.counts = torch.zeros(num_classes, dtype=torch.long)

    def push(self, labels: torch.Tensor) -> None:
        self.pending = self.pending.to(labels.device) + torch.bincount(labels, minlength=len(self.pending))

    def refresh(self) -> None:
        self.counts, self.pending = self.pending, torch.zeros_like(self.pending)

    def dist(self) -> torch.Tensor:
        counts = self.counts.float()
        return counts / counts.sum()

    def state_dict(self) -> dict[str, Any]:
        return {"pending": self.pending.clone(), "counts": self.counts.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["counts"].shape != self.counts.shape:
            raise ValueError(f"daso label window of {tuple(state['counts'].shape)} classes; this run has "
                             f"{tuple(self.counts.shape)}")
        self.pending, self.counts = state["pending"].clone(), state["counts"].clone()


def semantic_logits(feats: torch.Tensor, prototypes: torch.Tensor, t_proto: float) -> torch.Tensor:
    """cos(f_b, proto_c) / T_proto [B, C] (official `nn.CosineSimilarity(dim=2)` of f[:, None] and proto[None])."""
    return F.cosine_similarity(feats.float().unsqueeze(1), prototypes.unsqueeze(0), dim=2) / t_proto


def dist_weights(pl_dist: torch.Tensor, t_dist: float) -> torch.Tensor:
    """v [C]: pl_dist^(1/T_dist), divided by its sum, then by its max (official `current_pl_dist`)."""
    v = pl_dist ** (1.0 / t_dist)
    v = v / v.sum()
    return v / v.max()


def blend(probs: torch.Tensor, s_w: torch.Tensor, weight: torch.Tensor | float) -> torch.Tensor:
    """p~ = (1 − w) p + w s_w, w [B, 1] = v of each sample's argmax p (or the fixed interp_alpha)."""
    return (1.0 - weight) * probs + weight * s_w


def alignment_loss(s_w: torch.Tensor, sim_strong: torch.Tensor) -> torch.Tensor:
    """−Σ_b Σ_c s_w[b, c] log softmax(sim_strong)[b, c] / B: the semantic alignment loss (official `loss_assign`)."""
    return -torch.sum(s_w * F.log_softmax(sim_strong, dim=1), dim=1).sum() / sim_strong.size(0)
