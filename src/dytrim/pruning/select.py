"""Where DyTrim decides who is pruned: pure functions from stored per-sample scores to kept positions.

Reference behaviour (DyTrim `dytrim.py`, reference-spec §1.2): labeled data is pruned hard and
class-aware, keeping the int((1 - r_c)·N_c) highest-score samples of class c, no rescaling; unlabeled
data is pruned softly as InfoBatch does: samples scoring below the mean are kept at random with rate
r and, when kept, weigh 1/r, so the expected loss equals the full-data loss.
"""

from __future__ import annotations

import torch


def keep_count(n: int, r: float, min_keep: int = 0, rounding: str = "floor") -> int:
    """Labeled images kept of a class with N_c = n at prune ratio r: int((1 - r)·n) (reference, `floor`) or
    round((1 - r)·n) (`round`, halves up), then at least min(min_keep, n)."""
    x = (1.0 - r) * n
    k = int(x) if rounding == "floor" else int(x + 0.5)
    return min(n, max(k, min(min_keep, n)))


def capped_ratio(
    pi: torch.Tensor, prior: torch.Tensor, max_ratio: float = 1.0, max_prior_ratio: float = 0.0
) -> torch.Tensor:
    """The prune ratio r_c from pi_theta(I)_c: clamped to [0, max_ratio] and, if max_prior_ratio > 0, to at most
    max_prior_ratio·prior_c (reference: max_ratio 1, max_prior_ratio 0, i.e. r_c = pi_theta(I)_c)."""
    r = pi.detach().double().cpu().clamp(0.0, max_ratio)
    if max_prior_ratio > 0:
        r = torch.minimum(r, max_prior_ratio * prior.detach().double().cpu())
    return r


def keep_labeled(
    scores: torch.Tensor,
    labels: torch.Tensor,
    prune_ratio: torch.Tensor,
    min_keep: int = 0,
    rounding: str = "floor",
) -> torch.Tensor:
    """Positions kept by class-aware hard pruning: per class c, the `keep_count(N_c, r_c)` highest scores,
    i.e. int((1 - r_c)·N_c) as the reference (which drops a 1-image class entirely for any r_c > 0), or
    rounded, and at least min(min_keep, N_c).

    `scores` [N] latest supervised losses, `labels` [N] class ids, `prune_ratio` [C] r_c in [0, 1].
    Ties are broken by position (stable sort), so the choice is deterministic. Returns sorted positions.
    """
    r = prune_ratio.detach().double().cpu().clamp(0.0, 1.0)
    scores, labels = scores.detach().cpu(), labels.detach().cpu()
    kept = []
    for c in range(len(r)):
        pos = torch.nonzero(labels == c).flatten()
        n_keep = keep_count(len(pos), float(r[c]), min_keep, rounding)
        if n_keep > 0:
            order = torch.sort(scores[pos], descending=True, stable=True).indices
            kept.append(pos[order[:n_keep]])
    return torch.sort(torch.cat(kept)).values if kept else torch.empty(0, dtype=torch.long)


def soft_prune(
    scores: torch.Tensor,
    confidence: torch.Tensor,
    keep_rate: float,
    tau: float,
    generator: torch.Generator,
    rescale: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kept positions and per-sample weights of confidence-gated soft pruning.

    Candidates are samples with score < mean(scores) and confidence >= tau; int(keep_rate·|candidates|)
    of them are kept uniformly at random (without replacement) and weigh 1/keep_rate if `rescale`;
    everything else is kept with weight 1. Returns (sorted kept positions [K], weights [N] over all).
    """
    scores, confidence = scores.detach().cpu().double(), confidence.detach().cpu().double()
    candidate = (scores < scores.mean()) & (confidence >= tau)
    cand = torch.nonzero(candidate).flatten()
    chosen = cand[torch.randperm(len(cand), generator=generator)[: int(keep_rate * len(cand))]]
    weights = torch.ones(len(scores), dtype=torch.float32)
    if rescale:
        weights[chosen] = 1.0 / keep_rate
    kept = torch.cat([torch.nonzero(~candidate).flatten(), chosen])
    return torch.sort(kept).values, weights
