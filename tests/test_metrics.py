"""Metric values against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recsys_core.evaluation import evaluate_full_ranking, mask_history
from recsys_core.metrics import MetricAccumulator, format_table, metrics_from_ranks, monitored_value, target_ranks


def ranks(rows, targets):
    return target_ranks(torch.tensor(rows, dtype=torch.float32), torch.tensor(targets))


def test_rank_counts_items_scored_higher():
    assert ranks([[0.1, 0.9, 0.5, 0.3]], [2]).tolist() == [1.0]
    assert ranks([[0.1, 0.9, 0.5, 0.3]], [1]).tolist() == [0.0]
    assert ranks([[0.1, 0.9, 0.5, 0.3]], [0]).tolist() == [3.0]


def test_ties_count_against_the_true_item():
    # Three items tie with the target: it ranks behind all of them (a constant model gets no credit).
    assert ranks([[0.5, 0.5, 0.5, 0.5, 0.1]], [2]).tolist() == [3.0]
    assert ranks([[1.0, 1.0, 1.0]], [0]).tolist() == [2.0]


def test_masked_absent_and_nan_targets_are_misses():
    assert ranks([[-math.inf, 0.2, 0.1]], [0]).tolist() == [math.inf]
    assert ranks([[0.3, 0.2, 0.1]], [-1]).tolist() == [math.inf]
    assert ranks([[float("nan"), 0.2, 0.1]], [0]).tolist() == [math.inf]
    assert ranks([[float("nan"), 0.2, 0.1]], [2]).tolist() == [1.0]  # a NaN item does not outrank anyone


def test_metric_values_by_hand():
    r = torch.tensor([0.0, 1.0, 4.0, 9.0, math.inf], dtype=torch.float64)
    m = metrics_from_ranks(r, ks=(1, 5, 10))
    assert m["hit_at_1"].tolist() == [1, 0, 0, 0, 0]
    assert m["hit_at_5"].tolist() == [1, 1, 1, 0, 0]
    assert m["recall_at_10"].tolist() == [1, 1, 1, 1, 0]
    expected_ndcg5 = [1.0, 1 / math.log2(3), 1 / math.log2(6), 0.0, 0.0]
    assert m["ndcg_at_5"].tolist() == pytest.approx(expected_ndcg5)
    assert m["ndcg_at_10"].tolist()[3] == pytest.approx(1 / math.log2(11))
    assert m["mrr"].tolist() == pytest.approx([1.0, 0.5, 0.2, 0.1, 0.0])


def test_k_larger_than_the_list():
    # Four candidates, K = 20: every present target is a hit; the absent one is not.
    r = ranks([[0.4, 0.3, 0.2, 0.1], [0.4, 0.3, 0.2, 0.1]], [3, -1])
    m = metrics_from_ranks(r, ks=(20,))
    assert m["hit_at_20"].tolist() == [1.0, 0.0]
    assert m["ndcg_at_20"].tolist() == pytest.approx([1 / math.log2(5), 0.0])


def test_accumulator_averages_over_every_user():
    acc = MetricAccumulator(ks=(1,))
    acc.add_ranks(torch.tensor([0.0, math.inf]))
    acc.add_ranks(torch.tensor([3.0]))
    result = acc.result()
    assert result["hit_at_1"] == pytest.approx(1 / 3)
    assert result["mrr"] == pytest.approx((1 + 0 + 0.25) / 3)


def test_full_ranking_masks_history_and_padding():
    scores = torch.tensor([[9.0, 8.0, 7.0, 1.0, 0.5]])
    masked = mask_history(scores.clone(), [np.array([1, 2])])
    assert torch.isneginf(masked[0, :3]).all() and masked[0, 3] == 1.0


def test_full_ranking_evaluation_counts_and_orders_users():
    n_items = 6
    preferences = torch.tensor([0.0, 6, 5, 4, 3, 2, 1])  # item 1 best ... item 6 worst

    seen_users = []

    def score(histories, users):
        seen_users.extend((int(u), len(h)) for u, h in zip(users, histories, strict=True))
        return preferences.repeat(len(histories), 1)

    histories = [np.array([1]), np.array([1, 2, 3]), np.array([], dtype=np.int64)]
    targets = np.array([2, 4, 6])  # ranks after masking: 0, 0, 5
    result = evaluate_full_ranking(score, histories, targets, np.array([1, 2, 3]), ks=(1, 5), batch_size=2, keep_top=3)
    assert result.target_rank.tolist() == [0.0, 0.0, 5.0]
    assert result.metrics["hit_at_1"] == pytest.approx(2 / 3) and result.metrics["hit_at_5"] == pytest.approx(2 / 3)
    assert result.top_items.tolist() == [[2, 3, 4], [4, 5, 6], [1, 2, 3]]
    assert n_items == 6
    assert sorted(seen_users) == [(1, 1), (2, 3), (3, 0)]  # each user's id reaches the model with its own history


def test_list_mrr_is_named_apart_from_the_full_ranking_mrr():
    """Lists of 3 candidates report ``mrr_at_3`` (a true item outside the list is a miss), never ``mrr``, which is
    the full-ranking MRR; ``training.monitor: mrr`` reads whichever of the two a validation reports."""
    from recsys_core.leaderboard import Entry, RunRecord
    from recsys_core.rerank.data import CandidateSet
    from recsys_core.rerank.evaluate import evaluate_lists, list_order_result
    from recsys_core.rerank.fusion import tune_weight

    cset = CandidateSet(np.array([1, 2]), [np.array([9])] * 2, np.array([[1, 2, 3], [4, 5, 6]]), np.array([2, 7]),
                        np.array([1, -1]), retrieval_scores=np.array([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]]))  # fmt: skip
    reranked = evaluate_lists(lambda h, c: torch.as_tensor(c, dtype=torch.float32), cset, ks=(1,))
    for metrics in (reranked.all_users, reranked.hit_users, list_order_result(cset, ks=(1,)).all_users):
        assert "mrr" not in metrics and "mrr_at_3" in metrics
    assert reranked.all_users["mrr_at_3"] == pytest.approx((1 / 2 + 0) / 2)  # item 2 is second of 3; user 2 missed
    assert monitored_value(reranked.all_users, "mrr") == reranked.all_users["mrr_at_3"]
    full = evaluate_full_ranking(lambda h, u: torch.tensor([[0.0, 3, 2, 1]]), [np.array([1])], np.array([2]),
                                 np.array([1]), ks=(1,)).metrics  # fmt: skip
    assert full["mrr"] == 1.0 and monitored_value(full, "mrr") == 1.0 and "mrr_at_3" not in full
    with pytest.raises(KeyError, match="ndcg_at_10"):
        monitored_value(full, "ndcg_at_10")
    weight, curve = tune_weight(type("R", (), {"score": staticmethod(lambda h, c: torch.zeros(c.shape))})(), cset,
                                "mrr", ks=(1,))  # fmt: skip
    assert curve[weight] == pytest.approx(1 / 4)
    table = format_table({"full": full, "lists": reranked.all_users}, ks=(1,))
    assert "MRR " in table and "MRR@3" in table
    entry = Entry("rerank m", [RunRecord("r", "42", {"test/mrr_at_3": 0.25, "val/mrr_at_3": 0.5})])
    assert entry.list_length == 3  # the compare table reads a ranked list's length from its MRR@N


def test_monitor_mrr_reads_the_list_mrr_when_a_reranker_validates_on_lists():
    """``training.monitor: mrr`` (allowed by the config) on a model validated on candidate lists early-stops on the
    lists' ``mrr_at_{N}``: the loop reads it through ``monitored_value``."""
    from recsys_core.rerank.data import CandidateSet
    from recsys_core.rerank.evaluate import evaluate_lists
    from recsys_core.training import LoopSettings, fit

    cset = CandidateSet(np.array([1, 2]), [np.array([9])] * 2, np.array([[1, 2, 3], [4, 5, 6]]), np.array([2, 6]),
                        np.array([1, 2]))  # fmt: skip

    class Task:
        model = torch.nn.Linear(1, 1)

        def optimizer(self, lr):
            return torch.optim.SGD(self.model.parameters(), lr=lr)

        def batches(self, epoch, rng):
            yield torch.ones(1, 1)

        def loss(self, batch):
            return self.model(batch).sum() ** 2

        def validate(self):
            return evaluate_lists(lambda h, c: torch.as_tensor(c, dtype=torch.float32), cset, ks=(1,)).all_users

    settings = LoopSettings(epochs=1, lr=0.1, patience=1, monitor="mrr", mixed_precision=False, resume=False)
    history = fit(Task(), settings, torch.device("cpu"))
    assert history.best_score == pytest.approx((1 / 2 + 1) / 2)  # item 2 second of 1..3; item 6 first of 4..6
    assert "val_mrr_at_3" in history.epochs[0] and "val_mrr" not in history.epochs[0]
