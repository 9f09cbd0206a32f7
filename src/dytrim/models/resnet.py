"""ResNet-50 with pre-activation bottleneck blocks, the Small-ImageNet-127 backbone (32 or 64 px inputs).

Pre-activation (BN-ReLU before every conv, He et al. 2016, "Identity mappings") is used rather than the
original post-activation block because it ends in BN -> ReLU -> pool -> Linear by construction: the ending
every dytrim backbone shares (see `base.PooledHeadNet`). Convolution shapes are those of the usual
ResNet-50 (bottlenecks [3, 4, 6, 3], widths 64..512, expansion 4, stride on the 3x3 conv as in "v1.5").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dytrim.models.registry import register_model

from .base import PooledHeadNet, reference_init

__all__ = ["PreActBottleneck", "ResNet", "resnet50", "STEMS"]

#: "cifar": conv3x3 stride 1, no max-pool (32/64 px inputs keep their resolution into the first stage);
#: "imagenet": conv7x7 stride 2 + 3x3 max-pool stride 2 (224 px inputs; 4x fewer MACs at 64 px).
STEMS = ("cifar", "imagenet")


class PreActBottleneck(nn.Module):
    """BN-ReLU-conv1x1 -> BN-ReLU-conv3x3(stride) -> BN-ReLU-conv1x1(x4) plus a shortcut.

    A projection shortcut (1x1 conv, when the stride or width changes) sees the pre-activated input, as in
    the pre-activation paper; an identity shortcut sees the raw input.
    """

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_ch, 1, bias=False)
        self.relu = nn.ReLU(inplace=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.relu(self.bn1(x))
        skip = self.shortcut(o) if self.shortcut is not None else x
        o = self.conv1(o)
        o = self.conv2(self.relu(self.bn2(o)))
        o = self.conv3(self.relu(self.bn3(o)))
        return o + skip


class ResNet(PooledHeadNet):
    """Pre-activation bottleneck ResNet: stem (conv-BN-ReLU[-maxpool]), four stages (widths 64, 128, 256, 512
    times 4; strides 1, 2, 2, 2), final BN-ReLU, global average pool, Linear head.

    The stem has its own BN, so every path to the head starts after a BatchNorm (the constant-image property
    WRN gets from `activate_before_residual`). Cost of ResNet-50 per image: ~1.3 GMACs at 32 px with the cifar
    stem, ~5.2 GMACs at 64 px (cifar stem) or ~1.3 GMACs at 64 px (imagenet stem).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        blocks: Sequence[int] = (3, 4, 6, 3),
        width: int = 64,
        stem: str = "cifar",
    ) -> None:
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        if len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(f"blocks must be four counts >= 1, got {tuple(blocks)}")
        self.stem = self._make_stem(in_channels, width, stem)
        stages = []
        in_ch = width
        for i, n in enumerate(blocks):
            planes = width * 2**i
            layers = []
            for j in range(n):
                layers.append(PreActBottleneck(in_ch, planes, stride=(1 if i == 0 or j > 0 else 2)))
                in_ch = planes * PreActBottleneck.expansion
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self._make_ending(in_ch, num_classes, nn.ReLU(inplace=True), nn.BatchNorm2d(in_ch))
        reference_init(self)

    @staticmethod
    def _make_stem(in_channels: int, width: int, stem: str) -> nn.Sequential:
        if stem == "cifar":
            return nn.Sequential(
                nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
            )
        return nn.Sequential(
            nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


@register_model("resnet50")
def resnet50(num_classes: int, in_channels: int = 3, stem: str = "cifar") -> ResNet:
    """Pre-activation ResNet-50 (23.75M parameters for 127 classes with the cifar stem): Small-ImageNet-127."""
    return ResNet(num_classes, in_channels, blocks=(3, 4, 6, 3), stem=stem)
