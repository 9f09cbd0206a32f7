"""Batched augmentation (dytrim.data.augment) against Pillow, image by image, on real CIFAR-10 and MNIST."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from dytrim.data.augment import (
    RAND_AUGMENT_OPS,
    apply_op,
    cutout,
    cutout_abs,
    normalize,
    op_value,
    rand_augment,
    strong_augment,
    weak_augment,
)

CIFAR_NPZ = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10.npz"
MNIST_NPZ = Path(__file__).resolve().parents[1] / "src" / "dytrim" / "data" / "embedded" / "mnist10k.npz"
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2471, 0.2435, 0.2616)


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    """Small-tensor ops are far slower with 2 intra-op threads on a shared 2-core box; restore after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cifar() -> torch.Tensor:
    """First 32 CIFAR-10 training images as uint8 [32, 3, 32, 32]."""
    if not CIFAR_NPZ.exists():
        pytest.skip(f"real data not found at {CIFAR_NPZ}")
    with np.load(CIFAR_NPZ) as d:
        x = d["x_train"][:32]
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


@pytest.fixture(scope="module")
def mnist() -> torch.Tensor:
    """Eight MNIST digits as uint8 [8, 1, 28, 28] (the grayscale / Pillow mode "L" path)."""
    with np.load(MNIST_NPZ) as d:
        x = d["x"][:8]
    return torch.from_numpy(np.ascontiguousarray(x[:, None]))


# ---------------------------------------------------------------------------------------------------------
# Pillow reference, written after ildoonet RandAugment/augmentations.py (one image at a time)


def to_pil(img: torch.Tensor) -> Image.Image:
    arr = img.numpy()
    return Image.fromarray(arr[0]) if arr.shape[0] == 1 else Image.fromarray(arr.transpose(1, 2, 0))


def from_pil(im: Image.Image) -> torch.Tensor:
    arr = np.array(im)
    return torch.from_numpy(np.ascontiguousarray(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)))


def pil_op(name: str, im: Image.Image, v: float) -> Image.Image:
    """The Pillow call the reference makes for op ``name`` with (already signed) value ``v``."""
    if name == "AutoContrast":
        return ImageOps.autocontrast(im)
    if name == "Equalize":
        return ImageOps.equalize(im)
    if name == "Invert":
        return ImageOps.invert(im)
    if name == "Rotate":
        return im.rotate(v)
    if name == "Posterize":
        return ImageOps.posterize(im, max(1, int(v)))  # int(v) == 0 at m=4; Pillow 13 rejects 0 bits
    if name == "Solarize":
        return ImageOps.solarize(im, v)
    if name == "SolarizeAdd":
        arr = np.clip(np.asarray(im).astype(np.int64) + v, 0, 255).astype(np.uint8)
        return ImageOps.solarize(Image.fromarray(arr), 128)
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return getattr(ImageEnhance, name)(im).enhance(v)
    coeffs = {
        "ShearX": (1, v, 0, 0, 1, 0),
        "ShearY": (1, 0, 0, v, 1, 0),
        "TranslateXabs": (1, 0, v, 0, 1, 0),
        "TranslateYabs": (1, 0, 0, 0, 1, v),
    }[name]
    return im.transform(im.size, Image.AFFINE, coeffs)


def pil_cutout_abs(im: Image.Image, x0: float, y0: float, v: float) -> Image.Image:
    """Reference CutoutAbs with the centre already drawn."""
    w, h = im.size
    x0 = int(max(0, x0 - v / 2.0))
    y0 = int(max(0, y0 - v / 2.0))
    x1 = min(w, x0 + v)
    y1 = min(h, y0 + v)
    im = im.copy()
    colour = (125, 123, 114) if im.mode == "RGB" else 125
    ImageDraw.Draw(im).rectangle((x0, y0, x1, y1), colour)
    return im


def pil_batch(name: str, x: torch.Tensor, values: list[float]) -> torch.Tensor:
    return torch.stack([from_pil(pil_op(name, to_pil(img), v)) for img, v in zip(x, values, strict=True)])


