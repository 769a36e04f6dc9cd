"""The paired bootstrap against cases worked out by hand, and the pairing checks of per-user files."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from recsys_core import per_user
from recsys_core.errors import LineageError
from recsys_core.significance import bootstrap_means, paired_bootstrap


def test_two_users_one_up_one_down():
    # d = (+1, -1). A resample of two users has mean +1 (both +1: 1/4), 0 (mixed: 1/2) or -1 (1/4), so the 2.5th and
    # 97.5th percentiles are -1 and +1, and half the means sit at or below 0 and at or above 0: p = 1.
    result = paired_bootstrap([0.0, 1.0], [1.0, 0.0])
    assert result.delta == 0.0 and (result.low, result.high) == (-1.0, 1.0)
    assert result.p_value == 1.0 and result.verdict == "no significant difference"
    means = bootstrap_means(np.array([1.0, -1.0]))
    shares = [np.mean(means == v) for v in (-1.0, 0.0, 1.0)]
    assert shares == pytest.approx([0.25, 0.5, 0.25], abs=0.02)


def test_every_user_gains_the_same():
    # d = 0.1 for all users: every resampled mean is 0.1, the interval is [0.1, 0.1], no mean is <= 0, so
    # p = 2 (0 + 1) / (10000 + 1).
    result = paired_bootstrap(np.zeros(50), np.full(50, 0.1))
    assert result.low == pytest.approx(0.1) and result.high == pytest.approx(0.1)
    assert result.p_value == pytest.approx(2 / 10001) and result.verdict == "gain"
    assert paired_bootstrap(np.full(50, 0.1), np.zeros(50)).verdict == "loss"


def test_three_users_match_the_exact_bootstrap_distribution():
    # Three users: the 27 equally likely resamples give the exact distribution of the mean; the seeded 10,000-draw
    # interval must sit on its 2.5% / 97.5% quantiles (worked out by enumeration).
    d = np.array([0.0, 0.3, 0.9])
    exact = np.sort([np.mean(c) for c in itertools.product(d, repeat=3)])
    assert exact[0] == 0.0 and exact[-1] == pytest.approx(0.9)
    result = paired_bootstrap(np.zeros(3), d)
    assert result.delta == pytest.approx(0.4)
    # P(mean = 0) = 1/27 = 3.7% > 2.5%: the low end is 0; P(mean = 0.9) = 1/27 too: the high end is 0.9.
    assert result.low == pytest.approx(0.0) and result.high == pytest.approx(0.9)
    # Means <= 0: only (0, 0, 0), 1/27 of the draws: p ~ 2/27.
    assert result.p_value == pytest.approx(2 / 27, abs=0.01)


def test_seeded_and_shape_checked():
    rng = np.random.default_rng(1)
    a, b = rng.random(200), rng.random(200)
    assert paired_bootstrap(a, b) == paired_bootstrap(a, b)
    with pytest.raises(ValueError, match="equal"):
        paired_bootstrap(a, b[:-1])


def frame(users, targets, ranks):
    return per_user.records(users, targets, np.asarray(ranks, dtype=float), [5, 10])


def test_records_hold_rank_or_miss_and_metrics(tmp_path):
    table = frame([1, 2, 3], [7, 8, 9], [0, 4, np.inf])
    assert table["rank"].tolist() == [0, 4, per_user.MISS]
    assert table["ndcg_at_10"].tolist() == pytest.approx([1.0, 1 / np.log2(6), 0.0])
    assert table["recall_at_5"].tolist() == [1.0, 1.0, 0.0]
    back = per_user.read(per_user.write(tmp_path, "test", table))
    pd.testing.assert_frame_equal(back, table, check_exact=False, check_dtype=False, atol=1e-6)


def test_files_of_other_users_or_targets_do_not_pair():
    a = frame([1, 2, 3], [7, 8, 9], [0, 1, 2])
    with pytest.raises(LineageError, match="different users"):
        per_user.compare(a, frame([1, 2, 4], [7, 8, 9], [0, 1, 2]), ["ndcg_at_10"])
    with pytest.raises(LineageError, match="different targets for 1 users"):
        per_user.compare(a, frame([1, 2, 3], [7, 8, 5], [0, 1, 2]), ["ndcg_at_10"])
    deltas = per_user.compare(a, frame([3, 1, 2], [9, 7, 8], [0, 0, 0]), ["ndcg_at_10"])
    assert deltas["ndcg_at_10"].delta > 0
