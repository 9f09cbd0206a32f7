"""Vision Transformer for 32x32 (patch 4: 8x8 = 64 tokens) and larger inputs, plus pretrained-weight loading.

Module names follow timm's `VisionTransformer` (patch_embed.proj, pos_embed, blocks.i.{norm1, attn.qkv,
attn.proj, norm2, mlp.fc1, mlp.fc2}, norm, head), so a timm / USB checkpoint loads with `load_pretrained`
after the few adaptations a different input size needs (position grid, patch size, class token).

The ending is dytrim's shared one (see `base.PooledHeadNet`): the token grid after the final LayerNorm goes
through BatchNorm -> GELU -> average pool over tokens -> Linear head. There is no class token. The GELU
matters: with an identity there, a train-mode batch of identical images would give exactly head(BN shift) (the
BN output averages to zero over tokens), so the baseline image would carry nothing of the trunk. With
the default `stem="conv"` (conv3x3-BN-ReLU before the patch projection, as in "Early convolutions help
transformers see better"), every path to the head starts after a BatchNorm, so the solid-colour baseline image
behaves as on the CNNs; `stem="patch"` is the plain ViT patchify, needed to reuse a plain ViT's patch weights.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dytrim.models.registry import register_model

from .base import PooledHeadNet
from .pretrained import LoadReport, load_pretrained, read_state_dict

__all__ = ["VisionTransformer", "LoadReport", "load_pretrained", "read_state_dict", "vit_tiny", "vit_small"]

STEMS = ("conv", "patch")


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample with probability p (train mode only)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v)
        return self.proj(o.transpose(1, 2).reshape(n, t, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: Conv2d(kernel = stride = patch_size) -> [N, D, H/p, W/p]."""

    def __init__(self, in_ch: int, dim: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_ch, dim, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def resize_pos_embed(pos: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of position embeddings [1, gh*gw, D] laid out row-major on a gh x gw grid."""
    if old_grid == new_grid:
        return pos
    d = pos.shape[-1]
    grid = pos.reshape(1, *old_grid, d).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=new_grid, mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], d)


class VisionTransformer(PooledHeadNet):
    """ViT on a patch grid: [conv stem] -> patch projection -> + position embedding -> pre-norm blocks ->
    LayerNorm -> (shared ending) BatchNorm -> GELU -> average pool over tokens -> Linear.

    `img_size` only sets the stored position grid (img_size / patch_size per side); other input sizes get the
    embeddings resized bicubically on the fly, so 28x28 or 16x24 inputs work too.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        img_size: int = 32,
        patch_size: int = 4,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        stem: str = "conv",
        stem_width: int = 64,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.stem_kind = stem
        self.stem: nn.Module = nn.Identity()
        if stem == "conv":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, stem_width, 3, padding=1, bias=False),
                nn.BatchNorm2d(stem_width),
                nn.ReLU(inplace=True),
            )
        self.patch_embed = PatchEmbed(stem_width if stem == "conv" else in_channels, embed_dim, patch_size)
        self.grid = (img_size // patch_size, img_size // patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], embed_dim))
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.Sequential(*(Block(embed_dim, num_heads, mlp_ratio, r) for r in rates))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self._make_ending(embed_dim, num_classes, nn.GELU(), nn.BatchNorm2d(embed_dim))
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        z = self.patch_embed(self.stem(x))  # [N, D, h, w]
        n, d, h, w = z.shape
        tokens = z.flatten(2).transpose(1, 2) + resize_pos_embed(self.pos_embed, self.grid, (h, w))
        tokens = self.norm(self.blocks(tokens))
        return tokens.transpose(1, 2).reshape(n, d, h, w)

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
        """Fit a checkpoint's pos_embed / patch projection to this model's grid, patch size and channels."""
        state, notes = dict(state), []
        pos = state.get("pos_embed")
        if pos is not None and pos.dim() == 3 and pos.shape[-1] == self.pos_embed.shape[-1]:
            state["pos_embed"], note = self._fit_pos_embed(pos)
            if note:
                notes.append(note)
        w = state.get("patch_embed.proj.weight")
        mine = self.patch_embed.proj.weight
        if w is not None and w.dim() == 4 and w.shape[0] == mine.shape[0] and w.shape != mine.shape:
            fitted, note = _fit_patch_kernel(w, mine.shape[1], mine.shape[2:], self.stem_kind)
            if fitted is not None:
                state["patch_embed.proj.weight"] = fitted
            notes.append(note)
        return state, notes

    def _fit_pos_embed(self, pos: torch.Tensor) -> tuple[torch.Tensor, str]:
        n, notes = pos.shape[1], []
        side = math.isqrt(n)
        if side * side != n and math.isqrt(n - 1) ** 2 == n - 1:  # timm layout: class-token position first
            pos, side = pos[:, 1:], math.isqrt(n - 1)
            notes.append("dropped the class-token position")
        elif side * side != n:
            return pos, f"pos_embed: {n} positions are not a square grid; left as is"
        if (side, side) != self.grid:
            pos = resize_pos_embed(pos, (side, side), self.grid)
            notes.append(f"grid {side}x{side} -> {self.grid[0]}x{self.grid[1]} (bicubic)")
        return pos, ("pos_embed: " + ", ".join(notes)) if notes else ""


def _fit_patch_kernel(
    w: torch.Tensor, in_ch: int, size: torch.Size, stem_kind: str
) -> tuple[torch.Tensor | None, str]:
    """Resize a patch kernel [D, C, P, P] to [D, in_ch, p, p]; None if the input channels cannot match."""
    old, how = tuple(w.shape), []
    if w.shape[1] != in_ch:
        if in_ch != 1 or stem_kind != "patch":
            hint = " (the model has the conv stem; build it with stem='patch' to use it)" if stem_kind == "conv" else ""
            return None, f"patch_embed.proj.weight {old}: {w.shape[1]} input channels vs {in_ch}; not loaded{hint}"
        w = w.sum(1, keepdim=True)  # grey input = equal RGB channels: sum the colour filters
        how.append("colour channels summed for grey input")
    if tuple(w.shape[2:]) != tuple(size):
        w, note = _resize_kernel(w, (int(size[0]), int(size[1])))
        how.append(note)
    return w, f"patch_embed.proj.weight {old} -> {tuple(w.shape)} ({'; '.join(how)})"


def _resize_kernel(w: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, str]:
    """Resize conv kernels [D, C, P, P] to size, keeping each filter's sum (its response to a flat patch).

    Integer ratios are exact re-samplings: shrinking by f sums f x f blocks (the old filter applied to the
    image upsampled f times, nearest); growing by f repeats each tap over f x f and divides by f^2 (the old
    filter on the f x f box-averaged image). Other ratios fall back to antialiased bilinear times the area ratio.
    """
    (big_h, big_w), (h, w_) = w.shape[2:], size
    if big_h % h == 0 and big_w % w_ == 0 and big_h // h == big_w // w_:
        f = big_h // h
        return F.avg_pool2d(w, f) * f * f, f"{f}x{f} block sums"
    if h % big_h == 0 and w_ % big_w == 0 and h // big_h == w_ // big_w:
        f = h // big_h
        return w.repeat_interleave(f, 2).repeat_interleave(f, 3) / (f * f), f"each tap spread over {f}x{f}"
    area = (big_h * big_w) / (h * w_)
    out = F.interpolate(w, size=size, mode="bilinear", align_corners=False, antialias=True) * area
    return out, "bilinear, times the area ratio (approximate)"


def _build(num_classes: int, in_channels: int, pretrained: str | None, **kw: Any) -> VisionTransformer:
    model = VisionTransformer(num_classes, in_channels, **kw)
    if pretrained:
        report = load_pretrained(model, pretrained)
        if not report.clean:
            warnings.warn(str(report), stacklevel=3)
    return model


@register_model("vit_tiny")
def vit_tiny(num_classes: int, in_channels: int = 3, pretrained: str | None = None, **kw: Any) -> VisionTransformer:
    """ViT-Tiny/4 (dim 192, depth 12, 3 heads; 5.55M parameters) for 32x32 inputs; `pretrained`: a local file."""
    kw = {"embed_dim": 192, "depth": 12, "num_heads": 3, "patch_size": 4} | kw
    return _build(num_classes, in_channels, pretrained, **kw)


@register_model("vit_small")
def vit_small(num_classes: int, in_channels: int = 3, pretrained: str | None = None, **kw: Any) -> VisionTransformer:
    """ViT-Small/4 (dim 384, depth 12, 6 heads; 21.7M parameters) for 32x32 inputs; `pretrained`: a local file."""
    kw = {"embed_dim": 384, "depth": 12, "num_heads": 6, "patch_size": 4} | kw
    return _build(num_classes, in_channels, pretrained, **kw)
