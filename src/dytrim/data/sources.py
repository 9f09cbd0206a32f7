"""Data sources: name -> real image arrays (+ normalisation constants), and the on-device LT data set."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dytrim.config import ConfigError, DataConfig, register_choices
from dytrim.data.arrays import ImageArrays
from dytrim.data.cifar import read_cifar
from dytrim.data.errors import DataError
from dytrim.data.folder import channel_stats, folder_split, read_folder_source
from dytrim.data.imagenet127 import MEAN as IN127_MEAN
from dytrim.data.imagenet127 import STD as IN127_STD
from dytrim.data.imagenet127 import imagenet127_split, read_imagenet127
from dytrim.data.integrity import recording_files
from dytrim.data.longtail import Split, SplitError, build_split, longtail_counts
from dytrim.data.mnist import FASHION_MNIST_CLASSES, read_mnist, read_mnist10k
from dytrim.data.stl10 import read_stl10, stl10_split
from dytrim.registry import Registry


@dataclass(frozen=True)
class Source:
    """How to find and read one data set, and its normalisation constants."""

    read: Callable[[DataConfig], ImageArrays]
    mean: tuple[float, ...]  # () = computed from the training images at load time (your own folders)
    std: tuple[float, ...]
    shuffle_rule: Callable[[int], bool]  # seed -> shuffle class indices before the split (reference rules)
    split: Callable[[DataConfig, ImageArrays, int], Split] | None = None  # a source's own labeled/unlabeled split


SOURCES: Registry[Source] = Registry("data set")
register_choices("data.name", SOURCES.names)  # the config accepts exactly the registered names


def data_root(cfg: DataConfig) -> Path:
    """The configured root, else $DYTRIM_DATA, else ./data."""
    return Path(cfg.root or os.environ.get("DYTRIM_DATA", "data")).expanduser()


def _find(cfg: DataConfig, candidates: list[str]) -> Path:
    root = data_root(cfg)
    if root.is_file():
        return root
    for name in candidates:
        if (root / name).exists():
            return root / name
    raise DataError(
        f"data.root: no {cfg.name} data under '{root}' (looked for {', '.join(candidates)}). "
        "Set data.root to the folder or file that holds it (for example --set data.root=../shared/data)."
    )


def _mnist10k(cfg: DataConfig) -> ImageArrays:
    """The embedded 10,000 MNIST digits; the last `test_per_class` of each class form the test set."""
    x, y = read_mnist10k(cfg.root or None)
    train, test = [], []
    for c in range(10):
        idx = np.flatnonzero(y == c)
        if cfg.test_per_class >= len(idx):
            raise ConfigError(
                f"data.test_per_class: {cfg.test_per_class} test digits asked for class {c}, "
                f"which has only {len(idx)}; lower it"
            )
        train.append(idx[: len(idx) - cfg.test_per_class])
        test.append(idx[len(idx) - cfg.test_per_class :])
    tr, te = np.concatenate(train), np.concatenate(test)
    return ImageArrays(x[tr], y[tr], x[te], y[te], [str(c) for c in range(10)])


CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
FASHION_MEAN, FASHION_STD = (0.2860,), (0.3530,)

SOURCES.register("cifar10")(
    lambda: Source(
        lambda c: read_cifar(_find(c, ["cifar10.npz", "cifar-10-batches-py"]), num_classes=10),
        CIFAR10_MEAN,
        CIFAR10_STD,
        lambda seed: False,  # reference: no shuffle on CIFAR-10 ("like SAW")
    )
)
SOURCES.register("cifar100")(
    lambda: Source(
        lambda c: read_cifar(_find(c, ["cifar100.npz", "cifar-100-python"]), num_classes=100),
        CIFAR100_MEAN,
        CIFAR100_STD,
        lambda seed: seed != 0,  # reference: shuffle per class only if seed != 0 ("like CoSSL")
    )
)
SOURCES.register("mnist")(
    lambda: Source(
        lambda c: read_mnist(_find(c, ["mnist.npz", "MNIST/raw", "MNIST"])), MNIST_MEAN, MNIST_STD, lambda s: False
    )
)
SOURCES.register("fashion_mnist")(
    lambda: Source(
        lambda c: read_mnist(
            _find(c, ["fashion_mnist.npz", "FashionMNIST/raw", "FashionMNIST"]), classes=FASHION_MNIST_CLASSES
        ),
        FASHION_MEAN,
        FASHION_STD,
        lambda s: False,
    )
)
SOURCES.register("mnist10k")(lambda: Source(_mnist10k, MNIST_MEAN, MNIST_STD, lambda s: False))
SOURCES.register("stl10")(
    lambda: Source(
        lambda c: read_stl10(c, data_root(c)),
        CIFAR10_MEAN,  # the reference codes normalise STL-10 with the CIFAR-10 constants
        CIFAR10_STD,
        lambda seed: False,
        split=stl10_split,
    )
)
SOURCES.register("smallimagenet127")(
    lambda: Source(lambda c: read_imagenet127(c, data_root(c)), IN127_MEAN, IN127_STD, lambda seed: False,
                   split=imagenet127_split)
)
SOURCES.register("folder")(lambda: Source(read_folder_source, (), (), lambda s: False, split=folder_split))


@dataclass
class LTData:
    """A long-tailed SSL data set, resident on the device as uint8 NCHW tensors; steps gather indices."""

    name: str
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    x_train: torch.Tensor  # uint8 [N, C, H, W]
    y_train: torch.Tensor  # int64 [N] (unlabeled images' labels are used only for reporting)
    x_test: torch.Tensor
    y_test: torch.Tensor
    split: Split
    lb_idx: torch.Tensor  # int64 [N_l] indices into x_train
    ulb_idx: torch.Tensor  # int64 [N_u]
    eval_idx: torch.Tensor  # int64 indices into x_test used at intermediate evaluations
    info: dict[str, Any] = field(default_factory=dict)  # source facts (folders: test set origin, skipped files)
    files: list[dict[str, str]] = field(default_factory=list)  # data files read: path, sha256, checked_against

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[1])

    def counts(self) -> dict[str, list[int]]:
        """Per-class labeled / unlabeled (true labels) / test counts."""
        c = self.num_classes
        return {
            "labeled": self.split.lb_counts,
            "unlabeled": self.split.ulb_counts,
            "test": torch.bincount(self.y_test, minlength=c).tolist(),
        }


def split_counts(cfg: DataConfig, num_classes: int) -> tuple[list[int], list[int]]:
    """Labeled and unlabeled per-class profiles from the config."""
    lb = longtail_counts(cfg.n1, cfg.imb_ratio_l, num_classes)
    ulb = longtail_counts(cfg.m1, cfg.imb_ratio_u, num_classes, reverse=cfg.reverse_u)
    return lb, ulb


def _stratified_subset(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A fixed class-balanced subset of about n test images (for cheap intermediate evaluations)."""
    if n <= 0 or n >= len(y):
        return np.arange(len(y))
    rng = np.random.default_rng(seed + 7919)
    classes = np.unique(y)
    per = max(1, n // len(classes))
    picks = [rng.permutation(np.flatnonzero(y == c))[:per] for c in classes]
    return np.sort(np.concatenate(picks))


def _to_nchw(x: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(device)


def load_arrays(cfg: DataConfig) -> tuple[ImageArrays, Source]:
    """Read the configured data set from disk (verifying its manifest hash) without splitting."""
    source = SOURCES.create(cfg.name)
    try:
        return source.read(cfg), source
    except DataError as exc:
        if str(exc).startswith("data."):  # already names its key (data.root, data.labeled_dir, ...)
            raise
        raise DataError(f"data.root='{cfg.root}': {exc}") from exc


def _arrays_digest(arrays: ImageArrays, where: str) -> dict[str, str]:
    """Provenance of data with no single file (image folders): sha256 of the decoded arrays actually used."""
    h = hashlib.sha256()
    for a in (arrays.x_train, arrays.y_train, arrays.x_test, arrays.y_test):
        h.update(np.ascontiguousarray(a).tobytes())
    return {"path": where, "sha256": h.hexdigest(), "checked_against": "decoded arrays (x/y train, x/y test)"}


def _check_no_empty_class(cfg: DataConfig, split: Split, classes: list[str]) -> None:
    """A class without labeled images can never be learned from labels; refuse it unless asked for."""
    empty = [c for c, n in enumerate(split.lb_counts) if n == 0]
    if empty and not cfg.allow_empty_classes:
        names = ", ".join(f"{c} ({classes[c]})" for c in empty[:10]) + (" ..." if len(empty) > 10 else "")
        key, fix = {
            "folder": ("data.labeled_dir", "add labeled images to those class folders or lower data.holdout"),
            "smallimagenet127": ("data.root", "the data set's own split labels round(0.1 n_c) images per class"),
        }.get(cfg.name, ("data.n1", "raise data.n1 or lower data.imb_ratio_l (the tail gets int(n1 / gamma_l))"))
        raise ConfigError(
            f"{key}: the split gives {len(empty)} class(es) no labeled image: {names}; labeled per class "
            f"{split.lb_counts}. Fix: {fix}; or set data.allow_empty_classes=true if that is intended"
        )


def load_data(cfg: DataConfig, seed: int, device: torch.device | str = "cpu") -> LTData:
    """Read, split and move to the device. Raises ConfigError naming the key on an impossible split.

    Every data file read is recorded with its sha256 in `files` (image folders: a digest of the decoded
    arrays); a file no MANIFEST.md lists is named in a warning."""
    with recording_files() as files:
        arrays, source = load_arrays(cfg)
    if not files:
        files.append(_arrays_digest(arrays, cfg.labeled_dir or cfg.root or cfg.name))
    if source.split is not None:
        split = source.split(cfg, arrays, seed)
    else:
        lb_counts, ulb_counts = split_counts(cfg, len(arrays.classes))
        shuffle = source.shuffle_rule(seed) if cfg.shuffle is None else cfg.shuffle
        try:
            split = build_split(arrays.y_train, lb_counts, ulb_counts, cfg.pool, seed, shuffle)
        except SplitError as exc:
            raise ConfigError(str(exc)) from exc
    _check_no_empty_class(cfg, split, list(arrays.classes))
    mean, std = (source.mean, source.std) if source.mean else channel_stats(arrays.x_train)
    device = torch.device(device)
    return LTData(
        name=cfg.name,
        classes=list(arrays.classes),
        mean=mean,
        std=std,
        x_train=_to_nchw(arrays.x_train, device),
        y_train=torch.from_numpy(arrays.y_train.astype(np.int64)).to(device),
        x_test=_to_nchw(arrays.x_test, device),
        y_test=torch.from_numpy(arrays.y_test.astype(np.int64)).to(device),
        split=split,
        lb_idx=torch.from_numpy(split.lb_idx).to(device),
        ulb_idx=torch.from_numpy(split.ulb_idx).to(device),
        eval_idx=torch.from_numpy(_stratified_subset(arrays.y_test, cfg.eval_subset, seed)).to(device),
        info=dict(getattr(arrays, "info", {})),
        files=files,
    )
