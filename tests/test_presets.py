"""Every paper protocol is a preset: each resolves, and its split counts match the published setting
(reference-spec §5) without training; CIFAR-10 splits are also drawn on the real labels."""

from __future__ import annotations

import numpy as np
import pytest

from dytrim.config import list_presets, load_config
from dytrim.data.longtail import build_split
from dytrim.data.sources import split_counts

C10 = {  # gamma -> (labeled per class, unlabeled drawn per class)
    50: ([1500, 971, 628, 407, 263, 170, 110, 71, 46, 30], [3000, 1942, 1257, 814, 527, 341, 221, 143, 92, 60]),
    100: ([1500, 899, 539, 323, 193, 116, 69, 41, 25, 15], [3000, 1798, 1078, 646, 387, 232, 139, 83, 50, 30]),
    150: ([1500, 859, 492, 282, 161, 92, 53, 30, 17, 10], [3000, 1719, 985, 564, 323, 185, 106, 60, 34, 20]),
}
C100_SUMS = {10: (5835, 11720), 20: (4741, 9527), 50: (3751, 7546)}
STL_SUMS = {10: 1835, 20: 1528}


def _counts(name: str) -> tuple[list[int], list[int]]:
    cfg = load_config(name)
    n_cls = {"cifar10": 10, "cifar100": 100, "stl10": 10}[cfg.data.name]
    return split_counts(cfg.data, n_cls)


@pytest.mark.parametrize("proto", ["paper", "usb"])
def test_cifar10lt_protocols(proto) -> None:
    base = "paper-cifar10lt-fixmatch" if proto == "paper" else "usb-cifar10lt-fixmatch"
    assert _counts(base) == C10[100]
    for g in (50, 150):
        assert _counts(f"{proto}-cifar10lt-g{g}-fixmatch") == C10[g]
    lb, ulb = _counts(f"{proto}-cifar10lt-gu1-fixmatch")
    assert lb == C10[100][0] and ulb == [3000] * 10
    lb, ulb = _counts(f"{proto}-cifar10lt-gurev-fixmatch")
    assert lb == C10[100][0] and ulb == C10[100][1][::-1]
    lb, ulb = _counts(f"{proto}-cifar10lt-gu150-fixmatch")
    assert lb == C10[100][0] and ulb == C10[150][1]
    assert load_config(base).data.pool == ("paper" if proto == "paper" else "disjoint")


def test_cifar10lt_paper_pools_on_real_labels(shared_data) -> None:
    y = np.load(shared_data / "cifar10.npz")["y_train"].astype(np.int64)
    for lb, ulb in C10.values():
        split = build_split(y, lb, ulb, "paper", 0, False)
        assert len(split.lb_idx) == sum(lb) and len(split.ulb_idx) == sum(lb) + sum(ulb)  # pool includes labeled
        split = build_split(y, lb, ulb, "disjoint", 0, False)
        assert len(set(split.lb_idx) & set(split.ulb_idx)) == 0 and len(split.ulb_idx) == sum(ulb)


@pytest.mark.parametrize("proto", ["paper", "usb"])
def test_cifar100lt_protocols(proto) -> None:
    for g, (n_lb, n_ulb) in C100_SUMS.items():
        lb, ulb = _counts(f"{proto}-cifar100lt-g{g}-fixmatch")
        assert (sum(lb), sum(ulb)) == (n_lb, n_ulb) and lb[0] == 150 and len(lb) == 100
    assert sum(_counts("paper-cifar100lt-dytrim")[0]) == C100_SUMS[50][0]


@pytest.mark.parametrize("proto", ["paper", "usb"])
def test_stl10lt_protocols(proto) -> None:
    for g, n_lb in STL_SUMS.items():
        cfg = load_config(f"{proto}-stl10lt-g{g}-fixmatch")
        assert (cfg.data.name, cfg.data.image_size, cfg.data.n1) == ("stl10", 32, 450)
        assert sum(_counts(f"{proto}-stl10lt-g{g}-fixmatch")[0]) == n_lb
    assert load_config(f"{proto}-stl10lt-g10-fixmatch").data.pool == ("paper" if proto == "paper" else "disjoint")


@pytest.mark.parametrize("proto", ["paper", "usb"])
@pytest.mark.parametrize("side", [32, 64])
def test_smallimagenet127_protocols(proto, side) -> None:
    cfg = load_config(f"{proto}-smallimagenet127-{side}-fixmatch")
    assert (cfg.data.name, cfg.data.image_size, cfg.model.name, cfg.aug.pad) == ("smallimagenet127", side,
                                                                                 "resnet50", side // 8)


def test_every_protocol_family_is_present() -> None:
    names = set(list_presets())
    for proto in ("paper", "usb"):
        for tag in ("g50", "g150", "gu1", "gurev", "gu150"):
            assert f"{proto}-cifar10lt-{tag}-fixmatch" in names
        for stem in ("cifar100lt-g10", "cifar100lt-g20", "cifar100lt-g50", "stl10lt-g10", "stl10lt-g20",
                     "smallimagenet127-32", "smallimagenet127-64"):
            assert f"{proto}-{stem}-fixmatch" in names
