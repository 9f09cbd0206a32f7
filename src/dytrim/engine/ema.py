"""EMA teacher used for evaluation, with the reference code's decoupled decay quirk."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMATeacher:
    """ema <- decay * ema + (1 - decay) * model after each step.

    `buffers="ema"` averages every floating tensor of the state dict, BN running statistics included,
    as the reference `WeightEMA` does; "copy" copies buffers instead (USB). `update(model, wd)` with
    wd > 0 (the loop passes optim.ema_wd * lr) reproduces the reference's "weight decay": after the
    EMA update, every floating tensor of the STUDENT's state dict (BN buffers too) is multiplied by
    (1 - wd).

    Integer buffers (BN's `num_batches_tracked`) are copied from the student. The reference's EMA keeps 0
    there, on purpose not reproduced: its update works on a float copy of that tensor. BN reads the count
    only when its momentum is None (a cumulative average); ours is fixed, so no result depends on it.
    """

    def __init__(self, model: nn.Module, decay: float, buffers: str = "ema") -> None:
        self.model = copy.deepcopy(model)
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.buffers = buffers
        self._param_names = {name for name, _ in model.named_parameters()}
        self._plan(model)

    def _plan(self, model: nn.Module) -> None:
        """Pair the EMA tensors with the student's once: averaged, copied (integer buffers, or every buffer with
        buffers="copy") and decayed (the student's floating tensors); updates then run as a few foreach kernels
        instead of one small kernel per tensor. Same arithmetic per element as the per-tensor loop. The
        state_dict tensors share storage with the modules' (updated in place by the optimiser and
        load_state_dict), so the pairing stays valid for the life of both models."""
        self._student = model
        student, mine = model.state_dict(), self.model.state_dict()
        self._avg_ema, self._avg_src, self._copy_ema, self._copy_src = [], [], [], []
        for name, ema_t in mine.items():
            src = student[name]
            if not ema_t.is_floating_point() or (self.buffers == "copy" and name not in self._param_names):
                self._copy_ema.append(ema_t)
                self._copy_src.append(src)
            else:
                self._avg_ema.append(ema_t)
                self._avg_src.append(src)
        self._student_float = [t for t in student.values() if t.is_floating_point()]

    @torch.no_grad()
    def update(self, model: nn.Module, decoupled_wd: float = 0.0) -> None:
        """One EMA step from `model` (normally the student this teacher was made from)."""
        if model is not self._student:
            self._plan(model)
        if self._copy_ema:
            torch._foreach_copy_(self._copy_ema, self._copy_src)
        if self._avg_ema:
            torch._foreach_mul_(self._avg_ema, self.decay)
            torch._foreach_add_(self._avg_ema, self._avg_src, alpha=1.0 - self.decay)
        if decoupled_wd > 0 and self._student_float:
            torch._foreach_mul_(self._student_float, 1.0 - decoupled_wd)

    @torch.no_grad()
    def copy_from(self, model: nn.Module) -> None:
        """The EMA model becomes a copy of `model` (every tensor of its state dict): a stage whose EMA is the
        student."""
        for name, t in self.model.state_dict().items():
            t.copy_(model.state_dict()[name])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)
