"""The ending every backbone shares: trunk -> BatchNorm -> activation -> global average pool -> Linear.

Keeping one ending (and one initialisation) for all models is what makes the solid-colour baseline
image behave alike across backbones: with a train-mode batch of identical images, everything before
the final BN collapses to per-channel constants and the logits follow the BN shifts and head bias.
"""

from __future__ import annotations

import torch
from torch import nn


class PooledHeadNet(nn.Module):
    """Base class: subclasses define `trunk(x) -> [N, F, h, w]` and call `_make_ending` last."""

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _make_ending(self, num_features: int, num_classes: int, act: nn.Module, bn: nn.BatchNorm2d) -> None:
        self.final_bn = bn
        self.final_act = act
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = num_features
        self.head = nn.Linear(num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features [N, num_features] (after the final BN and activation): the head's input."""
        return torch.flatten(self.pool(self.final_act(self.final_bn(self.trunk(x)))), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def reference_init(model: nn.Module) -> None:
    """The reference WRN initialisation: kaiming-normal (fan_out, ReLU gain) convs, unit BN, xavier head."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            nn.init.zeros_(m.bias)
