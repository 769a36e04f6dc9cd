"""Reranker inputs: training examples never leak held-out items; retrieval-mode metrics count missed users."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import random_log, raw_dataset

from recsys_core.config import DataConfig
from recsys_core.data.preprocess import preprocess
from recsys_core.data.store import Sequences
from recsys_core.rerank.data import (
    CandidateSet,
    GroundTruthExamples,
    RetrievedExamples,
    from_retrieved,
    retrieval_training_examples,
    training_examples,
)
from recsys_core.rerank.evaluate import evaluate_lists, list_order_result


@pytest.fixture(scope="module")
def seqs():
    ds = preprocess(raw_dataset(random_log(60, 80, (5, 15), seed=41)), DataConfig(min_uc=5, min_sc=1))
    return Sequences.from_dataset(ds), ds.n_items


def test_training_examples_never_hold_validation_or_test_items(seqs):
    s, n_items = seqs
    ex = training_examples(s, n_items, 8, np.random.default_rng(0))
    assert len(ex.users) == sum(len(t) - 1 for t in s.train[1:])
    for user, hist, cands, idx in zip(ex.users, ex.histories, ex.candidates, ex.target_index, strict=True):
        held_out = {s.val[user], s.test[user]}
        assert not held_out & set(hist.tolist()) and not held_out & set(cands.tolist())
        target = cands[idx]
        train = s.train[user].tolist()
        assert train[len(hist)] == target and train[: len(hist)] == hist.tolist()  # a prefix and its next item
        assert len(set(cands.tolist())) == 8 and not (set(cands.tolist()) - {target}) & set(train)
    positions = np.bincount(ex.target_index, minlength=8)
    assert (positions > 0).all()  # shuffled: the target sits everywhere


def test_max_per_user_keeps_the_latest_prefixes(seqs):
    s, n_items = seqs
    ex = training_examples(s, n_items, 4, np.random.default_rng(0), max_per_user=2)
    user = int(ex.users[0])
    lengths = [len(h) for u, h in zip(ex.users, ex.histories, strict=True) if u == user]
    assert lengths == [len(s.train[user]) - 2, len(s.train[user]) - 1]


def test_retrieved_lists_mark_missed_users(seqs):
    s, _ = seqs
    users = np.arange(1, len(s.train))
    rows = []
    for u in users:  # user 1's true test item is missing from its list; everyone else has it first
        cands = [999, 998] if u == 1 else [s.test[u], 999]
        rows.append(("test", u, s.test[u], 0, np.array(cands), np.array([2.0, 1.0])))
    table = pd.DataFrame(rows, columns=["split", "user_id", "target", "target_rank", "candidates", "scores"])
    cset = from_retrieved(table, s, "test", top_k=2)
    assert cset.target_index[0] == -1 and (cset.target_index[1:] == 0).all()
    base = list_order_result(cset, ks=(1,))
    assert base.all_users["hit_at_1"] == pytest.approx((len(users) - 1) / len(users))  # the miss is counted
    assert base.hit_users["hit_at_1"] == 1.0


def test_reranking_metrics_average_over_all_users():
    cset = CandidateSet(users=np.array([1, 2, 3]), histories=[np.array([5])] * 3,
                        candidates=np.array([[1, 2, 0], [3, 4, 5], [6, 7, 8]]), targets=np.array([2, 3, 9]),
                        target_index=np.array([1, 0, -1]))  # fmt: skip

    def prefer_higher_ids(histories, candidates):
        return torch.as_tensor(candidates, dtype=torch.float32)

    result = evaluate_lists(prefer_higher_ids, cset, ks=(1, 3))
    # user 1: item 2 beats 1 (slot 0 is empty) -> rank 0; user 2: 3 is last of 3..5 -> rank 2; user 3: missed.
    assert result.ranks.tolist() == [0.0, 2.0, math.inf]
    assert result.all_users["hit_at_1"] == pytest.approx(1 / 3) and result.all_users["hit_at_3"] == pytest.approx(2 / 3)
    assert result.hit_users["hit_at_1"] == pytest.approx(1 / 2)
    assert result.order[0].tolist() == [2, 1, 0]


def test_retrieval_training_examples_mask_held_out_items(seqs):
    s, n_items = seqs
    users = range(1, len(s.train))
    held_out = {u: {int(s.val[u]), int(s.test[u])} for u in users}
    everyones = sorted(set().union(*held_out.values()))

    def leaky_retriever(histories):
        """Scores every validation and test item highest: the worst case for leakage."""
        scores = torch.arange(n_items + 1, 0, -1, dtype=torch.float32).repeat(len(histories), 1) / n_items
        scores[:, everyones] += 10.0
        return scores

    ex = retrieval_training_examples(s, leaky_retriever, 40, np.random.default_rng(0), max_per_user=3)
    assert len(ex.users) > 0
    for user, hist, cands, idx in zip(ex.users, ex.histories, ex.candidates, ex.target_index, strict=True):
        assert not held_out[user] & set(cands.tolist()) and not set(hist.tolist()) & set(cands.tolist())
        assert cands[idx] == s.train[user][len(hist)]  # kept only where the next item was retrieved
    total = sum(min(3, len(s.train[u]) - 1) for u in users)
    assert len(ex.users) < total  # prefixes whose next item was not in the top 40 were dropped


def test_retrieved_examples_score_once_and_reshuffle_every_draw(seqs):
    s, n_items = seqs
    calls = []

    def retriever(histories):
        calls.append(len(histories))
        return torch.arange(n_items + 1, 0, -1, dtype=torch.float32).repeat(len(histories), 1)

    source = RetrievedExamples(s, retriever)
    first = source.draw(30, np.random.default_rng(1), 2)
    scored = len(calls)
    second = source.draw(30, np.random.default_rng(2), 2)
    assert len(calls) == scored  # the retriever's lists are computed once
    assert len(first.users) > 0 and first.candidates.shape[1] == 30
    assert not np.array_equal(first.candidates, second.candidates)  # a fresh order (so fresh labels) each epoch
    np.testing.assert_array_equal(np.sort(first.candidates, axis=1), np.sort(second.candidates, axis=1))
    for ex in (first, second):
        for user, hist, cands, idx in zip(ex.users, ex.histories, ex.candidates, ex.target_index, strict=True):
            assert cands[idx] == s.train[user][len(hist)]
    gt = GroundTruthExamples(s, n_items).draw(8, np.random.default_rng(0))
    assert gt.candidates.shape[1] == 8 and (gt.target_index >= 0).all()


def test_retrieval_lists_longer_than_the_unblocked_pool_drop_masked_slots():
    """6 items, lists of 10: each prefix has fewer unblocked items than slots. The masked slots (history, held-out,
    padding id 0) must not become candidates; the lists end in 0 padding, which the shuffle never moves."""
    n_items = 6
    train = [np.zeros(0, np.int64), np.array([1, 2, 3]), np.array([4, 5, 6, 1])]
    s = Sequences(train, np.array([0, 4, 2]), np.array([0, 5, 3]))

    def everything_equal(histories):
        return torch.zeros(len(histories), n_items + 1)  # ties everywhere: topk may pick masked slots first

    ex = retrieval_training_examples(s, everything_equal, 10, np.random.default_rng(0))
    assert len(ex.users) == 5  # 2 + 3 prefixes, the next item always retrieved
    for user, hist, cands, idx in zip(ex.users, ex.histories, ex.candidates, ex.target_index, strict=True):
        blocked = set(hist.tolist()) | {int(s.val[user]), int(s.test[user])}
        real = cands[cands != 0]
        assert set(real.tolist()) == set(range(1, n_items + 1)) - blocked  # every unblocked item, nothing else
        assert len(set(real.tolist())) == len(real) and (cands[len(real) :] == 0).all()  # padding only at the end
        assert 0 <= idx < len(real) and cands[idx] == s.train[user][len(hist)]
    assert ex.candidates.shape == (5, 10)  # padded to the requested width
    source = RetrievedExamples(s, everything_equal)
    for seed in range(5):
        drawn = source.draw(10, np.random.default_rng(seed))
        for cands, idx in zip(drawn.candidates, drawn.target_index, strict=True):
            k = int((cands != 0).sum())
            assert (cands[:k] != 0).all() and (cands[k:] == 0).all() and idx < k


def test_retrieved_lists_of_other_targets_are_refused(seqs):
    """A retrieved.csv made on another split (other targets) is refused, not read with every target missing."""
    from recsys_core.errors import LineageError

    s, n_items = seqs
    users = np.arange(1, len(s.train))
    rows = [{"split": "test", "user_id": u, "target": int(s.test[u]), "target_rank": 0.0,
             "candidates": np.array([s.test[u], 1, 2]), "scores": np.array([3.0, 2.0, 1.0])} for u in users]  # fmt: skip
    table = pd.DataFrame(rows)
    assert from_retrieved(table, s, "test", 3).hit_mask.all()
    table.loc[4, "target"] = (s.test[users[4]] % n_items) + 1  # one user's target from another split
    with pytest.raises(LineageError, match=f"differ from the prepared split for 1 of {len(users)} users"):
        from_retrieved(table, s, "test", 3)
