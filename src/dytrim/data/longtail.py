"""Long-tailed labeled/unlabeled splits exactly as the reference code (DARP lineage) draws them.

Counts: N_k = int(N1 * mu**k) for k < C-1 and N_{C-1} = int(N1 / gamma), mu = (1/gamma)**(1/(C-1))
(`make_imb_data` in DARP/CDMAD/DyTrim; equals int(N1 * (1/gamma)**(k/(C-1))) for every setting tested).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class SplitError(ValueError):
    """The requested split cannot be drawn from the data (names the config key to change)."""


def longtail_counts(n1: int, gamma: float, num_classes: int, reverse: bool = False) -> list[int]:
    """Per-class counts of a long-tailed profile with head count `n1` and imbalance ratio `gamma`."""
    if gamma < 1:
        raise SplitError(f"imbalance ratio must be >= 1, got {gamma}")
    if num_classes == 1:
        return [int(n1)]
    mu = np.power(1.0 / gamma, 1.0 / (num_classes - 1))
    counts = [int(n1 * np.power(mu, k)) for k in range(num_classes - 1)] + [int(n1 / gamma)]
    return counts[::-1] if reverse else counts


@dataclass(frozen=True)
class Split:
    """Indices into the training array: labeled and unlabeled pools (the latter may contain the former)."""

    lb_idx: np.ndarray  # int64 [N_l]
    ulb_idx: np.ndarray  # int64 [N_u]
    lb_counts: list[int]
    ulb_counts: list[int]  # per class, by TRUE label (labels are hidden from training)


def build_split(
    labels: np.ndarray,
    lb_counts: list[int],
    ulb_counts: list[int],
    pool: str = "paper",
    seed: int = 0,
    shuffle: bool = False,
) -> Split:
    """Draw the split.

    pool="paper": per class, its images in file order (shuffled with `seed` only if `shuffle`);
    labeled = first N_k, unlabeled = first N_k + M_k, so the unlabeled pool contains the labeled
    images (DARP `fix=True`, CDMAD, DyTrim). pool="disjoint": per class, a seeded shuffle; labeled =
    first N_k, unlabeled = the next M_k (USB `sample_labeled_unlabeled_data`).
    """
    labels = np.asarray(labels)
    num_classes = len(lb_counts)
    if len(ulb_counts) != num_classes:
        raise SplitError("labeled and unlabeled profiles have different numbers of classes")
    rng = np.random.default_rng(seed)
    lb, ulb = [], []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        n, m = lb_counts[c], ulb_counts[c]
        if n > len(idx):
            raise SplitError(
                f"data.n1: class {c} needs {n} labeled images but the training set has only {len(idx)}; "
                "lower data.n1 (or data.imb_ratio_l)"
            )
        if n + m > len(idx):
            raise SplitError(
                f"data.m1: class {c} needs {n} labeled + {m} unlabeled = {n + m} images but the training set "
                f"has only {len(idx)}; lower data.m1 (or data.n1)"
            )
        if shuffle or pool == "disjoint":
            idx = rng.permutation(idx)
        lb.append(idx[:n])
        ulb.append(idx[: n + m] if pool == "paper" else idx[n : n + m])
    lb_idx = np.concatenate(lb).astype(np.int64)
    ulb_idx = np.concatenate(ulb).astype(np.int64)
    ulb_true = [int(len(u)) for u in ulb]
    return Split(lb_idx=lb_idx, ulb_idx=ulb_idx, lb_counts=[int(x) for x in lb_counts], ulb_counts=ulb_true)
