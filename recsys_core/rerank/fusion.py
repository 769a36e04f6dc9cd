"""Score fusion: the reranker's score plus a weight times the retriever's score, each standardised within the
candidate list (mean 0, standard deviation 1 over the list's filled slots).

The reranker is trained on its own task; the weight is chosen afterwards, on the validation users' retrieved lists
(by `training.monitor`), from a fixed grid of finite values, so the result is always a reranking, never retrieval
alone. It is stored with the reranker's settings (``fusion_weight``) and used wherever the retriever's scores are at
hand (retrieval mode, the two-stage model). Without retrieval scores (ground-truth lists, the reranker's own pyfunc)
the reranker's score is used alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from recsys_core.rerank.data import CandidateSet

WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def standardise(scores: torch.Tensor, filled: torch.Tensor) -> torch.Tensor:
    """Per-row z-scores over the filled slots; empty slots become -inf."""
    masked = torch.where(filled, scores, torch.zeros_like(scores))
    count = filled.sum(dim=1, keepdim=True).clamp(min=1)
    mean = masked.sum(dim=1, keepdim=True) / count
    var = (torch.where(filled, scores - mean, torch.zeros_like(scores)) ** 2).sum(dim=1, keepdim=True) / count
    z = (scores - mean) / var.sqrt().clamp(min=1e-6)
    return torch.where(filled, z, torch.full_like(z, -torch.inf))


def fuse(
    rerank: torch.Tensor, retrieval: np.ndarray | torch.Tensor, candidates: np.ndarray, weight: float
) -> torch.Tensor:
    filled = torch.as_tensor(candidates != 0)
    rr = standardise(rerank.float().cpu(), filled)
    rt = standardise(torch.as_tensor(retrieval, dtype=torch.float32), filled)
    return rr + weight * rt


def final_scores(reranker, histories: list[np.ndarray], candidates: np.ndarray, retrieval: np.ndarray | None):
    """The scores a reranker hands out for these lists: fused when it has a weight and retrieval scores exist."""
    scores = reranker.score(histories, candidates).float().cpu()
    weight = reranker.hparams.get("fusion_weight")
    if weight is not None and retrieval is not None:
        return fuse(scores, retrieval, candidates, weight)
    scores[torch.as_tensor(candidates == 0)] = -torch.inf
    return scores


def tune_weight(reranker, cset: CandidateSet, monitor: str, ks: Sequence[int], batch_size: int = 256):
    """The grid weight with the best validation ``monitor`` (ties: the smaller weight); returns (weight, curve)."""
    from recsys_core.rerank.evaluate import result_from_scores, score_lists

    if cset.retrieval_scores is None:
        raise ValueError("score fusion needs the retriever's scores (retrieval mode)")
    raw = score_lists(reranker.score, cset, batch_size, desc="fusion")
    curve = {w: result_from_scores(fuse(raw, cset.retrieval_scores, cset.candidates, w), cset, ks).all_users[monitor]
             for w in WEIGHTS}  # fmt: skip
    best = max(curve, key=lambda w: (curve[w], -w))
    return best, curve
