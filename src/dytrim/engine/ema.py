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
    """

    def __init__(self, model: nn.Module, decay: float, buffers: str = "ema") -> None:
        self.model = copy.deepcopy(model)
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.buffers = buffers
        self._param_names = {name for name, _ in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: nn.Module, decoupled_wd: float = 0.0) -> None:
        student = model.state_dict()
        for name, ema_t in self.model.state_dict().items():
            src = student[name]
            if not ema_t.is_floating_point():
                ema_t.copy_(src)  # e.g. BN num_batches_tracked
            elif self.buffers == "copy" and name not in self._param_names:
                ema_t.copy_(src)
            else:
                ema_t.mul_(self.decay).add_(src, alpha=1.0 - self.decay)
        if decoupled_wd > 0:
            for t in student.values():
                if t.is_floating_point():
                    t.mul_(1.0 - decoupled_wd)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)