def per_sample(values: list[float], n: int) -> list[float]:
    """Cycle ``values`` over ``n`` samples, so one batched call mixes different values."""
    return [values[i % len(values)] for i in range(n)]


def op_test_values(name: str) -> list[float]:
    """The m=4 value plus other magnitudes and, for signed ops, both signs and edge values."""
    vals = [op_value(name, m) for m in (4, 1, 9, 17, 30)]
    extra = {
        "Rotate": [-4.0, -30.0, 13.7, 90.0, -90.0, 180.0, 45.0, 0.0, 359.5],
        "ShearX": [-0.04, -0.3, 0.17, -0.25, 0.0],
        "ShearY": [-0.04, -0.3, 0.17, -0.25, 0.0],
        "TranslateXabs": [-13.333333333333334, -100.0, 0.5, -2.5, 3.5, 7.0, -0.25],
        "TranslateYabs": [-13.333333333333334, -100.0, 0.5, -2.5, 3.5, 7.0, -0.25],
        "Solarize": [0.0, 128.0, 200.5, 256.0],
        "SolarizeAdd": [0.0, 110.0, 3.5],
        "Posterize": [4.0, 8.0, 2.9],
        "Color": [0.0, 1.0, 1.9, 0.5],
        "Contrast": [0.0, 1.0, 1.9, 0.5],
        "Brightness": [0.0, 1.0, 1.9, 0.5],
        "Sharpness": [0.0, 1.0, 1.9, 0.5],
    }
    return vals + extra.get(name, [])


# ---------------------------------------------------------------------------------------------------------
# each op against Pillow: exact equality for every op, geometric ones included (the implementation
# reproduces Pillow's integer source-pixel arithmetic, so there are no half-pixel rounding ties to tolerate)


APPLY_OPS = [name for name in RAND_AUGMENT_OPS if name != "CutoutAbs"]  # everything apply_op takes


@pytest.mark.parametrize("name", APPLY_OPS)
def test_op_matches_pillow_rgb(name: str, cifar: torch.Tensor) -> None:
    values = op_test_values(name)
    for shift in range(len(values)):  # every image sees every value, all in mixed batches
        vals = per_sample(values[shift:] + values[:shift], len(cifar))
        got = apply_op(name, cifar, torch.tensor(vals, dtype=torch.float64))
        want = pil_batch(name, cifar, vals)
        assert got.dtype == torch.uint8 and got.shape == cifar.shape
        bad = (got != want).any(dim=(1, 2, 3)).nonzero().flatten().tolist()
        assert not bad, f"{name}: samples {bad} differ (values {[vals[i] for i in bad]})"


@pytest.mark.parametrize("name", APPLY_OPS)
def test_op_matches_pillow_grayscale(name: str, mnist: torch.Tensor) -> None:
    values = op_test_values(name)
    vals = per_sample(values, max(len(values), len(mnist)))
    x = mnist[torch.arange(len(vals)) % len(mnist)]
    got = apply_op(name, x, torch.tensor(vals, dtype=torch.float64))
    want = pil_batch(name, x, vals)
    assert got.shape == x.shape
    assert torch.equal(got, want), name


def test_op_values_are_the_reference_ranges() -> None:
    assert op_value("Rotate", 4) == pytest.approx(4.0)
    assert op_value("ShearX", 4) == pytest.approx(0.04)
    assert op_value("TranslateXabs", 4) == pytest.approx(13.333333333333334)
    assert op_value("Color", 4) == pytest.approx(0.34)
    assert op_value("CutoutAbs", 4) == pytest.approx(5.333333333333333)
    assert op_value("Posterize", 4) == pytest.approx(0.5333333333333333)
    assert len(RAND_AUGMENT_OPS) == 16
    assert RAND_AUGMENT_OPS[3] == "Rotate" and RAND_AUGMENT_OPS[13] == "CutoutAbs"


