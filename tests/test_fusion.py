"""Score fusion: z-scores per list, the weight moves the order from the reranker's to the retriever's, tuning picks
the best validation weight, and the two-stage model applies what the reranker stored."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys_core.rerank.data import CandidateSet
from recsys_core.rerank.fusion import final_scores, fuse, standardise, tune_weight


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
