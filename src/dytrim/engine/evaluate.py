"""Evaluation of a model on uint8 test images kept on the device."""

from __future__ import annotations

import torch
from torch import nn

from dytrim.data.augment import normalize


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    x: torch.Tensor,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    batch_size: int = 512,
    channels_last: bool = False,
) -> torch.Tensor:
    """Eval-mode logits [N, C] (float32) for uint8 images [N, C, H, W]; restores the model's mode."""
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        xb = normalize(x[i : i + batch_size], mean, std)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        out.append(model(xb).float())
    model.train(was_training)
    return torch.cat(out)
