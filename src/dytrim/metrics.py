"""Classification metrics for long-tailed evaluation: acc, bACC, GM, per-class recall, shot groups."""

from __future__ import annotations

import math

import numpy as np
import torch

from dytrim.units import round_half_up


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> np.ndarray:
    """Counts [true, predicted] as int64."""
    flat = target.long().cpu() * num_classes + pred.long().cpu()
    return torch.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes).numpy()


def per_class_recall(cm: np.ndarray) -> np.ndarray:
    """Recall of each class (0 for a class absent from the targets)."""
    support = cm.sum(axis=1)
    return np.divide(np.diag(cm), support, out=np.zeros(len(cm), dtype=np.float64), where=support > 0)


def geometric_mean(recall: np.ndarray) -> float:
    """GM of recalls; a zero recall is replaced by 1/(100*C) as in the reference code (CDMAD/DyTrim)."""
    c = len(recall)
    safe = np.where(recall > 0, recall, 1.0 / (100 * c))
    return float(math.exp(np.mean(np.log(safe))))


def shot_groups(train_counts: list[int]) -> dict[str, list[int]]:
    """Split classes into many/medium/few thirds by labeled count (head first; sizes as np.array_split)."""
    order = np.argsort(-np.asarray(train_counts), kind="stable")
    many, medium, few = np.array_split(order, 3)
    return {"many": many.tolist(), "medium": medium.tolist(), "few": few.tolist()}


def classification_metrics(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, train_counts: list[int] | None = None, suffix: str = ""
) -> dict[str, object]:
    """acc, bacc (mean recall), gm, per_class_recall and (with train_counts) many/medium/few bACC, each rounded
    half up to `units.DECIMALS` decimals: the one stored value every print and summary starts from."""
    cm = confusion_matrix(pred, target, num_classes)
    recall = per_class_recall(cm)
    out: dict[str, object] = {
        f"acc{suffix}": round_half_up(float(np.trace(cm) / max(cm.sum(), 1))),
        f"bacc{suffix}": round_half_up(float(recall.mean())),
        f"gm{suffix}": round_half_up(geometric_mean(recall)),
        f"per_class_recall{suffix}": [round_half_up(float(r)) for r in recall],
    }
    if train_counts is not None:
        for name, classes in shot_groups(train_counts).items():
            out[f"{name}{suffix}"] = round_half_up(float(recall[classes].mean())) if classes else float("nan")
    return out
