"""A sampler over a kept list that changes: batches walk a shuffled copy of the list, and when fewer
than a batch remain the list is chosen anew (the reference re-prunes exactly then: StopIteration)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from dytrim.engine.sampler import EpochSampler


class PrunedSampler(EpochSampler):
    """The epoch sampler, except that each pass permutes `select()`'s current kept positions.

    `select` returns the kept positions for the next pass (it may also update weights). `renew()`
    forces a new selection at the next draw (per-epoch cadence). A kept list smaller than a batch is
    repeated, as the default sampler does for tiny pools.
    """

    def __init__(self, select: Callable[[], torch.Tensor], batch_size: int, seed: int) -> None:
        super().__init__(1, batch_size, seed)
        self.select = select
        self.kept = torch.empty(0, dtype=torch.long)

    @property
    def passes(self) -> int:
        return self.epoch

    def renew(self) -> None:
        self.pos = len(self.perm)

    def _pool(self) -> torch.Tensor:
        self.kept = self.select().cpu()
        if len(self.kept) == 0:
            raise RuntimeError("pruning kept no samples; lower the prune ratios")
        return self.kept

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"kept": self.kept.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.kept = state["kept"].clone()
