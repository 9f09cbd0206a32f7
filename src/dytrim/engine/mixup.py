"""Input mixup and the batch shapes around it, shared by the methods that mix (cRT's labeled mixup, ReMixMatch):
a mixed batch, MixMatch's interleaving of the chunks a mixed batch is forwarded in, and rotated views.

- `mix`: (λx + (1 − λ)x[perm], λy + (1 − λ)y[perm]);
- `interleave`: the chunks of a mixed batch (chunk 0 labeled-sized, the others unlabeled) with slice p of chunk 0
  and slice p of chunk p swapped for p >= 1 (slices: the batch cut in len(chunks) near-equal parts, the larger ones
  last), so every chunk's BN batch holds a share of each; applied twice it is the identity (logits come back);
- `rotate`: each image turned by k_i quarter turns (counter-clockwise in the image plane, torch.rot90 over H, W).
"""

from __future__ import annotations

import torch


def mix(x: torch.Tensor, y: torch.Tensor, lam: float, perm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(λx + (1 − λ)x[perm], λy + (1 − λ)y[perm]): input mixup of a batch with a permutation of itself."""
    return lam * x + (1 - lam) * x[perm], lam * y + (1 - lam) * y[perm]


def interleave_bounds(batch: int, parts: int) -> list[int]:
    """Offsets cutting `batch` rows into `parts` slices of batch // parts rows, the remainder added to the last ones."""
    sizes = [batch // parts] * parts
    for i in range(batch - sum(sizes)):
        sizes[-i - 1] += 1
    bounds = [0]
    for s in sizes:
        bounds.append(bounds[-1] + s)
    return bounds


def interleave(chunks: list[torch.Tensor], batch: int) -> list[torch.Tensor]:
    """Swap slice p of chunk 0 with slice p of chunk p (p >= 1); every chunk has `batch` rows."""
    if len(chunks) < 2:
        return list(chunks)
    b = interleave_bounds(batch, len(chunks))
    pieces = [[c[b[p]:b[p + 1]] for p in range(len(chunks))] for c in chunks]
    for p in range(1, len(chunks)):
        pieces[0][p], pieces[p][p] = pieces[p][p], pieces[0][p]
    return [torch.cat(row) for row in pieces]


def rotate(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] images each turned by k[i] in {0, 1, 2, 3} quarter turns (square images)."""
    out = x.clone()
    for turns in range(1, 4):
        sel = (k == turns).nonzero().flatten().to(x.device)
        if len(sel):
            out[sel] = torch.rot90(x[sel], turns, dims=(2, 3))
    return out
