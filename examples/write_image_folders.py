"""Write MNIST or CIFAR-10 as a long-tailed tree of PNG folders, the layout `data.name=folder` reads.

    OUT/labeled/<class>/*.png   N_k = int(N1 * mu^k) images of class k (head first), gamma = N1 / N_C
    OUT/unlabeled/*.png         M_k images of class k, shuffled, with names that do not give the class away
    OUT/test/<class>/*.png      a balanced test set from the data set's own test split
    OUT/folder.yaml             the data.* keys that point dytrim at these folders (use with --config)

Labeled and unlabeled images come from disjoint parts of the training split. With --corrupt K, K zero-byte and
K undecodable .png files are added to the labeled head class and to the unlabeled folder, to show how they
are skipped and reported. Example (MNIST from the shared data folder, names "zero".."nine"):

    python examples/write_image_folders.py --data mnist --root ../shared/data --out /tmp/mnist-lt-png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from dytrim.data.cifar import CIFAR10_CLASSES, read_cifar
from dytrim.data.longtail import longtail_counts
from dytrim.data.mnist import read_mnist, read_mnist10k

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def load(name: str, root: Path | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Train/test uint8 NHWC arrays and class names of the chosen data set."""
    if name == "mnist10k":  # the 10,000 digits shipped in the package: last 100 per class form the test set
        x, y = read_mnist10k()
        test = np.zeros(len(y), dtype=bool)
        for c in range(10):
            test[np.flatnonzero(y == c)[-100:]] = True
        return x[~test], y[~test], x[test], y[test], DIGIT_NAMES
    if root is None:
        raise SystemExit(f"--root is needed for --data {name} (the folder holding {name}.npz)")
    if name == "mnist":
        a = read_mnist(root / "mnist.npz" if root.is_dir() else root)
        return a.x_train, a.y_train, a.x_test, a.y_test, DIGIT_NAMES
    a = read_cifar(root / "cifar10.npz" if root.is_dir() else root)
    return a.x_train, a.y_train, a.x_test, a.y_test, list(CIFAR10_CLASSES)


def save_png(x: np.ndarray, path: Path) -> None:
    Image.fromarray(x[..., 0] if x.shape[-1] == 1 else x).save(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=["mnist", "cifar10", "mnist10k"], default="mnist")
    p.add_argument("--root", type=Path, help="folder holding mnist.npz / cifar10.npz (not needed for mnist10k)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n1", type=int, default=200, help="labeled images of the head class")
    p.add_argument("--m1", type=int, default=400, help="unlabeled images of the head class")
    p.add_argument("--gamma", type=float, default=50.0, help="imbalance ratio of labeled and unlabeled profiles")
    p.add_argument("--test-per-class", type=int, default=100)
    p.add_argument("--corrupt", type=int, default=0, help="bad files to add to labeled/<head> and unlabeled/")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    x_tr, y_tr, x_te, y_te, names = load(args.data, args.root)
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"--out: '{args.out}' is not empty; choose a new folder")
    rng = np.random.default_rng(args.seed)
    lb_counts = longtail_counts(args.n1, args.gamma, len(names))
    ulb_counts = longtail_counts(args.m1, args.gamma, len(names))
    unlabeled = []
    for c, name in enumerate(names):
        idx = rng.permutation(np.flatnonzero(y_tr == c))
        n, m = lb_counts[c], ulb_counts[c]
        if n + m > len(idx):
            raise SystemExit(f"class {name}: {n} labeled + {m} unlabeled > {len(idx)} images; lower --n1/--m1")
        folder = args.out / "labeled" / name
        folder.mkdir(parents=True)
        for i in idx[:n]:
            save_png(x_tr[i], folder / f"{name}_{i:05d}.png")
        unlabeled += idx[n : n + m].tolist()
        folder = args.out / "test" / name
        folder.mkdir(parents=True)
        for i in np.flatnonzero(y_te == c)[: args.test_per_class]:
            save_png(x_te[i], folder / f"{name}_{i:05d}.png")
    folder = args.out / "unlabeled"
    folder.mkdir(parents=True)
    for k, i in enumerate(rng.permutation(unlabeled)):
        save_png(x_tr[i], folder / f"u_{k:05d}.png")
    for k in range(args.corrupt):
        for bad in (args.out / "labeled" / names[0], folder):
            (bad / f"empty_{k}.png").write_bytes(b"")
            (bad / f"garbage_{k}.png").write_bytes(b"not a png at all " * 8)
    size, channels = x_tr.shape[1], x_tr.shape[3]
    root = args.out.resolve()
    (args.out / "folder.yaml").write_text(
        "data:\n  name: folder\n"
        f"  labeled_dir: {root / 'labeled'}\n  unlabeled_dir: {root / 'unlabeled'}\n  test_dir: {root / 'test'}\n"
        f"  image_size: {size}\n  channels: {channels}\n"
    )
    print(f"wrote {args.out}: labeled {dict(zip(names, lb_counts, strict=True))}, "
          f"unlabeled {len(unlabeled)} (profile {ulb_counts}), test {args.test_per_class} per class, "
          f"{4 * args.corrupt} corrupt files")


if __name__ == "__main__":
    main()
