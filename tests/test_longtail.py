"""Split counts against the reference table (reference-spec.md §5) and the pool conventions."""

from __future__ import annotations

import numpy as np
import pytest

from dytrim.data.longtail import SplitError, build_split, longtail_counts

TABLE = {  # gamma -> (labeled N_k, unlabeled M_k) for CIFAR-10, N1=1500, M1=3000
    50: ([1500, 971, 628, 407, 263, 170, 110, 71, 46, 30], [3000, 1942, 1257, 814, 527, 341, 221, 143, 92, 60]),
    100: ([1500, 899, 539, 323, 193, 116, 69, 41, 25, 15], [3000, 1798, 1078, 646, 387, 232, 139, 83, 50, 30]),
    150: ([1500, 859, 492, 282, 161, 92, 53, 30, 17, 10], [3000, 1719, 985, 564, 323, 185, 106, 60, 34, 20]),
}


@pytest.mark.parametrize("gamma", sorted(TABLE))
def test_cifar10_counts_match_reference_table(gamma: int) -> None:
    lb, ulb = TABLE[gamma]
    assert longtail_counts(1500, gamma, 10) == lb
    assert longtail_counts(3000, gamma, 10) == ulb


def test_sums_and_variants() -> None:
    assert sum(longtail_counts(1500, 100, 10)) == 3720
    assert sum(longtail_counts(3000, 100, 10)) == 7443
    assert longtail_counts(3000, 1, 10) == [3000] * 10
    assert longtail_counts(3000, 100, 10, reverse=True) == [30, 50, 83, 139, 232, 387, 646, 1078, 1798, 3000]
    # CIFAR-100, N1=150, M1=300: labeled and unlabeled totals of the table
    for gamma, n, m in [(10, 5835, 11720), (15, 5153, 10352), (20, 4741, 9527), (50, 3751, 7546), (100, 3218, 6486)]:
        assert sum(longtail_counts(150, gamma, 100)) == n
        assert sum(longtail_counts(300, gamma, 100)) == m
    # STL-10 N1=450
    assert sum(longtail_counts(450, 10, 10)) == 1835 and sum(longtail_counts(450, 20, 10)) == 1528


def test_formula_equals_closed_form() -> None:
    for gamma in (2, 10, 50, 100, 150, 256):
        closed = [int(1500 * (1 / gamma) ** (k / 9)) for k in range(10)]
        assert longtail_counts(1500, gamma, 10) == closed


def test_gamma_below_one_rejected() -> None:
    with pytest.raises(SplitError):
        longtail_counts(100, 0.5, 10)


def _labels() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.permutation(np.repeat(np.arange(3), 50))


def test_paper_pool_is_file_order_and_contains_labeled() -> None:
    y = _labels()
    s = build_split(y, [10, 5, 2], [20, 10, 4], pool="paper")
    for c, (n, m) in enumerate([(10, 20), (5, 10), (2, 4)]):
        first = np.flatnonzero(y == c)
        lb_c = s.lb_idx[y[s.lb_idx] == c]
        ulb_c = s.ulb_idx[y[s.ulb_idx] == c]
        assert lb_c.tolist() == first[:n].tolist()
        assert ulb_c.tolist() == first[: n + m].tolist()
    assert len(s.ulb_idx) == 17 + 34 and s.ulb_counts == [30, 15, 6]


def test_disjoint_pool_is_seeded_and_disjoint() -> None:
    y = _labels()
    a = build_split(y, [10, 5, 2], [20, 10, 4], pool="disjoint", seed=1)
    b = build_split(y, [10, 5, 2], [20, 10, 4], pool="disjoint", seed=1)
    c = build_split(y, [10, 5, 2], [20, 10, 4], pool="disjoint", seed=2)
    assert np.array_equal(a.lb_idx, b.lb_idx) and np.array_equal(a.ulb_idx, b.ulb_idx)
    assert not np.array_equal(a.lb_idx, c.lb_idx)
    assert not set(a.lb_idx) & set(a.ulb_idx)
    assert np.bincount(y[a.ulb_idx]).tolist() == [20, 10, 4]


def test_impossible_split_names_the_key() -> None:
    y = _labels()
    with pytest.raises(SplitError, match="data.n1"):
        build_split(y, [51, 5, 2], [0, 0, 0])
    with pytest.raises(SplitError, match="data.m1"):
        build_split(y, [10, 5, 2], [41, 0, 0])


def test_real_cifar10_paper_split(shared_data) -> None:
    from dytrim.config import DataConfig
    from dytrim.data.sources import load_data

    d = load_data(DataConfig(name="cifar10", root=str(shared_data)), seed=0)
    assert len(d.lb_idx) == 3720 and len(d.ulb_idx) == 11163
    assert d.split.lb_counts == TABLE[100][0]
    y = d.y_train.numpy()
    # reference rule: the first N_k images of class k in file order, no shuffle on CIFAR-10
    for c, n in enumerate(TABLE[100][0]):
        assert d.lb_idx.numpy()[y[d.lb_idx.numpy()] == c].tolist() == np.flatnonzero(y == c)[:n].tolist()
    assert d.x_train.dtype.is_floating_point is False and tuple(d.x_train.shape[1:]) == (3, 32, 32)
