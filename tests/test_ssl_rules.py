"""Pseudo-label and loss rules on constructed logits, with hand-computed answers."""

from __future__ import annotations

import math

import pytest
import torch

from dytrim.config import SSLConfig
from dytrim.engine.losses import soft_cross_entropy
from dytrim.ssl import create_ssl


def test_soft_cross_entropy_matches_hand_value() -> None:
    z = torch.tensor([[0.0, math.log(3.0)]])  # softmax = [0.25, 0.75]
    t = torch.tensor([[0.5, 0.5]])
    assert soft_cross_entropy(z, t).item() == pytest.approx(-(0.5 * math.log(0.25) + 0.5 * math.log(0.75)))
    onehot = torch.tensor([[0.0, 1.0]])
    assert soft_cross_entropy(z, onehot).item() == pytest.approx(-math.log(0.75))
    assert torch.allclose(soft_cross_entropy(z, onehot), torch.nn.functional.cross_entropy(z, torch.tensor([1])))


def test_fixmatch_hard_labels_and_threshold() -> None:
    alg = create_ssl(SSLConfig(name="fixmatch", hard_label=True, p_cutoff=0.95), 3, 10)
    # softmax of [5,0,0] = e^5/(e^5+2) = 0.98665 >= 0.95 ; [2,0,0] -> 0.787 < 0.95
    z = torch.tensor([[5.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 6.0]])
    targets, mask = alg.pseudo_targets(z, torch.arange(3))
    assert mask.tolist() == [1.0, 0.0, 1.0]
    assert targets.tolist() == [[1, 0, 0], [1, 0, 0], [0, 0, 1]]


def test_reference_soft_targets_tau_zero() -> None:
    alg = create_ssl(SSLConfig(name="fixmatch", hard_label=False, p_cutoff=0.0), 3, 10)
    z = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    targets, mask = alg.pseudo_targets(z, torch.arange(2))
    assert mask.tolist() == [1.0, 1.0]  # tau = 0 keeps everything
    assert torch.allclose(targets, torch.softmax(z, -1))
    assert torch.allclose(targets[1], torch.full((3,), 1 / 3))


def test_temperature_sharpens_soft_targets_only() -> None:
    alg = create_ssl(SSLConfig(name="fixmatch", hard_label=False, p_cutoff=0.5, temperature=0.5), 2, 4)
    z = torch.tensor([[0.0, math.log(3.0)]])  # p = [.25, .75]; T=0.5 -> [1/10, 9/10]
    targets, mask = alg.pseudo_targets(z, torch.arange(1))
    assert torch.allclose(targets, torch.tensor([[0.1, 0.9]]))
    assert mask.item() == 1.0  # mask uses the unsharpened 0.75 >= 0.5


def test_supervised_does_not_use_unlabeled() -> None:
    alg = create_ssl(SSLConfig(name="supervised"), 3, 0)
    assert not alg.uses_unlabeled
    with pytest.raises(NotImplementedError):
        alg.pseudo_targets(torch.zeros(1, 3), torch.zeros(1, dtype=torch.long))


def test_unknown_algorithm_suggests() -> None:
    with pytest.raises(KeyError, match="fixmatch"):
        create_ssl(SSLConfig(name="fixmach"), 3, 0)
