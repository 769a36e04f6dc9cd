"""Evaluate a reranker on candidate lists, next to the order the lists came in (retrieval only).

Metrics are averaged over every user: a user whose true item is not in the list is a miss at every K. They are also
given over the subset whose true item is in the list, so that reranking quality can be read apart from recall.

The MRR of lists of N candidates is named ``mrr_at_{N}`` (e.g. ``mrr_at_50``, N = the lists' width), not ``mrr``,
which names the full-ranking MRR of stage 1 (see ``recsys_core.metrics``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from recsys_core.metrics import DEFAULT_KS, MetricAccumulator, list_metrics, target_ranks
from recsys_core.rerank.data import CandidateSet

ListScoreFn = Callable[[list[np.ndarray], np.ndarray], torch.Tensor]


@dataclass
class RerankResult:
    all_users: dict[str, float]
    hit_users: dict[str, float] | None  # users whose true item is in the list
    ranks: np.ndarray  # 0-based rank of the true item after reranking (inf if absent)
    order: np.ndarray  # (U, K) candidate ids in reranked order (0 = empty slot)
    scores: np.ndarray  # (U, K) their scores
    n_users: int
    n_hit: int


def _summarise(ranks: np.ndarray, ks: Sequence[int], hit: np.ndarray, width: int) -> tuple[dict, dict | None]:
    """Metrics over all users and over the users with a hit, for lists of ``width`` candidates (MRR: ``mrr_at_{width}``)."""
    acc = MetricAccumulator(ks)
    acc.add_ranks(torch.as_tensor(ranks))
    sub = None
    if hit.any():
        sub_acc = MetricAccumulator(ks)
        sub_acc.add_ranks(torch.as_tensor(ranks[hit]))
        sub = list_metrics(sub_acc.result(), width)
    return list_metrics(acc.result(), width), sub


def score_lists(score: ListScoreFn, cset: CandidateSet, batch_size: int = 256, desc: str = "rerank") -> torch.Tensor:
    """(U, K) scores of every list, empty slots at -inf."""
    parts = []
    for start in tqdm(range(0, len(cset), batch_size), desc=desc, leave=False, unit="batch"):
        stop = start + batch_size
        parts.append(score(cset.histories[start:stop], cset.candidates[start:stop]).float().cpu())
    scores = torch.cat(parts) if parts else torch.zeros(cset.candidates.shape)
    scores[torch.as_tensor(cset.candidates == 0)] = -torch.inf
    return scores


def result_from_scores(scores: torch.Tensor, cset: CandidateSet, ks: Sequence[int] = DEFAULT_KS) -> RerankResult:
    ranks = target_ranks(scores, torch.as_tensor(cset.target_index)).numpy()
    values, idx = torch.sort(scores, dim=1, descending=True, stable=True)
    order = np.take_along_axis(cset.candidates, idx.numpy(), axis=1)
    all_users, hit_users = _summarise(ranks, ks, cset.hit_mask, cset.candidates.shape[1])
    return RerankResult(all_users, hit_users, ranks, order, values.numpy(), len(cset), int(cset.hit_mask.sum()))


def evaluate_lists(score: ListScoreFn, cset: CandidateSet, ks: Sequence[int] = DEFAULT_KS, batch_size: int = 256,
                   desc: str = "rerank", fusion_weight: float | str | None = None) -> RerankResult:  # fmt: skip
    """Rank every list by ``score`` (fused with the retriever's scores when ``fusion_weight`` is given)."""
    scores = score_lists(score, cset, batch_size, desc)
    if fusion_weight is not None and cset.retrieval_scores is not None:
        from recsys_core.rerank.fusion import fuse

        scores = fuse(scores, cset.retrieval_scores, cset.candidates, fusion_weight)
    return result_from_scores(scores, cset, ks)


def list_order_result(cset: CandidateSet, ks: Sequence[int] = DEFAULT_KS) -> RerankResult:
    """Metrics of the lists in the order they came (the retriever's ranking): the baseline reranking must beat."""
    ranks = np.where(cset.hit_mask, cset.target_index, np.inf).astype(np.float64)
    all_users, hit_users = _summarise(ranks, ks, cset.hit_mask, cset.candidates.shape[1])
    scores = -np.tile(np.arange(cset.candidates.shape[1], dtype=np.float64), (len(cset), 1))
    return RerankResult(all_users, hit_users, ranks, cset.candidates, scores, len(cset), int(cset.hit_mask.sum()))
