"""Image decoding keeps each Pillow mode's information (checked against numpy), refuses images over the decoded-size
budget before decoding, and reads file names that are not valid UTF-8 in `data info`, `train` and `predict`."""

from __future__ import annotations

import csv
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_folder import write_tree

from dytrim.cli import main
from dytrim.config import DataConfig
from dytrim.data.cache import decode_images
from dytrim.data.errors import DataError
from dytrim.data.folder import read_folder_source
from dytrim.data.images import BadImage, load_image

S = 16  # square images of this size are decoded without resizing, so every pixel can be checked
RNG = np.random.default_rng(25)


def _u8(*shape: int) -> np.ndarray:
    return RNG.integers(0, 256, (S, S, *shape) if shape else (S, S), dtype=np.uint8)


def _luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma in Pillow's fixed point (what RGB -> grayscale is documented to be)."""
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)


def _over_black(c: np.ndarray, a: np.ndarray) -> np.ndarray:
    return np.round(c.astype(np.float64) * a.astype(np.float64)[..., None] / 255.0).astype(np.uint8)


def _decode(path: Path, channels: int = 3) -> np.ndarray:
    x = load_image(path, (S, S), channels)
    assert x.shape == (S, S, channels) and x.dtype == np.uint8
    return x


def _save(tmp_path: Path, im: Image.Image, name: str, **kw: object) -> Path:
    im.save(tmp_path / name, **kw)
    return tmp_path / name


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path) -> None:
    v = (np.arange(S * S, dtype=np.uint16).reshape(S, S) * 257)  # 0 .. 65535
    png = _save(tmp_path, Image.fromarray(v), "g16.png")
    assert Image.open(png).mode == "I;16"
    big = _save(tmp_path, Image.frombytes("I;16B", (S, S), v.astype(">u2").tobytes()), "g16b.tif")
    assert Image.open(big).mode == "I;16B"
    for path in (png, big):
        gray = _decode(path, 1)[..., 0]
        assert len(np.unique(gray)) == 256  # convert("L") left only 0..255 of 65536 levels: 0 and 255 almost all
        assert np.array_equal(gray, (v >> 8).astype(np.uint8))
        assert np.array_equal(_decode(path, 3), np.repeat(gray[..., None], 3, -1))


def test_32_bit_integer_is_clipped_to_16_bits_then_scaled(tmp_path) -> None:
    v = RNG.integers(-1000, 70000, (S, S)).astype(np.int32)
    path = _save(tmp_path, Image.fromarray(v), "i32.tif")
    assert Image.open(path).mode == "I"
    assert np.array_equal(_decode(path, 1)[..., 0], (np.clip(v, 0, 65535) >> 8).astype(np.uint8))


def test_float_is_stretched_min_to_max_and_nan_is_zero(tmp_path) -> None:
    v = RNG.uniform(0.2, 0.7, (S, S)).astype(np.float32)  # a [0, 1] float image: Pillow's clip gave all 0 or 1
    v[0, 0] = np.nan
    path = _save(tmp_path, Image.fromarray(v), "f.tif")
    assert Image.open(path).mode == "F"
    finite = v[np.isfinite(v)].astype(np.float64)
    lo, hi = finite.min(), finite.max()
    want = np.round((np.nan_to_num(v.astype(np.float64), nan=lo) - lo) / (hi - lo) * 255).astype(np.uint8)
    want[0, 0] = 0
    got = _decode(path, 1)[..., 0]
    assert np.array_equal(got, want) and got.max() == 255 and len(np.unique(got)) > 100
    flat = _save(tmp_path, Image.fromarray(np.full((S, S), 3.5, np.float32)), "flat.tif")
    assert not _decode(flat, 1).any()


def test_bilevel_gray_and_rgb(tmp_path) -> None:
    bits = RNG.integers(0, 2, (S, S)).astype(bool)
    path = _save(tmp_path, Image.fromarray(bits), "bits.png")
    assert Image.open(path).mode == "1"
    assert np.array_equal(_decode(path, 1)[..., 0], np.where(bits, 255, 0).astype(np.uint8))
    gray, rgb = _u8(), _u8(3)
    assert np.array_equal(_decode(_save(tmp_path, Image.fromarray(gray), "l.png"), 1)[..., 0], gray)
    path = _save(tmp_path, Image.fromarray(rgb), "rgb.png")
    assert np.array_equal(_decode(path, 3), rgb) and np.array_equal(_decode(path, 1)[..., 0], _luma(rgb))


def test_alpha_is_composited_on_black(tmp_path) -> None:
    rgb, gray, alpha = _u8(3), _u8(), _u8()
    alpha[:4] = 0  # fully transparent rows: 0, whatever colour they hide
    path = _save(tmp_path, Image.fromarray(np.dstack([rgb, alpha])), "rgba.png")
    assert Image.open(path).mode == "RGBA"
    want = _over_black(rgb, alpha)
    assert np.array_equal(_decode(path, 3), want) and not _decode(path, 3)[:4].any()
    assert np.array_equal(_decode(path, 1)[..., 0], _luma(want))
    path = _save(tmp_path, Image.fromarray(np.dstack([gray, alpha])), "la.png")
    assert Image.open(path).mode == "LA"
    assert np.array_equal(_decode(path, 1)[..., 0], _over_black(gray[..., None], alpha)[..., 0])


