"""The two-stage recommender: the retriever's top ``retrieval_top_k`` over the whole pool, its first
``rerank_top_k`` reordered by the reranker, then the top ``k`` returned.

``users`` (one id per history: a training user's id 1..U, 0 = none; or None) reaches the retriever everywhere:
``candidate_set`` (what ``evaluate_pipeline`` evaluates, with every validation / test user's id) and ``recommend``
(what the served two-stage model answers, with the request's ``user_id``) run the same ``candidates``, so a served
request with a user's history and id gets exactly the list and scores evaluated for that user. Collaborative
retrievers (VBPR, MMGCN, BM3) score a known user with its learned vector, a history without a user by fold-in;
sequential ones (LRURec) ignore the ids."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from recsys_core.evaluation import mask_history
from recsys_core.rerank.base import Reranker
from recsys_core.rerank.data import CandidateSet, target_index_of
from recsys_core.rerank.fusion import final_scores
from recsys_core.retrieval.base import Retriever


@dataclass
class TwoStage:
    retriever: Retriever
    reranker: Reranker
    retrieval_top_k: int
    rerank_top_k: int

    def candidates(self, histories: list[np.ndarray], users: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(B, rerank_top_k) retrieved ids, best first (0 where fewer unseen items exist), and their retrieval
        scores (-inf in empty slots). ``users``: training user ids, for retrievers with learned user vectors."""
        scores = mask_history(self.retriever.score(histories, users).float(), histories)
        k = min(self.retrieval_top_k, scores.shape[1] - 1)
        values, items = torch.topk(scores, k, dim=1)
        items[torch.isinf(values)] = 0
        keep = slice(0, self.rerank_top_k)
        return items[:, keep].cpu().numpy().astype(np.int64), values[:, keep].cpu().numpy().astype(np.float64)

    def recommend(self, histories: list[np.ndarray], k: int,
                  users: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """(B, k) item ids and their final scores, best first (0 / -inf after a list's real items)."""
        cands, retrieval = self.candidates(histories, users)
        scores = final_scores(self.reranker, histories, cands, retrieval)
        values, order = torch.sort(scores, dim=1, descending=True, stable=True)
        items = np.take_along_axis(cands, order.numpy(), axis=1)[:, :k]
        return items, values.numpy()[:, :k]

    def candidate_set(self, histories: list[np.ndarray], targets: np.ndarray, users: np.ndarray,
                      batch_size: int = 256) -> CandidateSet:  # fmt: skip
        """The retrieved lists of every user as a CandidateSet (for evaluation against the true items), each user
        retrieved with its id, as ``recommend`` does for a request that gives the ``user_id``."""
        parts = [self.candidates(histories[i : i + batch_size], np.asarray(users)[i : i + batch_size])
                 for i in range(0, len(histories), batch_size)]  # fmt: skip
        cands = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, self.rerank_top_k), np.int64)
        values = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, self.rerank_top_k))
        return CandidateSet(users, histories, cands, targets, target_index_of(cands, targets), values)
