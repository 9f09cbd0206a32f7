"""The loss watch: a non-finite loss is recorded on the device at every step (no host sync) and acted on before the
next evaluation or checkpoint, so the run stops with its last good checkpoint."""

from __future__ import annotations

import torch


class TrainingDiverged(RuntimeError):
    """A non-finite loss: the run stops and keeps its last good checkpoint."""


class LossWatch:
    """The first step with a non-finite loss and that loss, kept as device tensors."""

    def __init__(self, device: torch.device) -> None:
        self.first = torch.tensor(-1, device=device)  # first step with a non-finite loss (-1: none)
        self.value = torch.tensor(0.0, dtype=torch.float64, device=device)  # its value

    def record(self, loss: torch.Tensor, step: int) -> None:
        bad = ~torch.isfinite(loss.detach())
        self.first = torch.where(bad & (self.first < 0), step, self.first)
        self.value = torch.where(bad & torch.isfinite(self.value), loss.detach().double(), self.value)

    def check(self, dist) -> None:
        """Stop (every rank) if any step since the start had a non-finite loss; one host read per check."""
        first = int(self.first)
        if dist.any(first >= 0):
            raise TrainingDiverged(
                f"non-finite loss ({float(self.value)}) at step {first}; the run stopped and keeps its last good "
                "checkpoint. Lower optim.lr or check the data."
            )