@pytest.mark.parametrize("fmt", ["png", "gif"])
def test_palette_is_expanded_and_its_transparent_colour_is_black(tmp_path, fmt) -> None:
    palette = RNG.integers(0, 256, (16, 3), dtype=np.uint8)
    palette[0] = (250, 0, 250)  # a magenta key colour, meant to be invisible
    idx = RNG.integers(0, 16, (S, S), dtype=np.uint8)
    im = Image.frombytes("P", (S, S), idx.tobytes())
    im.putpalette(palette.flatten().tolist())
    opaque = _save(tmp_path, im, f"p.{fmt}")
    assert Image.open(opaque).mode == "P"
    assert np.array_equal(_decode(opaque, 3), palette[idx])
    keyed = _save(tmp_path, im, f"pt.{fmt}", transparency=0)
    assert "transparency" in Image.open(keyed).info
    want = palette[idx] * (idx != 0)[..., None]
    assert np.array_equal(_decode(keyed, 3), want)
    assert np.array_equal(_decode(keyed, 1)[..., 0], _luma(want))


def test_cmyk_and_ycbcr_follow_the_documented_conversions(tmp_path) -> None:
    cmyk = _u8(4)
    path = _save(tmp_path, Image.frombytes("CMYK", (S, S), cmyk.tobytes()), "cmyk.tif")
    assert Image.open(path).mode == "CMYK"
    c = cmyk.astype(np.float64)
    want = np.round((255 - c[..., :3]) * (255 - c[..., 3:]) / 255).astype(np.uint8)
    assert np.abs(_decode(path, 3).astype(int) - want).max() <= 1
    ycc = _u8(3)
    path = _save(tmp_path, Image.frombytes("YCbCr", (S, S), ycc.tobytes()), "ycc.tif")
    assert Image.open(path).mode == "YCbCr"
    y, cb, cr = (ycc[..., i].astype(np.float64) for i in range(3))
    rgb = np.stack([y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128),
                    y + 1.772 * (cb - 128)], -1)
    assert np.abs(_decode(path, 3).astype(int) - np.clip(np.round(rgb), 0, 255)).max() <= 1


# ----------------------------------------------------------------------------- the decoded-size budget


