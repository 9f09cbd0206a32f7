"""The image-folder data source: layout, decoding, skip-and-report, hold-out, cache, clear structural errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dytrim.cli import main
from dytrim.config import ConfigError, DataConfig, load_config
from dytrim.data import cache
from dytrim.data.errors import DataError
from dytrim.data.folder import read_folder_source
from dytrim.data.images import load_image
from dytrim.data.sources import load_data

COLOURS = {"zebra": (220, 40, 40), "ant": (40, 200, 40), "moth": (40, 40, 220)}
LABELED = {"zebra": 16, "ant": 8, "moth": 4}  # long-tailed, and not in alphabetical order
FORMATS = (("png", "PNG"), ("jpg", "JPEG"), ("webp", "WEBP"))


def _image(rng: np.random.Generator, colour: tuple[int, int, int]) -> Image.Image:
    """A noisy solid-colour image of random size (so resizing is exercised)."""
    h, w = int(rng.integers(18, 30)), int(rng.integers(18, 30))
    px = np.clip(np.array(colour) + rng.integers(-30, 30, (h, w, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(px)


def write_tree(root: Path, labeled: dict[str, int] = LABELED, unlabeled: int = 24, test: int = 4,
               corrupt: bool = True, seed: int = 0) -> Path:
    """labeled/<class>/, unlabeled/ (flat, classes mixed), test/<class>/; with a zero-byte and an undecodable
    file among the labeled and the unlabeled images."""
    rng = np.random.default_rng(seed)
    names = list(labeled)
    for split, counts in (("labeled", labeled), ("test", dict.fromkeys(labeled, test))):
        for name, n in counts.items():
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                ext, fmt = FORMATS[i % len(FORMATS)]
                _image(rng, COLOURS[name]).save(d / f"{name}{i:03d}.{ext}", fmt)
    d = root / "unlabeled"
    d.mkdir()
    for i in range(unlabeled):
        _image(rng, COLOURS[names[i % len(names)]]).save(d / f"u{i:03d}.png")
    if corrupt:
        for d in (root / "labeled" / names[0], root / "unlabeled"):
            (d / "empty.png").write_bytes(b"")
            (d / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
        (root / "labeled" / names[0] / "notes.txt").write_text("not an image: ignored")
    return root


def _cfg(root: Path, tmp: Path, **kw: object) -> DataConfig:
    base = {"name": "folder", "labeled_dir": str(root / "labeled"), "unlabeled_dir": str(root / "unlabeled"),
            "image_size": 16, "cache_dir": str(tmp / "cache")}
    return DataConfig(**(base | kw))  # type: ignore[arg-type]


def test_reads_tree_skips_bad_files_and_holds_out(tmp_path, capsys) -> None:
    root = write_tree(tmp_path / "tree")
    cfg = _cfg(root, tmp_path)
    data = load_data(cfg, seed=3)
    assert data.classes == ["ant", "moth", "zebra"]
    assert data.x_train.shape[1:] == (3, 16, 16) and data.x_train.dtype.is_floating_point is False
    # hold-out: round(20%) per class, at least one, removed from training
    assert data.counts()["test"] == [2, 1, 3]
    assert data.split.lb_counts == [6, 3, 13]
    assert data.counts()["unlabeled"] == []  # flat unlabeled folder: labels unknown
    assert len(data.ulb_idx) == 22 + 24  # pool=paper: labeled training images + the unlabeled folder
    assert data.info["skipped_files"]["count"] == 4 and data.info["skipped_files"]["zero_byte"] == 2
    assert "hold-out" in data.info["test"]
    err = capsys.readouterr().err
    assert "skipped 4 unreadable image files" in err and "empty.png: zero-byte file" in err
    # Normalize constants come from the images themselves
    assert len(data.mean) == 3 and all(0 < s <= 1 for s in data.std)
    # the hold-out does not depend on the run seed
    assert (load_data(cfg, seed=0).y_test == data.y_test).all()


def test_test_dir_gray_disjoint_and_known_unlabeled_labels(tmp_path) -> None:
    root = write_tree(tmp_path / "tree", corrupt=False)
    ulb = root / "unlabeled_by_class"
    for name in LABELED:
        (ulb / name).mkdir(parents=True)
        _image(np.random.default_rng(1), COLOURS[name]).save(ulb / name / "x.png")
    data = load_data(_cfg(root, tmp_path, test_dir=str(root / "test"), channels=1, pool="disjoint",
                          unlabeled_dir=str(ulb)), seed=0)
    assert data.x_train.shape[1] == 1 and data.counts()["test"] == [4, 4, 4]
    assert data.split.lb_counts == [8, 4, 16]
    assert data.counts()["unlabeled"] == [1, 1, 1] and len(data.ulb_idx) == 3


def test_cache_makes_the_second_load_skip_decoding(tmp_path, monkeypatch) -> None:
    root = write_tree(tmp_path / "tree")
    cfg = _cfg(root, tmp_path)
    first = read_folder_source(cfg)
    assert list((tmp_path / "cache" / "folders").glob("images-*.npz"))

    def no_decoding(*args: object) -> None:
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(cache, "load_image", no_decoding)
    second = read_folder_source(cfg)
    assert np.array_equal(first.x_train, second.x_train) and np.array_equal(first.y_test, second.y_test)
    assert second.info["skipped_files"]["count"] == 4  # still reported on a cache hit
    (root / "unlabeled" / "u000.png").touch()  # a changed file invalidates its folder's cache entry
    monkeypatch.undo()
    assert read_folder_source(cfg).x_train.shape == first.x_train.shape


def test_load_image_modes_and_centre_crop(tmp_path) -> None:
    wide = np.zeros((10, 30, 3), dtype=np.uint8)
    wide[:, 10:20] = 255  # a white centre third
    Image.fromarray(wide).save(tmp_path / "wide.png")
    Image.fromarray(wide).convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(wide).convert("P").save(tmp_path / "pal.gif")
    for name in ("wide.png", "rgba.png", "pal.gif"):
        x = load_image(tmp_path / name, (16, 16), 3)
        assert x.shape == (16, 16, 3) and x.dtype == np.uint8
        assert x[:, 2:14].min() > 200  # the crop keeps the centre, which is white
    assert load_image(tmp_path / "wide.png", (16, 16), 1).shape == (16, 16, 1)


def _restructure(kind: str, root: Path) -> None:
    lb = root / "labeled"
    if kind == "no_class_folders":
        for d in list(lb.iterdir()):
            for f in d.iterdir():
                f.rename(lb / f"{d.name}_{f.name}")
            d.rmdir()
    elif kind == "loose_images":
        (lb / "ant" / "ant000.png").rename(lb / "stray.png")
    elif kind == "empty_class":
        (lb / "wasp").mkdir()
    elif kind == "single_class":
        for name in ("ant", "moth"):
            for f in (lb / name).iterdir():
                f.unlink()
            (lb / name).rmdir()
    elif kind == "only_bad_files":
        (lb / "wasp").mkdir()
        (lb / "wasp" / "a.png").write_bytes(b"")
    elif kind == "test_classes_differ":
        (root / "test" / "moth").rename(root / "test" / "beetle")
    elif kind == "holdout_one_image":
        for f in sorted((lb / "moth").iterdir())[1:]:
            f.unlink()


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("no_class_folders", "has no class sub-folders (it holds"),
        ("loose_images", "outside the class sub-folders"),
        ("empty_class", "wasp' holds no images"),
        ("single_class", "single class ('zebra')"),
        ("only_bad_files", "none of the 1 image files in class folder"),
        ("test_classes_differ", "missing: ['moth']; extra: ['beetle']"),
        ("holdout_one_image", "class 'moth' has 1 readable labeled image"),
    ],
)
def test_structural_problems_stop_with_a_clear_message(tmp_path, kind, expected) -> None:
    root = write_tree(tmp_path / "tree", corrupt=False)
    _restructure(kind, root)
    test_dir = str(root / "test") if kind == "test_classes_differ" else ""
    with pytest.raises(DataError, match="data.(labeled_dir|test_dir|holdout)") as info:
        load_data(_cfg(root, tmp_path, test_dir=test_dir), seed=0)
    assert expected in str(info.value)


@pytest.mark.parametrize(
    "sets, expected",
    [
        (["data.labeled_dir=/x"], "only read with data.name=folder"),
        (["data.name=folder"], "data.labeled_dir"),
        (["data.name=folder", "data.labeled_dir=/x", "data.holdout=0"], "no test set"),
        (["data.name=folder", "data.labeled_dir=/x", "data.channels=2"], "data.channels"),
        (["data.name=folder", "data.labeled_dir=/x", "data.pool=disjoint"], "needs unlabeled images"),
    ],
)
def test_config_checks(sets, expected) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_config("mnist-lt-fixmatch", sets)


def test_data_info_cli_on_folders(tmp_path, capsys) -> None:
    root = write_tree(tmp_path / "tree")
    rc = main(["data", "info", "--preset", "mnist-lt-fixmatch", "--set", "data.name=folder",
               "--set", f"data.labeled_dir={root / 'labeled'}", "--set", f"data.unlabeled_dir={root / 'unlabeled'}",
               "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set", "data.image_size=16"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    info = json.loads(out)
    assert info["per_class"]["zebra"] == {"labeled": 13, "test": 3}
    assert info["imbalance"]["gamma_l_estimated"] == round(13 / 3, 2)
    assert info["imbalance"]["tail"] == "moth (3)"
    assert info["skipped_files"]["count"] == 4 and "hold-out" in info["test"]
    rc = main(["data", "info", "--preset", "mnist-lt-fixmatch", "--set", "data.name=folder",
               "--set", f"data.labeled_dir={tmp_path / 'nowhere'}"])
    assert rc == 2 and "data.labeled_dir" in capsys.readouterr().err
