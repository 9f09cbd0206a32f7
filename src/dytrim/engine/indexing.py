"""Writes through an index that may repeat (a pool smaller than a batch is repeated), made deterministic."""

from __future__ import annotations

import torch


def put_last(dst: torch.Tensor, idx: torch.Tensor, src: torch.Tensor) -> None:
    """dst[idx] = src where a repeated index keeps the value of its LAST occurrence, on every device.

    A plain `dst[idx] = src` with repeats is last-wins on the CPU but unordered on CUDA, which would break
    exact resume and cross-run identity there; this picks the last occurrence explicitly (CPU results
    are unchanged)."""
    order = torch.arange(len(idx), device=idx.device)
    last = torch.full((dst.shape[0],), -1, dtype=torch.long, device=idx.device)
    last.scatter_reduce_(0, idx, order, reduce="amax")
    keep = last[idx] == order
    dst[idx[keep]] = src[keep]
