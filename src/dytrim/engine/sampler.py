"""Index samplers that own their RNG: seeded, checkpointable, no global RNG."""

from __future__ import annotations

from typing import Any

import torch

from dytrim.engine.rng import set_generator_state


class EpochSampler:
    """Batches of positions 0..n-1 from successive random permutations, dropping the incomplete
    last batch of each pass (the reference DataLoaders use shuffle=True, drop_last=True).

    A new permutation starts when fewer than `batch_size` positions remain. Every draw comes from
    a private generator seeded from `seed`, and `state_dict` records it plus the current position,
    so a resumed run draws exactly the same batches.
    """

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        if n < 1:
            raise ValueError("cannot sample from an empty pool")
        self.n = n
        self.batch_size = batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.perm = torch.empty(0, dtype=torch.long)
        self.pos = 0
        self.epoch = 0

    def _pool(self) -> torch.Tensor:
        """Positions the next pass permutes: all of them (a pruning sampler returns its kept list)."""
        return torch.arange(self.n)

    def _new_pass(self) -> None:
        pool = self._pool()
        reps = -(-self.batch_size // len(pool))  # a pool smaller than the batch is repeated (tiny splits)
        self.perm = torch.cat([pool[torch.randperm(len(pool), generator=self.gen)] for _ in range(reps)])
        self.pos = 0
        self.epoch += 1

    def next(self) -> torch.Tensor:
        if self.pos + self.batch_size > len(self.perm):
            self._new_pass()
        out = self.perm[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state(), "perm": self.perm.clone(), "pos": self.pos, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_generator_state(self.gen, state["gen"])
        self.perm = state["perm"].clone()
        self.pos = int(state["pos"])
        self.epoch = int(state["epoch"])