def _png_header_only(path: Path, w: int, h: int) -> Path:
    """A PNG that declares w x h RGB pixels but holds almost no data: decoding it fails, its header reads fine."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def test_an_image_over_the_budget_is_refused_from_its_header(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("DYTRIM_MAX_IMAGE_MB", raising=False)
    path = _png_header_only(tmp_path / "huge.png", 13000, 13000)  # 484 MiB decoded, under Pillow's own limit
    with pytest.raises(BadImage, match=r"^too large: 13000x13000 RGB \(3 bands\) is 484 MiB decoded, over the "
                       r"256 MiB budget.*DYTRIM_MAX_IMAGE_MB"):
        load_image(path, (S, S), 3)
    small = _save(tmp_path, Image.fromarray(RNG.integers(0, 256, (600, 600, 3), dtype=np.uint8)), "s.png")
    monkeypatch.setenv("DYTRIM_MAX_IMAGE_MB", "0.5")  # 600 x 600 x 3 bytes = 1.03 MiB
    with pytest.raises(BadImage, match="too large"):
        load_image(small, (S, S), 3)
    monkeypatch.setenv("DYTRIM_MAX_IMAGE_MB", "2")
    assert load_image(small, (S, S), 3).shape == (S, S, 3)
    monkeypatch.setenv("DYTRIM_MAX_IMAGE_MB", "lots")
    with pytest.raises(DataError, match="DYTRIM_MAX_IMAGE_MB: 'lots' is not a positive number"):
        load_image(small, (S, S), 3)


def _cfg(root: Path, tmp: Path) -> DataConfig:
    return DataConfig(name="folder", labeled_dir=str(root / "labeled"), unlabeled_dir=str(root / "unlabeled"),
                      image_size=S, cache_dir=str(tmp / "cache"))


def test_a_folder_skips_and_lists_images_over_the_budget(tmp_path, monkeypatch, capsys) -> None:
    root = write_tree(tmp_path / "tree", corrupt=False)
    Image.fromarray(np.zeros((600, 600, 3), np.uint8)).save(root / "unlabeled" / "big.png")
    monkeypatch.setenv("DYTRIM_MAX_IMAGE_MB", "0.5")
    info = read_folder_source(_cfg(root, tmp_path)).info["skipped_files"]
    assert info["count"] == 1 and info["too_large"] == 1
    assert info["examples"][0]["path"].endswith("big.png") and info["examples"][0]["reason"].startswith("too large")
    assert "(0 zero-byte, 1 too large, 0 that cannot be decoded)" in capsys.readouterr().err
    monkeypatch.setenv("DYTRIM_MAX_IMAGE_MB", "8")  # the budget is part of the cache key: now it is read
    assert read_folder_source(_cfg(root, tmp_path)).info["skipped_files"]["count"] == 0


# ----------------------------------------------------------------------------- file names that are not UTF-8


def _bytes_name(folder: Path, name: bytes) -> Path:
    return Path(os.fsdecode(os.fsencode(folder) + b"/" + name))


def _add_undecodable_names(root: Path) -> None:
    """A readable image and a zero-byte file with non-UTF-8 names, in the labeled and the unlabeled folders."""
    for folder in (root / "labeled" / "zebra", root / "unlabeled"):
        with open(_bytes_name(folder, b"caf\xe9.png"), "wb") as f:
            Image.fromarray(np.full((20, 20, 3), 200, np.uint8)).save(f, "PNG")
        _bytes_name(folder, b"empty\xff.png").write_bytes(b"")


def test_non_utf8_names_are_read_cached_and_listed_escaped(tmp_path, capsys) -> None:
    img = _bytes_name(tmp_path, b"\xff\xfe.png")
    Image.fromarray(np.full((S, S, 3), 7, np.uint8)).save(img, "PNG")
    first = decode_images([img], (S, S), 3, tmp_path / "cache")
    assert first.ok.all() and (first.x == 7).all() and list((tmp_path / "cache").glob("images-*.npz"))
    assert decode_images([img], (S, S), 3, tmp_path / "cache").ok.all()
    root = write_tree(tmp_path / "tree", corrupt=False)
    _add_undecodable_names(root)
    data = read_folder_source(_cfg(root, tmp_path))
    assert len(data.x_train) + len(data.x_test) == 16 + 8 + 4 + 24 + 2  # both café images are used
    paths = sorted(e["path"] for e in data.info["skipped_files"]["examples"])
    assert [p.rsplit("/", 2)[-2:] for p in paths] == [["zebra", "empty\\xff.png"], ["unlabeled", "empty\\xff.png"]]
    json.dumps(data.info, ensure_ascii=False).encode("utf-8")  # summary.json / data info can hold them
    assert "empty\\xff.png: zero-byte file" in capsys.readouterr().err


def test_a_class_folder_name_that_is_not_utf8_is_one_line(tmp_path) -> None:
    root = write_tree(tmp_path / "tree", corrupt=False)
    os.rename(root / "labeled" / "moth", _bytes_name(root / "labeled", b"m\xf6th"))
    with pytest.raises(DataError, match=r"class folder name 'm\\xf6th' .* is not valid UTF-8 text.*rename"):
        read_folder_source(_cfg(root, tmp_path))


def _folder_sets(root: Path, tmp: Path) -> list[str]:
    sets = [f"data.labeled_dir={root / 'labeled'}", f"data.unlabeled_dir={root / 'unlabeled'}",
            f"data.cache_dir={tmp / 'cache'}", f"data.image_size={S}", "data.name=folder"]
    return [a for s in sets for a in ("--set", s)]


def test_data_info_with_non_utf8_names(tmp_path, capsys) -> None:
    root = write_tree(tmp_path / "tree", corrupt=False)
    _add_undecodable_names(root)
    assert main(["data", "info", "--preset", "mnist-lt-fixmatch", *_folder_sets(root, tmp_path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["skipped_files"]["count"] == 2 and info["total"]["unlabeled_folder"] == 25


@pytest.mark.slow
def test_train_and_predict_with_non_utf8_names_and_a_too_large_image(tmp_path, monkeypatch, capsys) -> None:
    root = write_tree(tmp_path / "tree", labeled={"zebra": 8, "ant": 4, "moth": 4}, unlabeled=8, test=2,
                      corrupt=False)
    _add_undecodable_names(root)
    run = tmp_path / "run"
    assert main(["train", "--preset", "mnist-lt-fixmatch", "--out", str(run), *_folder_sets(root, tmp_path),
                 "--set", "train.steps=2", "--set", "train.eval_every=2", "--set", "train.batch_size=4",
                 "--set", "train.threads=1", "--set", "train.progress=false"]) == 0
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert summary["data"]["skipped_files"]["count"] == 2
    Image.fromarray(np.zeros((600, 600, 3), np.uint8)).save(root / "unlabeled" / "big.png")
    monkeypatch.setenv("DYTRIM_MAX_IMAGE_MB", "0.5")
    capsys.readouterr()
    out = tmp_path / "preds.csv"
    assert main(["predict", str(run), str(root / "unlabeled"), "--out", str(out), "--no-progress"]) == 0
    with out.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 9 and any(r["path"].endswith("/unlabeled/caf\\xe9.png") for r in rows)
    err = capsys.readouterr().err
    assert "dytrim: skipped " in err and "empty\\xff.png: zero-byte file" in err
    assert [line for line in err.splitlines() if "big.png" in line][0].endswith(
        "big.png: too large: 600x600 RGB (3 bands) is 1 MiB decoded, over the 0.5 MiB budget for one image; "
        "downscale it, or raise DYTRIM_MAX_IMAGE_MB")
    assert main(["predict", str(run), str(root / "unlabeled" / "big.png")]) == 2
    assert "none of the 1 files could be read" in capsys.readouterr().err
