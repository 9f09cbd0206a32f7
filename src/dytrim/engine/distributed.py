"""Data parallelism over torch.distributed (launched by torchrun), and the identity when alone.

Every rank draws the same global batch from identically seeded samplers and trains on its slice;
gradients and BatchNorm buffers are averaged after each backward, so the ranks stay identical. State
that depends on the whole batch (pseudo-labels and thresholds, DyTrim's scores) is computed from
gathered tensors, so every rank holds the same copy. With one process every method is a no-op.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from dytrim.engine.hooks import Batch, StepOutput


def fingerprint(obj: Any) -> str:
    """SHA-1 of nested tensors / dicts / lists / plain values: equal on every rank when the ranks agree."""
    import hashlib

    h = hashlib.sha1()

    def feed(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            h.update(x.detach().cpu().contiguous().numpy().tobytes())
        elif isinstance(x, dict):
            for k in sorted(x):
                h.update(str(k).encode())
                feed(x[k])
        elif isinstance(x, list | tuple):
            for v in x:
                feed(v)
        else:
            h.update(repr(x).encode())

    feed(obj)
    return h.hexdigest()


def global_view(dist: Dist, batch: Batch, out: StepOutput, ulb_pos_g: torch.Tensor | None) -> tuple[Batch, StepOutput]:
    """This rank's per-sample batch fields and losses gathered into the global batch, for the `observe` hooks
    (unlabeled positions, targets, mask and weak logits are global already)."""
    g = dist.gather
    glob = Batch(lb_pos=g(batch.lb_pos), x_lb=batch.x_lb, y_lb=g(batch.y_lb), w_lb=g(batch.w_lb))
    loss_ulb = None
    if ulb_pos_g is not None and out.loss_ulb is not None and batch.w_ulb is not None:
        glob.ulb_pos, glob.w_ulb = ulb_pos_g, g(batch.w_ulb)
        loss_ulb = g(out.loss_ulb.T.contiguous()).T  # [n_strong, global Bu]
    return glob, StepOutput(g(out.loss_lb), loss_ulb, out.targets, out.mask, out.logits_ulb_w, out.logits_ulb_w_raw)


class Dist:
    """Rank, world size, this rank's device and the few collectives the loop needs."""

    def __init__(self, rank: int = 0, world: int = 1, device: torch.device | None = None) -> None:
        self.rank, self.world = rank, world
        self.device = device or torch.device("cpu")  # where collective tensors live (nccl serves CUDA only)

    @classmethod
    def from_env(cls, device: torch.device) -> Dist:
        """Join the process group torchrun describes (RANK / WORLD_SIZE); one process otherwise.

        On CUDA each rank takes the GPU LOCAL_RANK (set before the group exists, so nccl and the object
        collectives use it rather than cuda:0)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls(device=device)
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            if device.type == "cuda":
                dist.init_process_group(backend="nccl", device_id=device)
            else:
                dist.init_process_group(backend="gloo")
        return cls(dist.get_rank(), dist.get_world_size(), device)

    def close(self) -> None:
        """Leave the process group (torchrun's processes then exit without nccl's warning)."""
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()

    @property
    def main(self) -> bool:
        """Only the main rank writes files and shows progress."""
        return self.rank == 0

    def shard(self, t: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of a global batch (the batch size divides by the world size)."""
        if self.world == 1:
            return t
        n = len(t) // self.world
        return t[self.rank * n : (self.rank + 1) * n]

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate equal-sized per-rank tensors in rank order (the global batch back)."""
        if self.world == 1:
            return t
        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts)

    def mean_losses(self, stats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`stats` with every loss* entry replaced by its mean over ranks (float64); unchanged on one process."""
        if self.world == 1:
            return stats
        keys = [k for k in stats if k.startswith("loss")]
        vals = self.gather(torch.stack([stats[k].double() for k in keys])[None]).mean(0)
        return stats | dict(zip(keys, vals, strict=True))

    def gather_object(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def _mean_in_place(self, tensors: list[torch.Tensor]) -> None:
        """Replace each tensor by its mean over ranks, with one flat all-reduce for all of them."""
        if self.world == 1 or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()

    def average_gradients(self, model: nn.Module) -> None:
        """Mean of the gradients over ranks: the gradient of the global-batch loss."""
        self._mean_in_place([p.grad for p in model.parameters() if p.grad is not None])

    def average_buffers(self, model: nn.Module) -> None:
        """Mean of the floating-point buffers (BN running statistics) over ranks, so all ranks agree."""
        self._mean_in_place([b for b in model.buffers() if b.is_floating_point()])

    def broadcast_module(self, model: nn.Module) -> None:
        """Start every rank from the main rank's weights and buffers."""
        if self.world == 1:
            return
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src=0)

    def any(self, flag: bool) -> bool:
        """True if `flag` is true on any rank (e.g. a non-finite loss stops every rank together)."""
        if self.world == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t)
        return bool(t.item() > 0)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()
