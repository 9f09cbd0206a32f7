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


def _two_class(p: float) -> torch.Tensor:
    """float64 logits [log p, log(1 - p)]: softmax = [p, 1 - p] to rounding."""
    return torch.tensor([[math.log(p), math.log1p(-p)]], dtype=torch.float64, requires_grad=True)


def test_soft_cross_entropy_eps_zero_is_bit_identical_to_exact_log_softmax() -> None:
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(64, 10, generator=g) * 8).requires_grad_()
    t = torch.softmax(torch.randn(64, 10, generator=g) * 3, -1)
    want = -(t * torch.nn.functional.log_softmax(z, dim=-1)).sum(dim=-1)
    (gw,) = torch.autograd.grad(want.sum(), z)
    for got in (soft_cross_entropy(z, t), soft_cross_entropy(z, t, 0.0), soft_cross_entropy(z, t, eps=0)):
        assert torch.equal(got, want)
        (gg,) = torch.autograd.grad(got.sum(), z)
        assert torch.equal(gg, gw)


@pytest.mark.parametrize("p, factor", [(1e-7, 1e-7 / 1.1e-7), (1e-8, 0.5)])
def test_soft_cross_entropy_reference_eps_value_and_gradient(p, factor) -> None:
    """eps = 1e-8 (the reference's log(softmax + 1e-8)) against its closed form and the exact loss: for a one-hot
    target of probability p the loss is -log(p + eps) and the gradient p / (p + eps) times the exact one."""
    eps, onehot = 1e-8, torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    z = _two_class(p)
    ref = soft_cross_entropy(z, onehot, eps)
    (g_ref,) = torch.autograd.grad(ref.sum(), z)
    exact = soft_cross_entropy(z, onehot)
    (g_exact,) = torch.autograd.grad(exact.sum(), z)
    assert ref.item() == pytest.approx(-math.log(p + eps), rel=1e-12)
    assert exact.item() == pytest.approx(-math.log(p), rel=1e-12)
    assert g_exact[0].tolist() == pytest.approx([p - 1, 1 - p], rel=1e-9)
    assert g_ref[0].tolist() == pytest.approx([factor * (p - 1), factor * (1 - p)], rel=1e-9)
    assert (g_ref / g_exact)[0].tolist() == pytest.approx([factor, factor], rel=1e-9)


def test_soft_cross_entropy_reference_eps_soft_targets_and_saturation() -> None:
    """Soft targets: d/dz_j = p_j·sum_c a_c - a_j with a_c = t_c p_c / (p_c + eps); the loss caps at -log(eps)."""
    eps = 1e-8
    z = torch.tensor([[0.0, -16.0, -18.5, -25.0], [3.0, -17.0, 0.5, -40.0]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[0.1, 0.4, 0.3, 0.2], [0.25, 0.25, 0.25, 0.25]], dtype=torch.float64)
    loss = soft_cross_entropy(z, t, eps)
    (g,) = torch.autograd.grad(loss.sum(), z)
    p = torch.softmax(z.detach(), -1)
    a = t * p / (p + eps)
    assert torch.allclose(loss, -(t * torch.log(p + eps)).sum(-1), rtol=1e-12, atol=0)
    assert torch.allclose(g, p * a.sum(-1, keepdim=True) - a, rtol=1e-9, atol=1e-15)
    (g_exact,) = torch.autograd.grad(soft_cross_entropy(z, t).sum(), z)
    assert not torch.allclose(g, g_exact, rtol=1e-3, atol=0)  # the two differ where p is near eps
    far = torch.tensor([[-100.0, 0.0]], dtype=torch.float64)  # p = e^-100
    hot = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    assert soft_cross_entropy(far, hot, eps).item() == pytest.approx(-math.log(eps), rel=1e-12)  # 18.42
    assert soft_cross_entropy(far, hot).item() == pytest.approx(100.0, rel=1e-12)
    with pytest.raises(ValueError, match="eps"):
        soft_cross_entropy(far, hot, -1e-8)


def test_ce_eps_key_is_validated_and_set_by_the_paper_presets() -> None:
    from dytrim.config import ConfigError, list_presets, load_config

    assert SSLConfig().ce_eps == 0.0
    assert load_config("mnist-lt-fixmatch", ["ssl.ce_eps=1.0e-8"]).ssl.ce_eps == 1e-8
    with pytest.raises(ConfigError, match=r"^ssl\.ce_eps: must be a finite number >= 0"):
        load_config("mnist-lt-fixmatch", ["ssl.ce_eps=-1.0e-8"])
    assert load_config("mnist-lt-fixmatch", ["ssl.ce_eps=1e-8"]).ssl.ce_eps == 1e-8  # YAML reads it as text
    for bad in (".inf", ".nan", "nan"):
        with pytest.raises(ConfigError, match=r"config key 'ssl\.ce_eps' expects"):
            load_config("mnist-lt-fixmatch", [f"ssl.ce_eps={bad}"])
    exact_ce = ("-daso", "-acr")  # their official train loops call F.cross_entropy: exact log_softmax
    for name in list_presets():
        # usb-*: USB's ce_loss is exact log_softmax; paper-*: the reference code's log(softmax + 1e-8)
        want = 1e-8 if name.startswith("paper-") and not name.endswith(exact_ce) else 0.0
        assert load_config(name).ssl.ce_eps == want, name


def test_training_step_passes_ce_eps_to_both_losses(tmp_path, monkeypatch) -> None:
    import dytrim.engine.step as step
    from dytrim.config import load_config
    from dytrim.factory import build_trainer

    seen = []

    def spy(logits, targets, eps=0.0):
        seen.append(eps)
        return soft_cross_entropy(logits, targets, eps)

    monkeypatch.setattr(step, "soft_cross_entropy", spy)
    cfg = load_config("mnist-lt-fixmatch", ["ssl.ce_eps=1.0e-8", "ssl.n_strong=2", "train.progress=false"])
    build_trainer(cfg, tmp_path).train_step()
    assert seen == [1e-8] * 3  # the labeled loss and one per strong view


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