def test_ops_are_actually_exercised(cifar: torch.Tensor) -> None:
    """Guard against a vacuous comparison: the m=4 ops change the images (except where they cannot)."""
    for name in APPLY_OPS:
        v = torch.full((len(cifar),), op_value(name, 4), dtype=torch.float64)
        changed = (apply_op(name, cifar, v) != cifar).any(dim=(1, 2, 3)).float().mean().item()
        assert changed > 0.5, name


@pytest.mark.parametrize("size", [op_value("CutoutAbs", 4), op_value("CutoutAbs", 30), 7.0, 0.0])
def test_cutout_abs_matches_pillow(size: float, cifar: torch.Tensor, mnist: torch.Tensor) -> None:
    gen = torch.Generator().manual_seed(3)
    for x in (cifar, mnist):
        n, _, h, w = x.shape
        # the reference draws centres in (1, w]; also hit 0, the far edge and exact half-pixel shifts
        edge_x = torch.tensor([0.0, float(w), 2.5 + size / 2, 1.0])
        edge_y = torch.tensor([float(h), 0.0, 3.0, h - 0.1])
        cx = torch.cat([edge_x, 1 + (w - 1) * torch.rand(n - 4, generator=gen)]).double()
        cy = torch.cat([edge_y, 1 + (h - 1) * torch.rand(n - 4, generator=gen)]).double()
        got = cutout_abs(x, cx, cy, size)
        want = torch.stack(
            [
                from_pil(pil_cutout_abs(to_pil(img), float(a), float(b), size))
                for img, a, b in zip(x, cx, cy, strict=True)
            ]
        )
        assert torch.equal(got, want)
        assert (got != x).any()  # boxes drawn (size 0 still paints one pixel, as Pillow does)


def test_apply_op_rejects_cutout_abs_and_unknown(cifar: torch.Tensor) -> None:
    with pytest.raises(ValueError):
        apply_op("CutoutAbs", cifar, 5.0)
    with pytest.raises(ValueError):
        apply_op("Nope", cifar, 1.0)


# ---------------------------------------------------------------------------------------------------------
# weak augment


def crop_matches(x: torch.Tensor, out: torch.Tensor, pad: int) -> torch.Tensor:
    """[N, 2, K, K] bool: does out[n] equal the (flip f, offset i, j) zero-padded crop of x[n]?"""
    n, c, h, w = x.shape
    hits = []
    for b in range(0, n, 32):
        padded = torch.nn.functional.pad(x[b : b + 32], (pad, pad, pad, pad))
        crops = padded.unfold(2, h, 1).unfold(3, w, 1).permute(0, 2, 3, 1, 4, 5)  # [n, K, K, C, H, W]
        cands = torch.stack([crops, crops.flip(-1)], 1)  # [n, 2, K, K, C, H, W]
        hits.append((cands == out[b : b + 32, None, None, None]).flatten(4).all(-1))
    return torch.cat(hits)


def test_weak_augment_is_a_padded_crop_with_optional_flip(cifar: torch.Tensor) -> None:
    gen = torch.Generator().manual_seed(0)
    # random images with no zero pixel make the (offset, flip) of each output unambiguous
    noise = torch.randint(
        1, 256, (8, 3, 32, 32), generator=torch.Generator().manual_seed(1), dtype=torch.uint8
    )
    x = torch.cat([noise.repeat(32, 1, 1, 1), cifar])
    out = weak_augment(x, gen)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    hits = crop_matches(x, out, 4)  # 2 * 81 = 162 candidates per sample
    assert hits.flatten(1).any(1).all(), "some output is no zero-padded crop/flip of its input"
    noise_hits = hits[: len(noise) * 32]
    assert (noise_hits.flatten(1).sum(1) == 1).all()
    flip, i, j = noise_hits.nonzero(as_tuple=True)[1:]
    assert set(flip.tolist()) == {0, 1}  # both flip states
    offsets = set(zip(i.tolist(), j.tolist(), strict=True))
    assert len(offsets) >= 60  # 256 draws over 81 offsets
    assert set(i.tolist()) == set(range(9)) and set(j.tolist()) == set(range(9))


