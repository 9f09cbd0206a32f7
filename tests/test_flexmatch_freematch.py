"""FlexMatch and FreeMatch mask rules, state and fairness loss on constructed tensors with hand-computed answers;
short real runs through the CLI, and exact resume."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dytrim.cli import main
from dytrim.config import SSLConfig
from dytrim.engine.checkpoint import load_latest
from dytrim.ssl import create_ssl
from dytrim.ssl.flexmatch import FlexMatch
from dytrim.ssl.freematch import FreeMatch


def _logits(probs: list[list[float]]) -> torch.Tensor:
    """Logits whose softmax is `probs` (rows sum to 1)."""
    return torch.tensor(probs, dtype=torch.float64).log().float()


def _flex(warmup: bool, num_ulb: int = 10, p_cutoff: float = 0.95) -> FlexMatch:
    alg = create_ssl(SSLConfig(name="flexmatch", p_cutoff=p_cutoff, thresh_warmup=warmup), 3, num_ulb)
    assert isinstance(alg, FlexMatch)
    return alg


def _set_status(alg: FlexMatch, status: list[int]) -> None:
    alg.load_state_dict({"selected_label": torch.tensor(status), "classwise_acc": torch.zeros(3)})
    alg.update_status()


# ---------------------------------------------------------------- FlexMatch
@pytest.mark.parametrize(
    ("warmup", "beta"),
    [
        # sigma = [3, 2, 0], unused = 5: warm-up divides by max(3, 5) = 5, otherwise by max_c sigma_c = 3
        (True, [3 / 5, 2 / 5, 0.0]),
        (False, [1.0, 2 / 3, 0.0]),
    ],
)
def test_flexmatch_beta_and_thresholds_from_status(warmup: bool, beta: list[float]) -> None:
    alg = _flex(warmup)
    _set_status(alg, [0, 0, 0, 1, 1, -1, -1, -1, -1, -1])
    assert alg.classwise_acc.tolist() == pytest.approx(beta, abs=1e-7)
    expected = [0.95 * b / (2 - b) for b in beta]  # warm-up: [.40714, .2375, 0]; none: [.95, .475, 0]
    assert alg.class_thresholds().tolist() == pytest.approx(expected, abs=1e-7)


def test_flexmatch_masks_in_between_class_threshold_and_cutoff() -> None:
    alg = _flex(warmup=False)
    _set_status(alg, [0, 0, 0, 1, 1, -1, -1, -1, -1, -1])  # thresholds [0.95, 0.475, 0]
    probs = [
        [0.90, 0.05, 0.05],  # class 0, 0.90 < 0.95 -> out
        [0.25, 0.50, 0.25],  # class 1, 0.475 <= 0.50 < 0.95 -> in (FixMatch would drop it)
        [0.30, 0.45, 0.25],  # class 1, 0.45 < 0.475 -> out
        [0.30, 0.30, 0.40],  # class 2, threshold 0 -> in
    ]
    _, mask = alg.pseudo_targets(_logits(probs), torch.tensor([5, 6, 7, 8]))
    assert mask.tolist() == [0.0, 1.0, 0.0, 1.0]
    _, fix_mask = create_ssl(SSLConfig(name="fixmatch", p_cutoff=0.95), 3, 10).pseudo_targets(
        _logits(probs), torch.arange(4)
    )
    assert fix_mask.tolist() == [0.0, 0.0, 0.0, 0.0]


def test_flexmatch_status_updates_only_for_confident_samples() -> None:
    alg = _flex(warmup=True)
    _set_status(alg, [0, 0, 0, 1, 1, -1, -1, -1, -1, -1])
    probs = [
        [0.01, 0.02, 0.97],  # pos 6: confident class 2 -> selected 2
        [0.05, 0.90, 0.05],  # pos 7: 0.90 < 0.95 -> stays -1
        [0.02, 0.96, 0.02],  # pos 0: confident class 1 -> 0 becomes 1
    ]
    alg.pseudo_targets(_logits(probs), torch.tensor([6, 7, 0]))
    assert alg.selected_label.tolist() == [1, 0, 0, 1, 1, -1, 2, -1, -1, -1]
    # sigma = [2, 3, 1], unused = 4 -> beta = sigma / 4
    assert alg.classwise_acc.tolist() == pytest.approx([0.5, 0.75, 0.25], abs=1e-7)


def test_flexmatch_selects_at_exactly_the_cutoff() -> None:
    """USB selects with max_probs.ge(p_cutoff): a sample exactly at the cutoff enters the status."""
    z = torch.tensor([[2.0, 0.5, 0.0], [0.0, 1.9, 0.5]])
    p_max = torch.softmax(z, -1).max(-1).values
    alg = _flex(warmup=True, num_ulb=4, p_cutoff=float(p_max[0]))  # float32 value, exactly representable
    alg.pseudo_targets(z, torch.tensor([2, 3]))
    assert float(p_max[1]) < float(p_max[0])
    assert alg.selected_label.tolist() == [-1, -1, 0, -1]


def test_flexmatch_mask_uses_status_before_the_batch() -> None:
    """USB order: threshold with the status so far, then record the batch (beta = 0 at the start: all in)."""
    alg = _flex(warmup=True, num_ulb=3)
    probs = [[0.97, 0.02, 0.01], [0.97, 0.02, 0.01], [0.50, 0.30, 0.20]]
    _, mask = alg.pseudo_targets(_logits(probs), torch.tensor([0, 1, 2]))
    assert mask.tolist() == [1.0, 1.0, 1.0]
    # now sigma_0 = 2, unused = 1 -> beta_0 = 1 -> threshold 0.95 for class 0
    assert alg.classwise_acc.tolist() == pytest.approx([1.0, 0.0, 0.0])
    _, mask = alg.pseudo_targets(_logits(probs), torch.tensor([0, 1, 2]))
    assert mask.tolist() == [1.0, 1.0, 0.0]


def test_flexmatch_keeps_beta_when_one_bin_holds_the_pool() -> None:
    """USB recomputes beta only while max(pseudo_counter.values()) < num_ulb."""
    alg = _flex(warmup=True, num_ulb=2)
    alg.load_state_dict({"selected_label": torch.tensor([0, 0]), "classwise_acc": torch.tensor([0.2, 0.1, 0.3])})
    alg.update_status()
    assert alg.classwise_acc.tolist() == pytest.approx([0.2, 0.1, 0.3])
    _set_status(alg, [-1, -1])
    assert alg.classwise_acc.tolist() == [0.0, 0.0, 0.0]


def test_flexmatch_state_round_trip() -> None:
    a = _flex(warmup=True)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        a.pseudo_targets(torch.randn(6, 3, generator=gen) * 4, torch.randperm(10, generator=gen)[:6])
    state = a.state_dict()
    b = _flex(warmup=True)
    b.load_state_dict(state)
    z, pos = torch.randn(6, 3, generator=gen) * 4, torch.randperm(10, generator=gen)[:6]
    ta, ma = a.pseudo_targets(z, pos)
    tb, mb = b.pseudo_targets(z, pos)
    assert torch.equal(ma, mb) and torch.equal(ta, tb)
    assert torch.equal(a.selected_label, b.selected_label) and torch.equal(a.classwise_acc, b.classwise_acc)
    assert not torch.equal(state["selected_label"], torch.full((10,), -1))  # something was learned
    snapshot = {k: v.clone() for k, v in b.state_dict().items()}
    b.selected_label[:] = 2  # state_dict returns copies
    assert not torch.equal(snapshot["selected_label"], b.selected_label)
    with pytest.raises(ValueError, match="unlabeled"):
        _flex(warmup=True, num_ulb=11).load_state_dict(state)


# ---------------------------------------------------------------- FreeMatch
# weak probabilities: argmax [0, 1, 0, 0, 1], max [0.7, 0.5, 0.6, 0.345, 0.345]
FREE_P = [[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.6, 0.3, 0.1], [0.345, 0.33, 0.325], [0.33, 0.345, 0.325]]


def _free(ema_p: float = 0.9, lambda_e: float = 1.0) -> FreeMatch:
    alg = create_ssl(SSLConfig(name="freematch", ema_p=ema_p, lambda_e=lambda_e), 3, 10)
    assert isinstance(alg, FreeMatch)
    return alg


def test_freematch_starts_uniform_and_updates_by_ema() -> None:
    alg = _free()
    assert alg.time_p.item() == pytest.approx(1 / 3)
    assert alg.p_model.tolist() == pytest.approx([1 / 3] * 3) and alg.label_hist.tolist() == pytest.approx([1 / 3] * 3)
    _, mask = alg.pseudo_targets(_logits(FREE_P), torch.arange(5))
    # time_p = 0.9/3 + 0.1 * (0.7+0.5+0.6+0.345+0.345)/5 = 0.3 + 0.0498
    assert alg.time_p.item() == pytest.approx(0.3498, abs=1e-6)
    # mean p = [2.175, 1.675, 1.15] / 5 = [0.435, 0.335, 0.23]
    assert alg.p_model.tolist() == pytest.approx([0.3435, 0.3335, 0.3230], abs=1e-6)
    # argmax histogram [3, 2, 0] / 5
    assert alg.label_hist.tolist() == pytest.approx([0.36, 0.34, 0.30], abs=1e-6)
    # thresholds time_p * p_model / max p_model = 0.3498 * [1, .3335/.3435, .323/.3435] = [.3498, .33962, .32892]
    expected = [0.3498, 0.3498 * 0.3335 / 0.3435, 0.3498 * 0.3230 / 0.3435]
    assert alg.class_thresholds().tolist() == pytest.approx(expected, abs=1e-6)
    # the updated thresholds apply to this batch (USB: update, then mask); the two 0.345 samples differ by class
    assert mask.tolist() == [1.0, 1.0, 1.0, 0.0, 1.0]


def test_freematch_fairness_loss_hand_value_and_gradient() -> None:
    alg = _free(lambda_e=0.5)
    alg.load_state_dict({"p_model": torch.tensor([0.5, 0.3, 0.2]), "label_hist": torch.tensor([0.5, 0.25, 0.25]),
                         "time_p": torch.tensor(0.4)})
    logits_s = torch.cat([_logits([[0.6, 0.3, 0.1]]), torch.tensor([[0.0, 0.0, 100.0]]), _logits([[0.2, 0.7, 0.1]])])
    logits_s.requires_grad_(True)
    mask = torch.tensor([1.0, 0.0, 1.0])
    loss = alg.extra_loss(logits_s, torch.zeros(3, 3), mask)
    # masked strong preds: argmax [0, 1] -> hist_s [.5, .5, 0]; mean p_s = [.4, .5, .1]
    # mean p_s / hist_s with 1/0 -> 0: [.8, 1, 0] -> SumNorm [4/9, 5/9, 0]
    # p_model / label_hist = [1, 1.2, .8] -> SumNorm [1/3, .4, .8/3]
    expected = 0.5 * (1 / 3 * math.log(4 / 9 + 1e-12) + 0.4 * math.log(5 / 9 + 1e-12) + 0.8 / 3 * math.log(1e-12))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert torch.isfinite(logits_s.grad).all()
    assert logits_s.grad[0].abs().sum() > 0 and logits_s.grad[2].abs().sum() > 0
    assert logits_s.grad[1].abs().sum() == 0  # masked-out sample gets no gradient


def test_freematch_fairness_loss_zero_without_mask_and_views_pool() -> None:
    alg = _free()
    z = torch.randn(4, 3, requires_grad=True)
    zero = alg.extra_loss(z, torch.zeros(4, 3), torch.zeros(4))
    assert zero.item() == 0.0 and zero.dim() == 0
    # two identical strong views pooled = the same loss as one view (mean and histogram unchanged)
    mask = torch.tensor([1.0, 1.0, 0.0, 1.0])
    one = alg.extra_loss(z, torch.zeros(4, 3), mask)
    two = alg.extra_loss(torch.cat([z, z]), torch.zeros(4, 3), mask)
    assert two.item() == pytest.approx(one.item(), rel=1e-6)
    # a second view that differs changes it, so both views enter
    other = alg.extra_loss(torch.cat([z, z.flip(-1)]), torch.zeros(4, 3), mask)
    assert other.item() != pytest.approx(one.item(), rel=1e-6)
    with pytest.raises(ValueError, match="views"):
        alg.extra_loss(torch.randn(5, 3), torch.zeros(4, 3), mask)


def test_freematch_state_round_trip() -> None:
    a = _free()
    a.pseudo_targets(_logits(FREE_P), torch.arange(5))
    state = a.state_dict()
    b = _free()
    b.load_state_dict(state)
    z = torch.randn(7, 3, generator=torch.Generator().manual_seed(1)) * 2
    _, ma = a.pseudo_targets(z, torch.arange(7))
    _, mb = b.pseudo_targets(z, torch.arange(7))
    assert torch.equal(ma, mb)
    for key in ("p_model", "label_hist", "time_p"):
        assert torch.equal(getattr(a, key), getattr(b, key))
    assert state["time_p"].item() == pytest.approx(0.3498, abs=1e-6)  # the snapshot did not move with `a`
    assert not torch.equal(state["p_model"], a.p_model)


# ---------------------------------------------------------------- real runs
COMMON = ["--preset", "mnist-lt-fixmatch", "--set", "train.eval_every=10", "--set", "train.progress=false",
          "--set", "optim.schedule=constant"]
VOLATILE = {"wall_s", "images_per_s"}


def _rows(run) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


@pytest.mark.slow
def test_flexmatch_cli_run(tmp_path) -> None:
    out = tmp_path / "x"
    assert main(["train", *COMMON, "--set", "ssl.name=flexmatch", "--set", "train.steps=20", "--out", str(out)]) == 0
    rows = _rows(out)
    assert [r["step"] for r in rows] == [10, 20] and all(0 <= r["mask_rate"] <= 1 for r in rows)
    state = load_latest(out)[0]["ssl"]
    assert state["selected_label"].dim() == 1 and state["selected_label"].dtype == torch.long
    assert int(state["selected_label"].min()) >= -1 and int(state["selected_label"].max()) <= 9
    assert state["classwise_acc"].shape == (10,)


# fast-moving state so that a state lost on resume would change the masks within 10 steps: FreeMatch ema_p 0.9;
# FlexMatch p_cutoff 0.6 (samples get selected early) without warm-up (the leading class gets threshold 0.6)
@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "fast"),
    [("freematch", ["ssl.ema_p=0.9"]), ("flexmatch", ["ssl.p_cutoff=0.6", "ssl.thresh_warmup=false"])],
)
def test_cli_resume_matches_straight_run(tmp_path, name: str, fast: list[str]) -> None:
    """20 steps straight == 10 steps + resume to 20: the algorithm state travels in the checkpoint."""
    common = [*COMMON, "--set", f"ssl.name={name}", *(a for kv in fast for a in ("--set", kv))]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["train", *common, "--set", "train.steps=20", "--out", str(straight)]) == 0
    assert main(["train", *common, "--set", "train.steps=10", "--out", str(split)]) == 0
    assert main(["train", "--resume", str(split), "--set", "train.steps=20"]) == 0
    a, b = _rows(straight), _rows(split)
    assert [r["step"] for r in a] == [10, 20]
    assert a == b
    state = load_latest(split)[0]["ssl"]
    if name == "freematch":
        assert state["time_p"].item() != pytest.approx(0.1)  # moved from 1/C
    else:
        assert int((state["selected_label"] >= 0).sum()) > 0  # some samples have a learning status
    assert any(0 < r["mask_rate"] < 1 for r in a)  # the thresholds bite: masks depend on the state
