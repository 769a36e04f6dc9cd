"""Score fusion: z-scores per list, the weight moves the order from the reranker's to the retriever's, tuning picks
the best validation weight, and the two-stage model applies what the reranker stored."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_core.pipeline import TwoStage
from recsys_core.rerank.data import CandidateSet
from recsys_core.rerank.evaluate import evaluate_lists
from recsys_core.rerank.fusion import RETRIEVER_ORDER, WEIGHTS, final_scores, fuse, standardise, tune_weight
from recsys_core.serving import TwoStageModel


def test_standardise_ignores_empty_slots():
    scores = torch.tensor([[1.0, 2.0, 3.0, 99.0]])
    filled = torch.tensor([[True, True, True, False]])
    z = standardise(scores, filled)
    assert torch.isneginf(z[0, 3])
    torch.testing.assert_close(z[0, :3], torch.tensor([-1.2247, 0.0, 1.2247]), atol=1e-4, rtol=0)


def test_weight_moves_from_reranker_order_to_retriever_order():
    cands = np.array([[5, 6, 7]])
    rerank = torch.tensor([[3.0, 2.0, 1.0]])  # prefers 5
    retrieval = np.array([[1.0, 2.0, 30.0]])  # prefers 7
    assert fuse(rerank, retrieval, cands, 0.0).argmax().item() == 0
    assert fuse(rerank, retrieval, cands, 8.0).argmax().item() == 2


class Fixed:
    """A 'reranker' whose scores are given; hparams as a real one stores them."""

    def __init__(self, scores, weight=None):
        self.scores = torch.as_tensor(scores, dtype=torch.float32)
        self.hparams = {} if weight is None else {"fusion_weight": weight}
        self.seen = 0

    def score(self, histories, candidates):
        out = self.scores[self.seen : self.seen + len(candidates)]
        self.seen = (self.seen + len(candidates)) % len(self.scores)
        return out


def test_tuning_picks_the_weight_that_ranks_validation_best():
    # The reranker is right for user 1 and wrong for users 2 and 3; the retriever is right for users 2 and 3.
    cands = np.array([[1, 2], [3, 4], [5, 6]])
    targets = np.array([1, 4, 6])
    cset = CandidateSet(np.array([1, 2, 3]), [np.array([9])] * 3, cands, targets, np.array([0, 1, 1]),
                        retrieval_scores=np.array([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]))  # fmt: skip
    reranker = Fixed([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    weight, curve = tune_weight(reranker, cset, "hit_at_1", ks=(1,))
    assert curve[0.0] == pytest.approx(1 / 3) and curve[weight] == pytest.approx(2 / 3) and weight > 0


def test_final_scores_use_the_stored_weight_only_with_retrieval_scores():
    cands = np.array([[5, 6, 0]])
    retrieval = np.array([[0.0, 10.0, -np.inf]])
    plain = final_scores(Fixed([[2.0, 1.0, 0.0]]), [np.array([1])], cands, None)
    assert plain.argmax().item() == 0 and torch.isneginf(plain[0, 2])
    fused = final_scores(Fixed([[2.0, 1.0, 0.0]], weight=8.0), [np.array([1])], cands, retrieval)
    assert fused.argmax().item() == 1 and torch.isneginf(fused[0, 2])


def test_the_grid_ends_at_the_retriever_order_and_tuning_can_pick_it():
    """Weight 8 still lets a confident reranker overturn a near-tie of the retriever; the grid's retriever end does
    not: it orders by the retriever, breaking only exact retriever ties by the reranker."""
    cands = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    targets = np.array([1, 4, 8])
    retrieval = np.array([[10.0, 9.999, 0.0], [10.0, 9.999, 0.0], [5.0, 5.0, 1.0]])  # user 3: a tie, 7 vs 8
    rerank = [[0.0, 1.0, -1.0], [0.0, 1.0, -1.0], [0.0, 1.0, -1.0]]  # always prefers the second slot
    cset = CandidateSet(np.array([1, 2, 3]), [np.array([20])] * 3, cands, targets, np.array([0, 0, 1]), retrieval)
    weight, curve = tune_weight(Fixed(rerank), cset, "hit_at_1", ks=(1,))
    assert WEIGHTS[-1] == RETRIEVER_ORDER and weight == RETRIEVER_ORDER
    assert curve[8.0] == pytest.approx(1 / 3) and curve[RETRIEVER_ORDER] == pytest.approx(1.0)
    fused = evaluate_lists(Fixed(rerank).score, cset, ks=(1,), fusion_weight=weight)
    assert fused.order.tolist() == [[1, 2, 3], [4, 5, 6], [8, 7, 9]]  # the retriever's order; its tie: reranker's
    stored = json.loads(json.dumps({"fusion_weight": weight}, allow_nan=False))  # strict JSON in config.json
    again = final_scores(Fixed(rerank, weight=stored["fusion_weight"]), [np.array([20])] * 3, cands, retrieval)
    assert torch.sort(again, dim=1, descending=True, stable=True).indices.tolist() == [[0, 1, 2], [0, 1, 2], [1, 0, 2]]


def test_empty_slots_stay_last_at_every_weight():
    cands = np.array([[5, 6, 0, 0]])
    retrieval = np.array([[2.0, 1.0, -np.inf, -np.inf]])
    for weight in WEIGHTS:
        fused = fuse(torch.tensor([[1.0, 2.0, 0.0, 0.0]]), retrieval, cands, weight)
        assert torch.isneginf(fused[0, 2:]).all() and torch.isfinite(fused[0, :2]).all(), (weight, fused)


class PoolRetriever:
    """A 'retriever' over 5 items that prefers lower ids."""

    n_items = 5

    def score(self, histories, users=None):
        return torch.tensor([0.0, 5.0, 4.0, 3.0, 2.0, 1.0]).repeat(len(histories), 1)


def test_weight_zero_serves_full_lists_when_the_pool_runs_short():
    """Lists of 5 slots, 2 history items masked: 3 real items and 2 empty slots. At weight 0 the empty slots must
    still sort last (not NaN first), so the served top 3 holds the 3 real items."""
    served = TwoStageModel()
    served.pipeline = TwoStage(PoolRetriever(), Fixed([[1.0, 2.0, 3.0, 4.0, 5.0]], weight=0.0), 10, 10)
    served.titles = {}
    items, scores = served.pipeline.recommend([np.array([1, 2])], 3)
    assert items.tolist() == [[5, 4, 3]] and np.isfinite(scores).all()  # the reranker's order, real items only
    answer = served.predict(None, pd.DataFrame({"history": [[1, 2]], "k": [3]}))
    assert answer["items"][0] == [5, 4, 3]
