"""Wide ResNet (pre-activation, LeakyReLU 0.1) as used by DARP / CDMAD / DyTrim for CIFAR-scale SSL.

Written from the structure of the reference `models/wrn.py` (WRN-28-w with `activate_before_residual` on
the first block), so that parameter counts, initialisation and the effective BatchNorm settings match.
"""

from __future__ import annotations

import torch
from torch import nn

from dytrim.models.registry import register_model

from .base import PooledHeadNet, reference_init

__all__ = ["WideResNet", "PreActBlock", "wrn", "wrn_28_2", "wrn_28_8"]

#: The reference's custom BatchNorm2d accepts momentum=1e-3, eps=1e-3 but never forwards them, so the
#: values actually in effect are PyTorch's defaults; we reproduce those by default.
REFERENCE_EFFECTIVE_BN_MOMENTUM = 0.1
REFERENCE_EFFECTIVE_BN_EPS = 1e-5


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


class PreActBlock(nn.Module):
    """Pre-activation basic block: BN-LReLU-conv3x3-BN-LReLU-conv3x3 plus a shortcut.

    As in the reference, the shortcut normally sees the *raw* block input; only with
    `activate_before_residual=True` (first block of the first group) does it see the BN-LReLU output.
    The shortcut is a 1x1 strided conv when the stride or the channel count changes, else identity.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int = 1,
        activate_before_residual: bool = False,
        bn_momentum: float = REFERENCE_EFFECTIVE_BN_MOMENTUM,
        bn_eps: float = REFERENCE_EFFECTIVE_BN_EPS,
        negative_slope: float = 0.1,
    ) -> None:
        super().__init__()
        self.activate_before_residual = activate_before_residual
        self.bn1 = nn.BatchNorm2d(in_ch, momentum=bn_momentum, eps=bn_eps)
        self.act1 = nn.LeakyReLU(negative_slope)
        self.conv1 = _conv3x3(in_ch, out_ch, stride)
        self.bn2 = nn.BatchNorm2d(out_ch, momentum=bn_momentum, eps=bn_eps)
        self.act2 = nn.LeakyReLU(negative_slope)
        self.conv2 = _conv3x3(out_ch, out_ch)
        self.shortcut: nn.Module
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.act1(self.bn1(x))
        if self.activate_before_residual:
            x = o
        o = self.conv2(self.act2(self.bn2(self.conv1(o))))
        return self.shortcut(x) + o


class WideResNet(PooledHeadNet):
    """WRN-depth-widen_factor: conv3x3(in,16), 3 groups of (depth-4)/6 pre-activation blocks
    (widths 16w, 32w, 64w; strides 1, 2, 2), final BN-LReLU, global average pool, Linear head.

    Differences from the reference, all deliberate:
    - BN momentum/eps: the reference passes momentum=0.001, eps=0.001 to its BatchNorm2d subclass but never
      forwards them to `nn.BatchNorm2d.__init__`, so PyTorch's defaults (0.1, 1e-5) are what it really
      uses; those are our defaults too. Pass `bn_momentum=0.001, bn_eps=0.001` for the *intended* values.
    - the rotation head (`rot`, Linear(64w, 4)), never used by these methods, is left out, and `forward`
      returns the logits tensor only (the reference returns a tuple and `squeeze()`s batch-1 outputs).
    - no `update_batch_stats` switch (use `model.eval()`/BN momentum handling in the caller instead).
    Init as the reference (`base.reference_init`): kaiming_normal_(fan_out, ReLU gain) convs; BN weight 1,
    bias 0; Linear xavier_normal_, bias 0.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        depth: int = 28,
        widen_factor: int = 2,
        bn_momentum: float = REFERENCE_EFFECTIVE_BN_MOMENTUM,
        bn_eps: float = REFERENCE_EFFECTIVE_BN_EPS,
        negative_slope: float = 0.1,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4 with n >= 1 (e.g. 10, 16, 22, 28), got {depth}")
        if widen_factor < 1:
            raise ValueError(f"widen_factor must be >= 1, got {widen_factor}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.depth, self.widen_factor = depth, widen_factor
        self.stem = _conv3x3(in_channels, widths[0])
        groups = []
        for g, stride in enumerate((1, 2, 2)):
            blocks = []
            for i in range(n):
                blocks.append(
                    PreActBlock(
                        widths[g] if i == 0 else widths[g + 1],
                        widths[g + 1],
                        stride=stride if i == 0 else 1,
                        activate_before_residual=(g == 0 and i == 0),
                        bn_momentum=bn_momentum,
                        bn_eps=bn_eps,
                        negative_slope=negative_slope,
                    )
                )
            groups.append(nn.Sequential(*blocks))
        self.groups = nn.Sequential(*groups)
        final_bn = nn.BatchNorm2d(widths[3], momentum=bn_momentum, eps=bn_eps)
        self._make_ending(widths[3], num_classes, nn.LeakyReLU(negative_slope), final_bn)
        reference_init(self)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        return self.groups(self.stem(x))


@register_model("wrn")
def wrn(
    num_classes: int, in_channels: int = 3, depth: int = 28, widen_factor: int = 2, **kw: float
) -> WideResNet:
    """Generic WRN-depth-widen_factor (defaults: WRN-28-2)."""
    return WideResNet(num_classes, in_channels, depth=depth, widen_factor=widen_factor, **kw)


@register_model("wrn_28_2")
def wrn_28_2(num_classes: int, in_channels: int = 3, **kw: float) -> WideResNet:
    """WRN-28-2 (1.47M parameters for 10 classes): the CIFAR backbone of DARP / CDMAD / DyTrim."""
    return WideResNet(num_classes, in_channels, depth=28, widen_factor=2, **kw)


@register_model("wrn_28_8")
def wrn_28_8(num_classes: int, in_channels: int = 3, **kw: float) -> WideResNet:
    """WRN-28-8 (23.4M parameters for 100 classes): the usual CIFAR-100 backbone."""
    return WideResNet(num_classes, in_channels, depth=28, widen_factor=8, **kw)
