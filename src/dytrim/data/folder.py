"""Your own images: class folders (labeled, test) and a folder of unlabeled images, decoded once and cached.

Layout: `labeled_dir/<class>/**/<image>` (the sub-folder names, sorted, are the class names), `unlabeled_dir/**`
(any layout), `test_dir` laid out like `labeled_dir` or else a stratified hold-out of the labeled images. Every
image is converted to RGB (or grayscale), its shorter side resized and centre-cropped to a square, and the uint8
arrays are cached under a key of the files' paths, sizes and modification times, so later runs skip decoding.
Unreadable, zero-byte or too large image files (see data/images.py for the decoding rules and the budget) are
skipped and reported with a count; file names that are not valid UTF-8 are read and reported with \\xNN escapes.
Structural problems (no class folders, an empty class, a single class, test classes that differ, a class folder
name that is not valid UTF-8) stop with a DataError naming the folder and the fix.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dytrim.config import DataConfig
from dytrim.data.arrays import ImageArrays
from dytrim.data.cache import cache_root, decode_images
from dytrim.data.errors import DataError
from dytrim.data.images import IMAGE_SUFFIXES, TOO_LARGE, is_image_file, list_images, path_text
from dytrim.data.longtail import Split

HOLDOUT_SEED = 0  # the hold-out draw is fixed: runs with different seeds share one test set
_EXAMPLES = 10  # skipped files listed by name in reports


# ----------------------------------------------------------------------------- folder structure


def class_tree(root: Path, key: str) -> tuple[list[str], list[list[Path]]]:
    """Class names (sorted sub-folder names) and each class's image files; stops on structural problems."""
    if not root.is_dir():
        raise DataError(f"{key}: '{root}' is not a folder; point it to a folder with one sub-folder per class")
    entries = sorted(e for e in root.iterdir() if not e.name.startswith("."))
    subdirs = [e for e in entries if e.is_dir()]
    loose = [e for e in entries if e.is_file() and is_image_file(e)]
    if not subdirs:
        held = f" (it holds {len(loose)} images directly)" if loose else ""
        raise DataError(
            f"{key}: '{root}' has no class sub-folders{held}; put each class's images in a sub-folder named "
            f"after the class, e.g. {root / 'cat' / 'img001.png'}"
        )
    if loose:
        raise DataError(
            f"{key}: '{root}' holds {len(loose)} images outside the class sub-folders (e.g. '{loose[0].name}'); "
            "move each into the sub-folder of its class, or out of this folder"
        )
    undecodable = [d for d in subdirs if path_text(d.name) != d.name]
    if undecodable:
        raise DataError(
            f"{key}: class folder name '{path_text(undecodable[0].name)}' in '{path_text(root)}' is not valid UTF-8 "
            "text (class names go into data.json, CSV files and figures); rename the folder"
        )
    files = [list_images(d) for d in subdirs]
    empty = [d for d, f in zip(subdirs, files, strict=True) if not f]
    if empty:
        more = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
        raise DataError(
            f"{key}: class folder '{empty[0]}'{more} holds no images ({', '.join(IMAGE_SUFFIXES)}); "
            "add images to it or remove the folder"
        )
    if len(subdirs) < 2:
        raise DataError(
            f"{key}: '{root}' has a single class ('{subdirs[0].name}'); a classifier needs at least two class "
            "sub-folders"
        )
    return [d.name for d in subdirs], files


