"""Data readers: the real shared files, synthetic files in the original formats, and every error path."""

from __future__ import annotations

import gzip
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from dytrim.data import integrity
from dytrim.data.arrays import ImageArrays
from dytrim.data.cifar import CIFAR10_CLASSES, CIFAR100_CLASSES, read_cifar
from dytrim.data.errors import DataError
from dytrim.data.integrity import manifest_sha256, sha256_of, verify_file
from dytrim.data.mnist import FASHION_MNIST_CLASSES, MNIST10K_SHA256, MNIST_CLASSES, read_mnist, read_mnist10k

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _shared(name: str) -> Path:
    p = SHARED / name
    if not p.is_file():
        pytest.skip(f"real data file {p} is not on this machine (the shared data folder is absent)")
    return p


MNIST10K_COUNTS = [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]


# ------------------------------------------------------------------------------------------------
# real data


@pytest.fixture(scope="module")
def cifar10() -> ImageArrays:
    return read_cifar(_shared("cifar10.npz"), num_classes=10)


@pytest.fixture(scope="module")
def mnist() -> ImageArrays:
    return read_mnist(_shared("mnist.npz"))


def test_real_cifar10(cifar10: ImageArrays):
    a = cifar10
    assert a.x_train.shape == (50000, 32, 32, 3) and a.x_test.shape == (10000, 32, 32, 3)
    assert a.x_train.dtype == np.uint8 and a.y_train.dtype == np.int64 and a.y_test.dtype == np.int64
    assert a.y_train[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert a.y_test[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert np.bincount(a.y_train).tolist() == [5000] * 10
    assert np.bincount(a.y_test).tolist() == [1000] * 10
    assert a.classes == CIFAR10_CLASSES and a.num_classes == 10 and a.image_shape == (32, 32, 3)


def test_real_mnist(mnist: ImageArrays):
    assert mnist.x_train.shape == (60000, 28, 28, 1) and mnist.x_test.shape == (10000, 28, 28, 1)
    assert mnist.y_train.dtype == np.int64
    assert np.bincount(mnist.y_train).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(mnist.y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert mnist.classes == MNIST_CLASSES


def test_real_manifest_hashes_pass():
    p = _shared("mnist.npz")
    assert manifest_sha256(p) == "7d42e86ac861c20acedc8b9fc4c2400535d3d1e3871b755bd29ed57099cf2bb2"
    assert verify_file(p) == manifest_sha256(p)
    assert manifest_sha256(_shared("mnist10k.npz")) == MNIST10K_SHA256
    assert manifest_sha256(_shared("cifar10.npz")).startswith("a44cc18e")


def test_embedded_mnist10k():
    x, y = read_mnist10k()
    assert x.shape == (10000, 28, 28, 1) and x.dtype == np.uint8 and y.dtype == np.int64
    assert np.bincount(y).tolist() == MNIST10K_COUNTS
    assert np.all(np.diff(y) >= 0)  # sorted by class


def test_embedded_mnist10k_is_first_10k_of_mnist(mnist: ImageArrays):
    x, y = read_mnist10k()
    order = np.argsort(mnist.y_train[:10000], kind="stable")
    assert np.array_equal(mnist.y_train[:10000][order], y)
    assert np.array_equal(mnist.x_train[:10000][order], x)


def test_mnist10k_from_a_folder_or_file():
    x1, y1 = read_mnist10k(SHARED if (SHARED / "mnist10k.npz").is_file() else _shared("mnist10k.npz"))
    x2, y2 = read_mnist10k(_shared("mnist10k.npz"))
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2) and x1.shape == (10000, 28, 28, 1)


def test_mnist10k_missing_path(tmp_path: Path):
    with pytest.raises(DataError, match="(?s)mnist10k.npz.*embedded copy"):
        read_mnist10k(tmp_path)


# ------------------------------------------------------------------------------------------------
# synthetic files in the original formats


def _random_set(rng: np.random.Generator, n: int, hwc: tuple[int, int, int], k: int) -> tuple:
    x = rng.integers(0, 256, size=(n, *hwc), dtype=np.uint8)
    y = np.concatenate([np.arange(k), rng.integers(0, k, size=n - k)])  # every class present
    return x, y


def _py2_style_pickle(obj: object, path: Path) -> None:
    """Pickle like the official (Python 2, numpy 1) batches: protocol 2, numpy.core module paths."""
    raw = pickle.dumps(obj, protocol=2)
    path.write_bytes(raw.replace(b"numpy._core.", b"numpy.core."))


def rows(a: np.ndarray) -> np.ndarray:
    """NHWC images -> official CIFAR rows of 3072 bytes (the R, G, B planes one after another)."""
    return a.transpose(0, 3, 1, 2).reshape(len(a), -1)


def _write_cifar_batches(
    root: Path, x: np.ndarray, y: np.ndarray, xt: np.ndarray, yt: np.ndarray, k: int
) -> Path:
    if k == 10:
        d = root / "cifar-10-batches-py"
        d.mkdir(parents=True)
        for i, part in enumerate(np.array_split(np.arange(len(x)), 5), start=1):
            _py2_style_pickle(
                {b"batch_label": b"training batch", b"labels": y[part].tolist(), b"data": rows(x[part])},
                d / f"data_batch_{i}",
            )
        _py2_style_pickle(
            {b"batch_label": b"testing batch", b"labels": yt.tolist(), b"data": rows(xt)}, d / "test_batch"
        )
        names = [c.encode() for c in CIFAR10_CLASSES]
        _py2_style_pickle(
            {b"label_names": names, b"num_cases_per_batch": 10000, b"num_vis": 3072}, d / "batches.meta"
        )
    else:
        d = root / "cifar-100-python"
        d.mkdir(parents=True)
        for name, xs, ys in (("train", x, y), ("test", xt, yt)):
            _py2_style_pickle(
                {b"fine_labels": ys.tolist(), b"coarse_labels": (ys // 5).tolist(), b"data": rows(xs)},
                d / name,
            )
        names = [c.encode() for c in CIFAR100_CLASSES]
        _py2_style_pickle({b"fine_label_names": names, b"coarse_label_names": [b"c"] * 20}, d / "meta")
    return d


@pytest.mark.parametrize("k", [10, 100])
def test_cifar_python_batches_round_trip(tmp_path: Path, k: int):
    rng = np.random.default_rng(k)
    x, y = _random_set(rng, 2 * k + 5, (32, 32, 3), k)
    xt, yt = _random_set(rng, k + 3, (32, 32, 3), k)
    folder = _write_cifar_batches(tmp_path / "root", x, y, xt, yt, k)
    np.savez(tmp_path / "c.npz", x_train=x, y_train=y.astype(np.uint8), x_test=xt, y_test=yt.astype(np.uint8))
    via_npz = read_cifar(tmp_path / "c.npz", num_classes=k)
    for path in (tmp_path / "root", folder):  # the root holding the folder, or the folder itself
        a = read_cifar(path, num_classes=k)
        for field in ("x_train", "y_train", "x_test", "y_test"):
            got, want = getattr(a, field), getattr(via_npz, field)
            assert got.dtype == want.dtype and np.array_equal(got, want), field
        assert a.classes == via_npz.classes == (CIFAR10_CLASSES if k == 10 else CIFAR100_CLASSES)
    assert np.array_equal(via_npz.x_train, x) and np.array_equal(via_npz.y_train, y)


def test_cifar_pickle_with_foreign_global_is_refused(tmp_path: Path):
    rng = np.random.default_rng(0)
    x, y = _random_set(rng, 20, (32, 32, 3), 10)
    folder = _write_cifar_batches(tmp_path, x, y, x, y, 10)
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": shutil.which}, protocol=2))
    with pytest.raises(DataError, match="data_batch_3.*not allowed"):
        read_cifar(tmp_path)


def _idx(arr: np.ndarray, magic: int) -> bytes:
    return struct.pack(f">I{arr.ndim}I", magic, *arr.shape) + arr.astype(np.uint8).tobytes()


_IDX_NAMES = {
    "x_train": ("train-images-idx3-ubyte", 2051),
    "y_train": ("train-labels-idx1-ubyte", 2049),
    "x_test": ("t10k-images-idx3-ubyte", 2051),
    "y_test": ("t10k-labels-idx1-ubyte", 2049),
}


def _write_idx(d: Path, arrays: dict[str, np.ndarray], gz: bool) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for key, (name, magic) in _IDX_NAMES.items():
        a = arrays[key][..., 0] if key.startswith("x") else arrays[key]
        data = _idx(a, magic)
        if gz:
            (d / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (d / name).write_bytes(data)


@pytest.fixture()
def mnist_like(tmp_path: Path) -> tuple[dict[str, np.ndarray], ImageArrays]:
    rng = np.random.default_rng(3)
    x, y = _random_set(rng, 30, (28, 28, 1), 10)
    xt, yt = _random_set(rng, 12, (28, 28, 1), 10)
    arrays = {"x_train": x, "y_train": y, "x_test": xt, "y_test": yt}
    np.savez(tmp_path / "m.npz", **{k: (v if k[0] == "x" else v.astype(np.uint8)) for k, v in arrays.items()})
    return arrays, read_mnist(tmp_path / "m.npz")


def _same(a: ImageArrays, b: ImageArrays) -> None:
    for field in ("x_train", "y_train", "x_test", "y_test"):
        got, want = getattr(a, field), getattr(b, field)
        assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want), field


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_round_trip(tmp_path: Path, mnist_like, gz: bool):
    arrays, via_npz = mnist_like
    assert via_npz.x_train.shape == (30, 28, 28, 1) and via_npz.y_train.dtype == np.int64
    _write_idx(tmp_path / "plain", arrays, gz)
    a = read_mnist(tmp_path / "plain")
    _same(a, via_npz)
    assert a.classes == MNIST_CLASSES


def test_mnist_torchvision_layouts(tmp_path: Path, mnist_like):
    arrays, via_npz = mnist_like
    _write_idx(tmp_path / "tv" / "MNIST" / "raw", arrays, gz=True)
    _write_idx(tmp_path / "tv" / "FashionMNIST" / "raw", arrays, gz=False)
    for p in (tmp_path / "tv", tmp_path / "tv" / "MNIST", tmp_path / "tv" / "MNIST" / "raw"):
        a = read_mnist(p)
        _same(a, via_npz)
        assert a.classes == MNIST_CLASSES
    for p in (tmp_path / "tv" / "FashionMNIST", tmp_path / "tv" / "FashionMNIST" / "raw"):
        a = read_mnist(p)
        _same(a, via_npz)
        assert a.classes == FASHION_MNIST_CLASSES


def test_mnist_npz_3d_images_gain_a_channel(tmp_path: Path, mnist_like):
    arrays, via_npz = mnist_like
    np.savez(tmp_path / "m3.npz", **{k: (v[..., 0] if k[0] == "x" else v) for k, v in arrays.items()})
    _same(read_mnist(tmp_path / "m3.npz"), via_npz)


# ------------------------------------------------------------------------------------------------
# hashes and manifests


def _manifest(d: Path, name: str, sha: str) -> None:
    (d / "MANIFEST.md").write_text(
        f"# Data\n\n## other.npz\n- sha256: {'0' * 64}\n\n## {name}\n- arrays: whatever\n- sha256: {sha}\n"
    )


def test_sha256_mismatch_names_both_hashes(tmp_path: Path, mnist_like):
    p = tmp_path / "m.npz"
    actual = sha256_of(p)
    wrong = "ab" * 32
    _manifest(tmp_path, "m.npz", wrong)
    assert manifest_sha256(p) == wrong
    with pytest.raises(DataError) as info:
        read_mnist(p)
    msg = str(info.value)
    assert str(p) in msg and wrong in msg and actual in msg and "re-download" in msg and "MANIFEST.md" in msg
    _manifest(tmp_path, "m.npz", actual.upper())
    assert verify_file(p) == actual
    read_mnist(p)  # passes now
    read_mnist(p, verify=False)


def test_verify_uses_cache_and_notices_changes(tmp_path: Path, monkeypatch):
    p = tmp_path / "f.bin"
    p.write_bytes(b"hello")
    _manifest(tmp_path, "f.bin", sha256_of(p))
    calls = []
    real = integrity.sha256_of
    monkeypatch.setattr(integrity, "sha256_of", lambda q: calls.append(q) or real(q))
    verify_file(p)
    verify_file(p)
    assert len(calls) == 1  # hashed once per (path, size, mtime)
    p.write_bytes(b"hello, changed")
    with pytest.raises(DataError, match="sha256 mismatch"):
        verify_file(p)


def test_no_manifest_or_no_entry(tmp_path: Path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"x")
    assert manifest_sha256(p) is None and verify_file(p) is None
    _manifest(tmp_path, "g.bin", "cd" * 32)
    assert manifest_sha256(p) is None and verify_file(p) is None


# ------------------------------------------------------------------------------------------------
# error paths


def test_missing_paths(tmp_path: Path):
    with pytest.raises(DataError, match="Looked for"):
        read_cifar(tmp_path / "nothing")
    with pytest.raises(DataError, match="cifar-10-batches-py.*data_batch_1"):
        read_cifar(tmp_path)
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        read_mnist(tmp_path)
    with pytest.raises(ValueError, match="10 or 100"):
        read_cifar(tmp_path, num_classes=20)


def test_missing_one_cifar_batch(tmp_path: Path):
    rng = np.random.default_rng(0)
    x, y = _random_set(rng, 20, (32, 32, 3), 10)
    folder = _write_cifar_batches(tmp_path, x, y, x, y, 10)
    (folder / "test_batch").unlink()
    with pytest.raises(DataError, match="test_batch"):
        read_cifar(folder)


def test_truncated_npz(tmp_path: Path, mnist_like):
    data = (tmp_path / "m.npz").read_bytes()
    for cut in (len(data) // 2, len(data) - 30, 100):
        (tmp_path / "t.npz").write_bytes(data[:cut])
        with pytest.raises(DataError, match="t.npz.*truncated or corrupt"):
            read_mnist(tmp_path / "t.npz")


def test_corrupt_npz_member(tmp_path: Path):
    """A compressed npz with a flipped byte in a member's data fails its CRC/zlib check."""
    x = np.arange(200 * 32 * 32 * 3, dtype=np.uint32).astype(np.uint8).reshape(200, 32, 32, 3)
    y = np.arange(200) % 10
    np.savez_compressed(tmp_path / "c.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    data = bytearray((tmp_path / "c.npz").read_bytes())
    data[len(data) // 3] ^= 0xFF
    (tmp_path / "c.npz").write_bytes(bytes(data))
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_cifar(tmp_path / "c.npz")


def test_truncated_and_bad_idx(tmp_path: Path, mnist_like):
    arrays, _ = mnist_like
    _write_idx(tmp_path / "a", arrays, gz=False)
    f = tmp_path / "a" / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-7])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*truncated"):
        read_mnist(tmp_path / "a")
    _write_idx(tmp_path / "b", arrays, gz=False)
    shutil.copy(tmp_path / "b" / "t10k-labels-idx1-ubyte", tmp_path / "b" / "t10k-images-idx3-ubyte")
    with pytest.raises(DataError, match="magic number 2049, expected 2051"):
        read_mnist(tmp_path / "b")
    _write_idx(tmp_path / "c", arrays, gz=True)
    g = tmp_path / "c" / "train-labels-idx1-ubyte.gz"
    g.write_bytes(g.read_bytes()[:-12])
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz.*truncated or corrupt"):
        read_mnist(tmp_path / "c")


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def test_bad_shapes_dtypes_and_labels(tmp_path: Path):
    rng = np.random.default_rng(0)
    x, y = _random_set(rng, 20, (32, 32, 3), 10)
    ok = {"x_train": x, "y_train": y, "x_test": x[:5], "y_test": y[:5]}
    read_cifar(_npz(tmp_path / "ok.npz", **ok))
    cases = {
        "float images": ({"x_train": x.astype(np.float32)}, "uint8"),
        "not 4-D": ({"x_train": x.reshape(20, -1)}, "4-D"),
        "NCHW": ({"x_train": np.ascontiguousarray(x.transpose(0, 3, 1, 2))}, "NCHW"),
        "label count": ({"y_train": y[:19]}, "19 labels for 20 images"),
        "label range": ({"y_test": np.array([0, 1, 2, 3, 10])}, "label 10 is outside"),
        "negative label": ({"y_test": np.array([0, 1, -1, 3, 4])}, "label -1 is outside"),
        "float labels": ({"y_train": y.astype(np.float64)}, "integers"),
        "2-D labels": ({"y_train": y[:, None]}, "1-D"),
        "test shape": ({"x_test": x[:5, :16]}, "differ in shape"),
    }
    for case, (override, match) in cases.items():
        p = _npz(tmp_path / f"{case.replace(' ', '_')}.npz", **{**ok, **override})
        with pytest.raises(DataError, match=match) as info:
            read_cifar(p)
        assert p.name in str(info.value), case
    with pytest.raises(DataError, match="missing arrays \\['y_test'\\]"):
        read_cifar(_npz(tmp_path / "keys.npz", x_train=x, y_train=y, x_test=x))
    with pytest.raises(DataError, match="cover 10 of 100 classes"):
        read_cifar(tmp_path / "ok.npz", num_classes=100)


def test_cifar_batch_with_out_of_range_label(tmp_path: Path):
    rng = np.random.default_rng(0)
    x, y = _random_set(rng, 20, (32, 32, 3), 10)
    yt = y.copy()
    yt[3] = 10
    _write_cifar_batches(tmp_path, x, y, x, yt, 10)
    with pytest.raises(DataError, match="y_test.*label 10 is outside \\[0, 10\\)"):
        read_cifar(tmp_path)


def test_idx_labels_out_of_range(tmp_path: Path, mnist_like):
    arrays, _ = mnist_like
    bad = dict(arrays, y_train=np.where(arrays["y_train"] == 9, 12, arrays["y_train"]))
    _write_idx(tmp_path / "d", bad, gz=False)
    with pytest.raises(DataError, match="label 12 is outside"):
        read_mnist(tmp_path / "d")