def test_weak_augment_grayscale_other_sizes_and_no_flip(mnist: torch.Tensor) -> None:
    gen = torch.Generator().manual_seed(5)
    out = weak_augment(mnist, gen, pad=2, flip=False)
    assert crop_matches(mnist, out, 2)[:, 0].flatten(1).any(1).all()
    rect = torch.randint(1, 256, (16, 3, 20, 12), generator=gen, dtype=torch.uint8)
    out = weak_augment(rect, gen)
    hits = crop_matches(rect, out, 4)
    assert (hits.flatten(1).sum(1) == 1).all()
    assert not torch.equal(out, weak_augment(rect, gen))  # a fresh draw differs


# ---------------------------------------------------------------------------------------------------------
# rand_augment


def test_rand_augment_draws_per_sample_and_is_seeded(cifar: torch.Tensor) -> None:
    x = cifar[5:6].repeat(256, 1, 1, 1)
    a = rand_augment(x, torch.Generator().manual_seed(7))
    b = rand_augment(x, torch.Generator().manual_seed(7))
    c = rand_augment(x, torch.Generator().manual_seed(8))
    assert a.dtype == torch.uint8 and a.shape == x.shape
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    distinct = torch.unique(a.flatten(1), dim=0).shape[0]
    assert distinct >= 150, distinct