def read_class_tree(
    root: Path, key: str, size: tuple[int, int], channels: int, cache_dir: Path | None
) -> tuple[list[str], np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """Decode a class-folder tree: (classes, x uint8 NHWC, y int64, skipped files). A class left with no
    readable image stops with a DataError."""
    classes, files = class_tree(root, key)
    flat = [p for f in files for p in f]
    labels = np.concatenate([np.full(len(f), c, dtype=np.int64) for c, f in enumerate(files)])
    dec = decode_images(flat, size, channels, cache_dir, desc=root.name)
    y = labels[dec.ok]
    counts = np.bincount(y, minlength=len(classes))
    if (counts == 0).any():
        c = int(np.flatnonzero(counts == 0)[0])
        bad = dict(dec.skipped)[path_text(files[c][0])]  # every file of the class was skipped
        raise DataError(
            f"{key}: none of the {len(files[c])} image files in class folder '{root / classes[c]}' can be read "
            f"(e.g. {bad}); replace them or remove the folder"
        )
    return classes, dec.x, y, dec.skipped


def read_unlabeled(
    root: Path, classes: list[str], size: tuple[int, int], channels: int, cache_dir: Path | None
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """Decode every image under `root`: (x, y, skipped). y is -1 (unknown) unless every image sits in a
    sub-folder named after a class; those labels are used only for reporting (pseudo_acc, counts)."""
    if not root.is_dir():
        raise DataError(f"data.unlabeled_dir: '{root}' is not a folder; point it to a folder of images (any layout)")
    files = list_images(root)
    if not files:
        raise DataError(
            f"data.unlabeled_dir: '{root}' holds no images ({', '.join(IMAGE_SUFFIXES)}); add images, or leave "
            "data.unlabeled_dir empty"
        )
    index = {name: i for i, name in enumerate(classes)}
    tops = [p.relative_to(root).parts for p in files]
    known = all(len(t) >= 2 and t[0] in index for t in tops)
    labels = np.array([index[t[0]] if known else -1 for t in tops], dtype=np.int64)
    dec = decode_images(files, size, channels, cache_dir, desc=root.name)
    if not dec.ok.any():
        raise DataError(f"data.unlabeled_dir: none of the {len(files)} image files under '{root}' can be read "
                        f"(e.g. {dec.skipped[0][0]}: {dec.skipped[0][1]})")
    return dec.x, labels[dec.ok], dec.skipped


def stratified_holdout(y: np.ndarray, fraction: float, classes: list[str]) -> np.ndarray:
    """Boolean test mask: round(fraction * n_c) images of each class (at least 1, leaving at least 1 to train on),
    drawn with a fixed seed so that every run sees the same test set."""
    rng = np.random.default_rng(HOLDOUT_SEED)
    test = np.zeros(len(y), dtype=bool)
    for c, name in enumerate(classes):
        idx = np.flatnonzero(y == c)
        if len(idx) < 2:
            raise DataError(
                f"data.holdout: class '{name}' has {len(idx)} readable labeled image, so none can be held out "
                "for testing; add images to it, or give a separate test folder with data.test_dir"
            )
        k = min(len(idx) - 1, max(1, int(fraction * len(idx) + 0.5)))
        test[rng.permutation(idx)[:k]] = True
    return test


# ----------------------------------------------------------------------------- the data source


@dataclass(frozen=True, eq=False)
class FolderArrays(ImageArrays):
    """ImageArrays of a folder source: x_train holds the labeled training images, then the unlabeled ones."""

    n_labeled: int
    info: dict[str, Any]


def _report_skipped(skipped: list[tuple[str, str]]) -> dict[str, Any]:
    """Print one warning for all skipped files and return the summary kept in the data's info."""
    if not skipped:
        return {"count": 0, "examples": []}
    zero = sum(r == "zero-byte file" for _, r in skipped)
    large = sum(r.startswith(TOO_LARGE) for _, r in skipped)
    lines = "\n".join(f"  {p}: {r}" for p, r in skipped[:_EXAMPLES])
    more = f"\n  ... and {len(skipped) - _EXAMPLES} more" if len(skipped) > _EXAMPLES else ""
    print(f"dytrim: warning: skipped {len(skipped)} unreadable image files ({zero} zero-byte, {large} too large, "
          f"{len(skipped) - zero - large} that cannot be decoded):\n{lines}{more}", file=sys.stderr)
    examples = [{"path": p, "reason": r} for p, r in skipped[:_EXAMPLES]]
    return {"count": len(skipped), "zero_byte": zero, "too_large": large, "examples": examples}


def read_folder_source(cfg: DataConfig) -> FolderArrays:
    """Read labeled, unlabeled and test folders (or the hold-out) into one FolderArrays."""
    size, ch = (cfg.image_size, cfg.image_size), cfg.channels
    cache = cache_root(cfg) / "folders"
    lb_root = Path(cfg.labeled_dir).expanduser()
    classes, x_lb, y_lb, skipped = read_class_tree(lb_root, "data.labeled_dir", size, ch, cache)
    if cfg.test_dir:
        test_root = Path(cfg.test_dir).expanduser()
        t_classes, x_te, y_te, t_skipped = read_class_tree(test_root, "data.test_dir", size, ch, cache)
        if t_classes != classes:
            missing, extra = sorted(set(classes) - set(t_classes)), sorted(set(t_classes) - set(classes))
            raise DataError(
                f"data.test_dir: its classes differ from data.labeled_dir's (missing: {missing or 'none'}; "
                f"extra: {extra or 'none'}); give '{test_root}' exactly the class sub-folders of '{lb_root}'"
            )
        skipped += t_skipped
        test_source = f"data.test_dir ({path_text(test_root)})"
    else:
        test = stratified_holdout(y_lb, cfg.holdout, classes)
        x_te, y_te, x_lb, y_lb = x_lb[test], y_lb[test], x_lb[~test], y_lb[~test]
        test_source = (f"stratified hold-out of {cfg.holdout:.0%} of each class's labeled images (at least one; "
                       "a fixed draw, the same for every seed), not used for training")
    if cfg.unlabeled_dir:
        x_u, y_u, u_skipped = read_unlabeled(Path(cfg.unlabeled_dir).expanduser(), classes, size, ch, cache)
        skipped += u_skipped
    else:
        x_u, y_u = np.empty((0, *size, ch), dtype=np.uint8), np.empty(0, dtype=np.int64)
    info = {
        "labeled_dir": path_text(lb_root),
        "unlabeled_dir": path_text(cfg.unlabeled_dir) if cfg.unlabeled_dir else None,
        "test": test_source,
        "image_size": cfg.image_size,
        "channels": ch,
        "unlabeled_labels": "unknown: ignore pseudo_acc in metrics.jsonl (measured only with class-named sub-folders)"
        if (y_u < 0).any() else "from class-named sub-folders (reporting only: pseudo_acc)",
        "skipped_files": _report_skipped(skipped),
        "cache_dir": path_text(cache),
    }
    return FolderArrays(
        x_train=np.concatenate([x_lb, x_u]),
        y_train=np.concatenate([y_lb, y_u]),
        x_test=x_te,
        y_test=y_te,
        classes=classes,
        n_labeled=len(y_lb),
        info=info,
    )


def folder_split(cfg: DataConfig, arrays: ImageArrays, seed: int) -> Split:
    """The folders are the split: labeled = the labeled images; unlabeled = the unlabeled folder, plus the labeled
    images with data.pool=paper (as the reference pools). Unknown unlabeled labels give empty ulb_counts."""
    assert isinstance(arrays, FolderArrays)
    n_lb, n = arrays.n_labeled, len(arrays.y_train)
    lb_idx = np.arange(n_lb, dtype=np.int64)
    ulb_idx = np.arange(0 if cfg.pool == "paper" else n_lb, n, dtype=np.int64)
    c = len(arrays.classes)
    y_u = arrays.y_train[ulb_idx]
    return Split(
        lb_idx=lb_idx,
        ulb_idx=ulb_idx,
        lb_counts=np.bincount(arrays.y_train[:n_lb], minlength=c).tolist(),
        ulb_counts=np.bincount(y_u, minlength=c).tolist() if (y_u >= 0).all() else [],
    )


def channel_stats(x: np.ndarray, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 NHWC images in [0, 1], rounded to 4 digits (the Normalize constants)."""
    c = x.shape[-1]
    s, s2, n = np.zeros(c), np.zeros(c), 0
    for i in range(0, len(x), chunk):
        b = x[i : i + chunk].reshape(-1, c).astype(np.float64) / 255.0
        s += b.sum(0)
        s2 += (b * b).sum(0)
        n += len(b)
    mean = s / max(n, 1)
    std = np.sqrt(np.maximum(s2 / max(n, 1) - mean**2, 0.0))
    std = np.where(std > 1e-3, std, 1.0)  # a constant channel: leave its scale alone
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def describe(data: Any, pool: str) -> dict[str, Any]:
    """`dytrim data info` for a folder source: per-class counts (by name), the estimated gamma_l and the facts."""
    counts = data.counts()
    lb = counts["labeled"]
    head, tail = int(np.argmax(lb)), int(np.argmin(lb))
    per_class = {
        name: {"labeled": lb[i], "test": counts["test"][i], **({"unlabeled": counts["unlabeled"][i]}
                                                             if counts["unlabeled"] else {})}
        for i, name in enumerate(data.classes)
    }
    return {
        "data": "folder",
        "classes": data.classes,
        "per_class": per_class,
        "total": {
            "labeled": int(sum(lb)),
            "unlabeled_folder": len(data.y_train) - len(data.lb_idx),
            "unlabeled_pool": len(data.ulb_idx),
            "test": int(sum(counts["test"])),
        },
        "pool": f"{pool}: the unlabeled pool is the unlabeled folder"
        + (" plus the labeled training images" if pool == "paper" else ""),
        "imbalance": {
            "gamma_l_estimated": round(lb[head] / max(lb[tail], 1), 2),
            "head": f"{data.classes[head]} ({lb[head]})",
            "tail": f"{data.classes[tail]} ({lb[tail]})",
        },
        "normalize": {"mean": list(data.mean), "std": list(data.std)},
        **data.info,
    }
