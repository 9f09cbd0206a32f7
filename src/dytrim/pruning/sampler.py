"""A sampler over a kept list that changes: batches walk a shuffled copy of the list, and when fewer
than a batch remain the list is chosen anew (the reference re-prunes exactly then: StopIteration)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class PrunedSampler:
    """Batches of positions from `select()`'s current kept list, reshuffled each pass, own RNG.

    `select` returns the kept positions for the next pass (it may also update weights). `renew()`
    forces a new selection at the next draw (per-epoch cadence). A kept list smaller than a batch is
    repeated, as the default sampler does for tiny pools.
    """

    def __init__(self, select: Callable[[], torch.Tensor], batch_size: int, seed: int) -> None:
        self.select = select
        self.batch_size = batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.kept = torch.empty(0, dtype=torch.long)
        self.order = torch.empty(0, dtype=torch.long)
        self.pos = 0
        self.passes = 0

    def renew(self) -> None:
        self.pos = len(self.order)

    def _new_pass(self) -> None:
        self.kept = self.select().cpu()
        if len(self.kept) == 0:
            raise RuntimeError("pruning kept no samples; lower the prune ratios")
        reps = -(-self.batch_size // len(self.kept))
        self.order = torch.cat([self.kept[torch.randperm(len(self.kept), generator=self.gen)] for _ in range(reps)])
        self.pos = 0
        self.passes += 1

    def next(self) -> torch.Tensor:
        if self.pos + self.batch_size > len(self.order):
            self._new_pass()
        out = self.order[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state(), "kept": self.kept.clone(), "order": self.order.clone(),
                "pos": self.pos, "passes": self.passes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gen.set_state(state["gen"])
        self.kept, self.order = state["kept"].clone(), state["order"].clone()
        self.pos, self.passes = int(state["pos"]), int(state["passes"])
