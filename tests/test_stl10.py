"""STL-10 binary reader on synthetic files in the exact format: layout, labels, resize, split, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dytrim.cli import main
from dytrim.config import load_config
from dytrim.data.errors import DataError
from dytrim.data.sources import load_data
from dytrim.data.stl10 import SIDE, read_stl_images, resize_stl

# the synthetic STL-10 files have no MANIFEST.md entry by design: their warning is expected here
pytestmark = [pytest.mark.filterwarnings(r"ignore:data file\(s\) without a MANIFEST\.md entry:UserWarning")]


def _write_stl(root: Path, per_class: int = 8, n_test: int = 20, n_unl: int = 30, seed: int = 0) -> dict:
    """Images stored as the STL-10 archive does: per image, 3 channels of 96x96 in column-major order."""
    rng = np.random.default_rng(seed)
    d = root / "stl10_binary"
    d.mkdir(parents=True)
    out = {}
    for name, n, labeled in (("train", 10 * per_class, True), ("test", n_test, True), ("unlabeled", n_unl, False)):
        hwc = rng.integers(0, 256, size=(n, SIDE, SIDE, 3), dtype=np.uint8)
        hwc[:, :48] //= 2  # structure, so a resize has something to keep
        hwc.transpose(0, 3, 2, 1).tofile(d / f"{name}_X.bin")  # NHWC -> N, C, W, H (column-major)
        out[name] = hwc
        if labeled:
            y = (np.arange(n) % 10 + 1).astype(np.uint8)
            y.tofile(d / f"{name}_y.bin")
            out[name + "_y"] = y.astype(np.int64) - 1
    (d / "class_names.txt").write_text("\n".join(["airplane", "bird", "car", "cat", "deer", "dog", "horse",
                                                  "monkey", "ship", "truck"]) + "\n")
    return out


def test_layout_is_column_major(tmp_path) -> None:
    ref = _write_stl(tmp_path)
    raw = read_stl_images(tmp_path / "stl10_binary" / "train_X.bin")
    assert np.array_equal(resize_stl(raw, SIDE), ref["train"])  # no resize: the exact pixels back


def test_resize_close_to_pillow_bilinear(tmp_path) -> None:
    from PIL import Image

    ref = _write_stl(tmp_path)
    ours = resize_stl(read_stl_images(tmp_path / "stl10_binary" / "test_X.bin"), 32)
    pil = np.stack([np.asarray(Image.fromarray(im).resize((32, 32), Image.BILINEAR)) for im in ref["test"]])
    diff = np.abs(ours.astype(int) - pil.astype(int))
    assert diff.max() <= 2 and diff.mean() < 0.6  # torch's antialiased bilinear vs Pillow's: rounding only


def test_split_paper_and_disjoint(tmp_path) -> None:
    ref = _write_stl(tmp_path)
    base = [f"data.root={tmp_path}", "data.name=stl10", f"data.cache_dir={tmp_path / 'cache'}", "data.n1=8",
            "data.imb_ratio_l=4"]
    for pool, n_ulb in (("paper", None), ("disjoint", 30)):
        cfg = load_config("mnist-lt-fixmatch", [*base, f"data.pool={pool}"])
        data = load_data(cfg.data, 0)
        counts = data.split.lb_counts
        assert counts[0] == 8 and counts[-1] == 2
        assert len(data.lb_idx) == sum(counts)
        assert len(data.ulb_idx) == (n_ulb if n_ulb else sum(counts) + 30)
        assert data.x_train.shape[1:] == (3, 32, 32) and len(data.x_test) == 20
        # labeled = the first N_k of each class in file order
        y = ref["train_y"]
        first = [np.flatnonzero(y == k)[:n] for k, n in enumerate(counts)]
        assert sorted(data.lb_idx.tolist()) == sorted(np.concatenate(first).tolist())
        assert (data.y_train[data.ulb_idx] >= -1).all() and int((data.y_train == -1).sum()) == 30


def test_errors_name_file_and_fix(tmp_path) -> None:
    _write_stl(tmp_path)
    bad = tmp_path / "stl10_binary" / "test_X.bin"
    bad.write_bytes(bad.read_bytes()[:1000])
    cfg = load_config("mnist-lt-fixmatch", [f"data.root={tmp_path}", "data.name=stl10",
                                            f"data.cache_dir={tmp_path / 'cache'}", "data.n1=8"])
    with pytest.raises(DataError, match="test_X.bin.*truncated"):
        load_data(cfg.data, 0)
    cfg = load_config("mnist-lt-fixmatch", [f"data.root={tmp_path / 'nowhere'}", "data.name=stl10"])
    with pytest.raises(DataError, match="stl10_binary"):
        load_data(cfg.data, 0)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:the labeled pruning rule:UserWarning")  # DyTrim's reference rule, on purpose
def test_stl10_preset_resolves_and_trains_on_synthetic_files(tmp_path) -> None:
    cfg = load_config("paper-stl10lt-dytrim")
    assert (cfg.data.name, cfg.data.n1, cfg.data.imb_ratio_l, cfg.data.image_size) == ("stl10", 450, 10, 32)
    assert cfg.debias.methods == ["cdmad", "dytrim"] and cfg.optim.ema_wd == 0.01
    root = tmp_path / "data"  # the run directory may not lie inside data.root
    _write_stl(root)
    out = tmp_path / "run"
    rc = main(["train", "--preset", "paper-stl10lt-dytrim", "--set", f"data.root={root}", "--set", "data.n1=8",
               "--set", "data.allow_empty_classes=true",  # n1 8 at gamma 10: the tail class gets int(0.8) = 0
               "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set", "model.name=cnn_small", "--set",
               "train.steps=4", "--set", "train.eval_every=2", "--set", "train.batch_size=4", "--set",
               "train.progress=false", "--set", "debias.start=2", "--out", str(out)])
    assert rc == 0 and (out / "summary.json").exists()
