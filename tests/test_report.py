"""The report's numbers, computed by hand on small cases: candidate recall at each cut-off, history-length buckets
of about equal size, and the paired gain within each."""

import numpy as np
import pandas as pd
import pytest

from recsys_core.report import content


def test_candidate_recall_counts_ranks_below_k_and_never_a_miss():
    ranks = [0, 9, 10, 49, -1, float("nan")]  # 0-based: rank 9 is the 10th item; -1 and nan are misses
    recall = content.candidate_recall(ranks, cutoffs=(1, 10, 11, 50))
    assert recall == {1: 1 / 6, 10: 2 / 6, 11: 3 / 6, 50: 4 / 6}
    with pytest.raises(ValueError, match="at least one"):
        content.candidate_recall([])


def test_history_buckets_split_users_evenly_and_never_leave_a_range_empty():
    lengths = np.arange(1, 101)
    assert content.history_buckets(lengths, 4) == [(1, 25), (26, 50), (51, 75), (76, 100)]
    assert content.history_buckets([5] * 10, 4) == [(5, 5)]  # one length: one bucket
    ranges = content.history_buckets([3, 3, 3, 3, 3, 3, 9, 20], 4)
    assert ranges[0][0] == 3 and ranges[-1][1] == 20
    assert all(low <= high for low, high in ranges)
    assert all(any(low <= n <= high for n in [3, 3, 3, 3, 3, 3, 9, 20]) for low, high in ranges)


def test_gain_by_history_pairs_users_within_each_bucket():
    lengths = np.array([1, 2, 3, 4, 5, 6, 7, 8])
    retrieval = np.array([0.5, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0])
    two_stage = np.array([0.5, 0.5, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0])  # the reranker helps the long histories only
    short, long = content.gain_by_history(lengths, retrieval, two_stage, n=2)
    assert (short.low, short.high, long.low, long.high) == (1, 4, 5, 8) and long.label == "5–8"
    assert short.delta.delta == 0 and short.delta.verdict == "no significant difference"
    assert long.delta.delta == pytest.approx(1.0) and long.delta.low > 0 and long.delta.users == 4


def test_per_user_files_of_different_users_are_refused():
    a = pd.DataFrame({"user_id": [1, 2], "target": [5, 6], "ndcg_at_10": [0.1, 0.2]})
    b = pd.DataFrame({"user_id": [1, 3], "target": [5, 7], "ndcg_at_10": [0.1, 0.2]})
    lengths = pd.Series([4, 5, 6], index=[1, 2, 3])
    got = content.paired_frames(a, a, lengths, "ndcg_at_10")
    assert [list(x) for x in got] == [[4, 5], [0.1, 0.2], [0.1, 0.2]]
    with pytest.raises(ValueError, match="same users and targets"):
        content.paired_frames(a, b, lengths, "ndcg_at_10")


def test_the_report_says_what_the_tuned_fusion_did():
    from recsys_core.report.content import fusion_sentence

    assert "keep the retriever's order" in fusion_sentence("retrieval")
    assert "reranker's order" in fusion_sentence(0.0) and "weight 8," in fusion_sentence(8.0)
    assert fusion_sentence(None) == ""
