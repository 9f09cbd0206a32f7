"""ResNet-50 and ViT backbones: registry, output shapes at 32 and 64 px, parameter counts against hand counts,
pretrained-weight loading (round trip, timm-layout checkpoints, clear failures)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dytrim.models import create_model, list_models
from dytrim.models.resnet import ResNet
from dytrim.models.vit import VisionTransformer, load_pretrained, read_state_dict


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(n)


def _nparams(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_registry_lists_the_new_backbones():
    assert {"resnet50", "vit_tiny", "vit_small"} <= set(list_models())


@pytest.mark.parametrize(
    ("name", "kw", "hw", "batch", "grid"),
    [
        ("resnet50", {}, 32, 2, 4),  # cifar stem: 32 -> 32, 16, 8, 4
        ("resnet50", {}, 64, 1, 8),
        ("resnet50", {"stem": "imagenet"}, 64, 2, 2),  # 7x7/2 + maxpool/2: 64 -> 16, then 16, 8, 4, 2
        ("vit_small", {}, 32, 2, 8),  # patch 4: 8x8 tokens
        ("vit_tiny", {}, 64, 2, 16),  # same stored 8x8 position grid, resized to 16x16
    ],
)
def test_output_shapes_at_32_and_64_px(name: str, kw: dict, hw: int, batch: int, grid: int):
    model = create_model(name, 127, **kw).eval()
    x = torch.randn(batch, 3, hw, hw)
    with torch.no_grad():
        trunk = model.trunk(x)
        assert trunk.shape[2:] == (grid, grid)
        feats = model.final_act(model.final_bn(trunk)).mean((2, 3))
        torch.testing.assert_close(model.forward_features(x), feats)
        assert model.head(feats).shape == (batch, 127)


def test_grey_input_and_bad_options():
    with torch.no_grad():
        assert create_model("vit_tiny", 10, in_channels=1).eval()(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="stem"):
        create_model("resnet50", 10, stem="big")
    with pytest.raises(ValueError, match="stem"):
        create_model("vit_tiny", 10, stem="big")
    with pytest.raises(ValueError, match="divisible"):
        create_model("vit_tiny", 10, num_heads=5)


def _preact_resnet50_hand_count(num_classes: int, in_channels: int, stem_kernel: int) -> int:
    """Parameters of a pre-activation bottleneck ResNet-50, counted from the architecture on paper."""
    total = in_channels * 64 * stem_kernel**2 + 2 * 64  # stem conv (no bias) + its BN
    in_ch = 64
    for planes, n in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for i in range(n):
            total += 2 * in_ch + 2 * planes + 2 * planes  # BN before each of the three convs
            total += in_ch * planes + 9 * planes * planes + planes * 4 * planes  # 1x1, 3x3, 1x1 convs
            if i == 0:  # width (and, after stage 1, stride) changes: 1x1 projection shortcut, no BN
                total += in_ch * 4 * planes
            in_ch = 4 * planes
    return total + 2 * 2048 + 2048 * num_classes + num_classes  # final BN, Linear head


def test_resnet50_parameter_count():
    """127 classes, cifar stem: 23,753,023. Cross-check with torchvision's published ResNet-50 (25,557,032 for
    1000 classes, 7x7 stem): same convs and fc; it has 53,120 BN parameters (BN after every conv, one per
    downsample) where the pre-activation layout has 45,568 (BN before every conv, plus the final BN)."""
    m = create_model("resnet50", 127)
    assert isinstance(m, ResNet)
    assert _nparams(m) == _preact_resnet50_hand_count(127, 3, 3) == 23_753_023
    torchvision_count, torchvision_bn, preact_bn = 25_557_032, 53_120, 45_568
    expected = torchvision_count - torchvision_bn + preact_bn
    assert _preact_resnet50_hand_count(1000, 3, 7) == expected == 25_549_480
    assert _nparams(create_model("resnet50", 1000, stem="imagenet")) == expected
    assert len([b for s in m.stages for b in s]) == 3 + 4 + 6 + 3


def _vit_hand_count(dim: int, depth: int, num_classes: int, patch: int, grid: int, stem_width: int = 64) -> int:
    qkv, proj = dim * 3 * dim + 3 * dim, dim * dim + dim
    mlp = (dim * 4 * dim + 4 * dim) + (4 * dim * dim + dim)
    per_block = qkv + proj + mlp + 2 * 2 * dim  # plus two LayerNorms
    stem = 3 * stem_width * 9 + 2 * stem_width  # conv3x3 (no bias) + BN
    patch_embed = stem_width * dim * patch * patch + dim
    ending = 2 * dim + 2 * dim + dim * num_classes + num_classes  # final LayerNorm, final BN, head
    return stem + patch_embed + grid * grid * dim + depth * per_block + ending


def test_vit_parameter_counts():
    assert _nparams(create_model("vit_small", 10)) == _vit_hand_count(384, 12, 10, 4, 8) == 21_718_986
    assert _nparams(create_model("vit_tiny", 10)) == _vit_hand_count(192, 12, 10, 4, 8) == 5_552_010


def _small_vit(seed: int, **kw) -> VisionTransformer:
    torch.manual_seed(seed)
    cfg = {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 32, "patch_size": 4} | kw
    return VisionTransformer(10, **cfg).eval()


def test_pretrained_round_trip_through_a_file(tmp_path):
    """Weights saved by one model (wrapped and prefixed as training scripts do) reproduce it exactly."""
    src = _small_vit(0)
    with torch.no_grad():  # make the BN buffers non-trivial too
        src.train()(torch.randn(4, 3, 32, 32))
    src.eval()
    path = tmp_path / "w.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    dst = _small_vit(1)
    x = torch.randn(3, 3, 32, 32)
    assert not torch.allclose(dst(x), src(x))
    report = load_pretrained(dst, path)
    assert report.clean and len(report.loaded) == len(src.state_dict())
    torch.testing.assert_close(dst(x), src(x))
    assert "loaded" in str(report) and str(path) in str(report)
    # the registry kwarg: `pretrained=` a local file
    tiny = create_model("vit_tiny", 10)
    path2 = tmp_path / "tiny.pt"
    torch.save(tiny.state_dict(), path2)
    again = create_model("vit_tiny", 10, pretrained=str(path2)).eval()
    torch.testing.assert_close(again(x), tiny.eval()(x))


def _timm_layout(model: VisionTransformer, num_classes: int = 1000) -> dict[str, torch.Tensor]:
    """A plain-ViT checkpoint as timm stores it: a class token, its position first, a 1000-class head."""
    sd = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("final_bn")}
    dim = model.pos_embed.shape[-1]
    sd["cls_token"] = torch.zeros(1, 1, dim)
    sd["pos_embed"] = torch.cat([torch.zeros(1, 1, dim), sd["pos_embed"]], 1)
    sd["head.weight"], sd["head.bias"] = torch.zeros(num_classes, dim), torch.zeros(num_classes)
    return sd


def test_pretrained_timm_layout_is_adapted_and_reported():
    """Patch 8 on a 4x4 grid with a class token -> patch 4 on an 8x8 grid: every trunk tensor loads, the head
    (1000 classes) is skipped, the class token is reported as unexpected, the final BN as missing."""
    src = _small_vit(0, stem="patch", patch_size=8)
    dst = _small_vit(1, stem="patch", patch_size=4)
    report = load_pretrained(dst, _timm_layout(src))
    text = str(report)
    assert "class-token" in text and "grid 4x4 -> 8x8" in text and "patch_embed.proj.weight" in text
    assert report.unexpected == ["cls_token"]
    assert sorted(report.missing) == sorted(k for k in dst.state_dict() if k.startswith("final_bn"))
    assert [s.split()[0] for s in report.skipped] == ["head.weight", "head.bias"]
    torch.testing.assert_close(dst.blocks[1].mlp.fc2.weight, src.blocks[1].mlp.fc2.weight)
    # the resized patch kernel keeps the response to a flat patch (its sum over the kernel)
    torch.testing.assert_close(dst.patch_embed.proj.weight.sum((1, 2, 3)), src.patch_embed.proj.weight.sum((1, 2, 3)))
    assert "2x2 block sums" in text
    with pytest.raises(ValueError, match="strict=True"):
        load_pretrained(_small_vit(1, stem="patch"), _timm_layout(src), strict=True)


def test_pretrained_failures_are_clear(tmp_path):
    conv_stem = _small_vit(2)
    report = load_pretrained(conv_stem, _timm_layout(_small_vit(0, stem="patch")))
    assert any("stem='patch'" in a for a in report.adapted)  # a plain ViT's patch kernel cannot feed the conv stem
    grey = _small_vit(3, stem="patch", in_channels=1)
    assert "patch_embed.proj.weight" in load_pretrained(grey, _timm_layout(_small_vit(0, stem="patch"))).loaded
    with pytest.raises(ValueError, match="no tensor"):
        load_pretrained(conv_stem, {"conv1.weight": torch.zeros(3)})
    with pytest.raises(FileNotFoundError, match="no file"):
        load_pretrained(conv_stem, tmp_path / "missing.pt")
    torch.save({"step": torch.tensor(1), "note": "x"}, tmp_path / "odd.pt")
    with pytest.raises(KeyError, match="ema"):
        read_state_dict(tmp_path / "odd.pt", key="ema")
