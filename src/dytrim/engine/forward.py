"""The training forward of a run: logits (and, when a component asks, the penultimate features) of each view.

One forward per input (the reference: each view its own BN batch) or one concatenated pass (train.forward=joint, as
USB), in the run's precision; logits and features leave in fp32 for the losses and hooks. With features, the model
runs as `head(forward_features(x))`, the same operations as `model(x)` (models/base.py), eagerly: a compiled
forward (train.compile) covers the logits-only path.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dytrim.engine.accel import autocast
from dytrim.engine.probe import frozen_bn_stats


class TrainForward:
    """`forward(xs, grad)` -> logits per input; `forward(xs, grad, True)` -> (logits, features) per input.
    `grad[i]` False: no graph for input i."""

    def __init__(self, model: nn.Module, forward_fn: Any, precision: str, device: torch.device, channels_last: bool,
                 joint: bool) -> None:
        self.model, self.forward_fn, self.precision, self.device = model, forward_fn, precision, device
        self.channels_last, self.joint = channels_last, joint

    def frozen_bn(self) -> Any:
        """A context in which forwards use BN batch statistics and leave the running ones as they were (USB's
        bn_controller: ReMixMatch's usb mode)."""
        return frozen_bn_stats(self.model)

    def _one(self, x: torch.Tensor, features: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not features:
            return self.forward_fn(x).float(), None
        f = self.model.forward_features(x)
        return self.model.head(f).float(), f.float()

    def __call__(self, xs: list[torch.Tensor], grad: list[bool], features: bool = False) -> Any:
        cl = self.channels_last
        prep = [x.contiguous(memory_format=torch.channels_last) if cl else x for x in xs]
        with autocast(self.precision, self.device):  # bf16 forward; logits leave in fp32 for losses and hooks
            if self.joint:
                z, f = self._one(torch.cat(prep), features)
                sizes = [len(x) for x in xs]
                pairs = list(zip(z.split(sizes), f.split(sizes) if f is not None else [None] * len(xs), strict=True))
                pairs = [(a, b) if g else (a.detach(), b.detach() if b is not None else None)
                         for (a, b), g in zip(pairs, grad, strict=True)]
            else:
                pairs = []
                for x, g in zip(prep, grad, strict=True):
                    with torch.set_grad_enabled(g):
                        pairs.append(self._one(x, features))
        logits = [a for a, _ in pairs]
        return (logits, [b for _, b in pairs]) if features else logits
