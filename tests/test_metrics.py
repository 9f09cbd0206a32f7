"""Metrics on hand-made predictions with hand-computed answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dytrim.metrics import classification_metrics, confusion_matrix, geometric_mean, shot_groups


def test_confusion_and_recall() -> None:
    y = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    p = torch.tensor([0, 0, 0, 1, 1, 0, 2, 2])
    cm = confusion_matrix(p, y, 3)
    assert cm.tolist() == [[3, 1, 0], [1, 1, 0], [0, 0, 2]]
    m = classification_metrics(p, y, 3)
    assert m["acc"] == pytest.approx(6 / 8)
    assert m["per_class_recall"] == [0.75, 0.5, 1.0]
    assert m["bacc"] == pytest.approx((0.75 + 0.5 + 1.0) / 3)
    assert m["gm"] == pytest.approx((0.75 * 0.5 * 1.0) ** (1 / 3))


def test_gm_zero_recall_rule() -> None:
    # a class never predicted correctly: its recall is replaced by 1/(100*C) as in the reference
    recall = np.array([1.0, 0.0, 0.5, 0.25])
    expected = (1.0 * (1 / 400) * 0.5 * 0.25) ** 0.25
    assert geometric_mean(recall) == pytest.approx(expected)
    y = torch.tensor([0, 1, 2, 3])
    p = torch.tensor([0, 0, 0, 0])
    m = classification_metrics(p, y, 4)
    assert m["gm"] == pytest.approx(math.exp(np.log([1.0, 1 / 400, 1 / 400, 1 / 400]).mean()), abs=5e-7)  # 6 decimals
    assert m["bacc"] == pytest.approx(0.25) and m["acc"] == pytest.approx(0.25)


def test_shot_groups_by_labeled_count() -> None:
    counts = [1500, 899, 539, 323, 193, 116, 69, 41, 25, 15]
    g = shot_groups(counts)
    assert g == {"many": [0, 1, 2, 3], "medium": [4, 5, 6], "few": [7, 8, 9]}
    g = shot_groups([5, 50, 500])  # reversed order: head is class 2
    assert g == {"many": [2], "medium": [1], "few": [0]}
    y = torch.arange(10)
    m = classification_metrics(y.clone(), y, 10, counts)
    assert m["many"] == m["medium"] == m["few"] == 1.0


def test_suffix_names_every_key() -> None:
    y = torch.tensor([0, 1])
    m = classification_metrics(y, y, 2, [2, 1], suffix="_debiased")
    assert set(m) == {k + "_debiased" for k in ("acc", "bacc", "gm", "per_class_recall", "many", "medium", "few")}