def test_rand_augment_single_op_outputs_are_reference_ops(cifar: torch.Tensor) -> None:
    """With n_ops=1 every output is one of the 16 ops at +-v (CutoutAbs: one 6x6-or-smaller grey box)."""
    img = cifar[9:10]
    m = 4.0
    cands = []
    for name in APPLY_OPS:
        v = op_value(name, m)
        signed = name in ("Rotate", "ShearX", "ShearY", "TranslateXabs", "TranslateYabs")
        for s in (1.0, -1.0) if signed else (1.0,):
            cands.append(apply_op(name, img, torch.tensor([s * v])))
    cands = torch.cat(cands)
    out = rand_augment(img.repeat(400, 1, 1, 1), torch.Generator().manual_seed(11), n_ops=1, magnitude=m)
    match = (out[:, None] == cands[None]).flatten(2).all(-1)  # [400, n_cands]
    n_cutout = 0
    for o, hit in zip(out, match, strict=True):
        if hit.any():
            continue
        diff = (o != img[0]).any(0)
        rows, cols = diff.nonzero(as_tuple=True)
        assert len(rows) > 0
        assert rows.max() - rows.min() <= 5 and cols.max() - cols.min() <= 5
        box = o[:, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert (box == torch.tensor([125, 123, 114], dtype=torch.uint8).view(3, 1, 1)).all()
        n_cutout += 1
    used = match.any(0).sum().item()
    assert used >= 18  # nearly all 20 candidates drawn in 400 samples
    assert 5 <= n_cutout <= 50  # about 1/16 of the samples


def test_rand_augment_grayscale_and_no_global_rng(mnist: torch.Tensor) -> None:
    torch.manual_seed(0)
    state = torch.get_rng_state()
    out = rand_augment(mnist.repeat(8, 1, 1, 1), torch.Generator().manual_seed(1), magnitude=10)
    assert out.shape == (64, 1, 28, 28) and out.dtype == torch.uint8
    assert torch.equal(state, torch.get_rng_state())


# ---------------------------------------------------------------------------------------------------------
# cutout (CutoutDefault) and strong augment


def test_cutout_zeroes_exactly_one_clipped_box() -> None:
    n, h, w, size = 400, 32, 24, 16
    x = torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(2)) + 5.0  # no zeros
    out = cutout(x, torch.Generator().manual_seed(4), size=size)
    assert out.dtype == x.dtype and out.shape == x.shape and out.data_ptr() != x.data_ptr()
    zero = out == 0
    assert (zero.all(1) | ~zero.any(1)).all()  # the same box in every channel
    mask = zero[:, 0]
    assert torch.equal(out[~zero], x[~zero])
    # every possible box: centre (y, x) uniform over [0, H) x [0, W)
    ys = torch.arange(h).view(h, 1, 1, 1)
    xs = torch.arange(w).view(1, w, 1, 1)
    r = torch.arange(h).view(1, 1, h, 1)
    c = torch.arange(w).view(1, 1, 1, w)
    boxes = (
        (r >= (ys - size // 2).clamp(0, h))
        & (r < (ys + size // 2).clamp(0, h))
        & (c >= (xs - size // 2).clamp(0, w))
        & (c < (xs + size // 2).clamp(0, w))
    ).reshape(h * w, h, w)
    hit = (mask[:, None] == boxes[None]).flatten(2).all(-1)  # [n, h*w]
    assert hit.any(1).all()
    assert torch.unique(mask.flatten(1), dim=0).shape[0] > 200  # per-sample positions
    areas = mask.flatten(1).sum(1)
    assert (areas == size * size).any() and (areas < size * size).any()  # interior and clipped boxes
    assert areas.min() >= (size // 2) ** 2


def test_normalize_matches_totensor_normalize(cifar: torch.Tensor) -> None:
    got = normalize(cifar, CIFAR_MEAN, CIFAR_STD)
    mean, std = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    want = (cifar.float() / 255 - mean) / std
    assert got.dtype == torch.float32 and torch.equal(got, want)


def test_strong_augment_shapes_and_values(cifar: torch.Tensor, mnist: torch.Tensor) -> None:
    gen = torch.Generator().manual_seed(0)
    out = strong_augment(cifar, gen, CIFAR_MEAN, CIFAR_STD)
    assert out.dtype == torch.float32 and out.shape == cifar.shape and torch.isfinite(out).all()
    lo = (0 - torch.tensor(CIFAR_MEAN)) / torch.tensor(CIFAR_STD)
    hi = (1 - torch.tensor(CIFAR_MEAN)) / torch.tensor(CIFAR_STD)
    assert (out >= lo.view(1, 3, 1, 1) - 1e-6).all() and (out <= hi.view(1, 3, 1, 1) + 1e-6).all()
    assert ((out == 0).all(1).flatten(1).sum(1) >= 64).all()  # each sample has its cutout box
    g = strong_augment(mnist, gen, (0.1307,), (0.3081,))
    assert g.dtype == torch.float32 and g.shape == mnist.shape and torch.isfinite(g).all()
    again = strong_augment(cifar, torch.Generator().manual_seed(0), CIFAR_MEAN, CIFAR_STD)
    assert torch.equal(out, again)


def test_rotation_reference_is_counter_clockwise() -> None:
    """Sanity of the reference itself: a +90 rotation maps the top row onto the left column, reversed."""
    x = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    x[0, 0, 0, :] = torch.arange(1, 9, dtype=torch.uint8)
    out = apply_op("Rotate", x, torch.tensor([90.0]))
    assert torch.equal(out[0, 0, :, 0], torch.arange(8, 0, -1, dtype=torch.uint8))
    assert math.isclose(op_value("Rotate", 30), 30.0)


def test_geometric_ops_on_wide_images_use_pillows_double_path() -> None:
    """Corners beyond +-32768 px make Pillow leave 16.16 fixed point for doubles; follow it there too."""
    x = torch.randint(0, 256, (3, 3, 4, 33000), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    for name, vals in [
        ("ShearY", [1e-4, -7e-5, 3e-5]),
        ("ShearX", [0.3, -0.5, 0.25]),
        ("Rotate", [1e-3, -2e-3, 5e-4]),
    ]:
        got = apply_op(name, x, torch.tensor(vals, dtype=torch.float64))
        assert torch.equal(got, pil_batch(name, x, vals)), name
        assert (got != 0).float().mean() > 0.5
