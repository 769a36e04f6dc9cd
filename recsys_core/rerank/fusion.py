"""Score fusion: the reranker's score plus a weight times the retriever's score, each standardised within the
candidate list (mean 0, standard deviation 1 over the list's filled slots).

The reranker is trained on its own task; the weight is chosen afterwards, on the validation users' retrieved lists
(by `training.monitor`), from the grid ``WEIGHTS``: the finite weights 0 (the reranker's order) to 8, and the
retriever's end, ``RETRIEVER_ORDER`` = the string ``"retrieval"``: order by the retriever's score, ties broken by the
reranker's (the limit of an infinite weight, computed as that order, not as a product). So when the reranker does not
help on validation, the lists keep the retriever's order. The weight is stored with the reranker's settings
(``fusion_weight`` in its config.json: a number, or ``"retrieval"``, which is valid JSON where ``float("inf")`` would
be written as the non-standard ``Infinity``) and used wherever the retriever's scores are at hand (retrieval mode,
the two-stage model). Without retrieval scores (ground-truth lists, the reranker's own pyfunc) the reranker's score is
used alone.

Empty slots (candidate id 0) score -inf for every weight, so they always sort last.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from recsys_core.rerank.data import CandidateSet

RETRIEVER_ORDER = "retrieval"
WEIGHTS: tuple[float | str, ...] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, RETRIEVER_ORDER)


def is_retriever_order(weight: float | str) -> bool:
    """Whether a stored ``fusion_weight`` is the grid's retriever end (``"retrieval"``, or an infinite number)."""
    if isinstance(weight, str):
        if weight != RETRIEVER_ORDER:
            raise ValueError(f"fusion_weight must be a number or {RETRIEVER_ORDER!r}; got {weight!r}")
        return True
    return math.isinf(weight) and weight > 0


def weight_value(weight: float | str) -> float:
    """The weight as a number (the retriever's end is +inf), for comparing grid points."""
    return math.inf if is_retriever_order(weight) else float(weight)


def weight_label(weight: float | str) -> str:
    """Short text for names and logs: ``0.25``, ``8``, ``retrieval`` (valid in MLflow metric names)."""
    return RETRIEVER_ORDER if is_retriever_order(weight) else f"{float(weight):g}"


def standardise(scores: torch.Tensor, filled: torch.Tensor) -> torch.Tensor:
    """Per-row z-scores over the filled slots; empty slots become -inf."""
    masked = torch.where(filled, scores, torch.zeros_like(scores))
    count = filled.sum(dim=1, keepdim=True).clamp(min=1)
    mean = masked.sum(dim=1, keepdim=True) / count
    var = (torch.where(filled, scores - mean, torch.zeros_like(scores)) ** 2).sum(dim=1, keepdim=True) / count
    z = (scores - mean) / var.sqrt().clamp(min=1e-6)
    return torch.where(filled, z, torch.full_like(z, -torch.inf))


def lexicographic_scores(first: torch.Tensor, second: torch.Tensor, filled: torch.Tensor) -> torch.Tensor:
    """Scores that order each row by ``first``, ties broken by ``second`` (both descending; exact ties keep the slot
    order): the best filled slot gets 0, the next -1, and so on; empty slots -inf."""
    neg_inf = torch.full_like(first, -torch.inf)
    by_second = torch.sort(torch.where(filled, second, neg_inf), dim=1, descending=True, stable=True).indices
    by_first = torch.sort(torch.where(filled, first, neg_inf).gather(1, by_second), dim=1, descending=True,
                          stable=True).indices  # fmt: skip
    order = by_second.gather(1, by_first)  # slot ids, best first
    positions = torch.empty_like(order)
    positions.scatter_(1, order, torch.arange(order.shape[1]).expand_as(order).contiguous())
    return torch.where(filled, -positions.to(first.dtype), neg_inf)


def fuse(
    rerank: torch.Tensor, retrieval: np.ndarray | torch.Tensor, candidates: np.ndarray, weight: float | str
) -> torch.Tensor:
    """(B, K) fused scores, -inf in empty slots (id 0) for every weight (0 * -inf would be NaN, which sorts first)."""
    filled = torch.as_tensor(np.asarray(candidates) != 0)
    rr = standardise(rerank.float().cpu(), filled)
    rt = standardise(torch.as_tensor(retrieval, dtype=torch.float32).cpu(), filled)
    if is_retriever_order(weight):
        return lexicographic_scores(rt, rr, filled)
    return torch.where(filled, rr + float(weight) * torch.where(filled, rt, torch.zeros_like(rt)), rr)


def final_scores(reranker, histories: list[np.ndarray], candidates: np.ndarray, retrieval: np.ndarray | None):
    """The scores a reranker hands out for these lists: fused when it has a weight and retrieval scores exist."""
    scores = reranker.score(histories, candidates).float().cpu()
    weight = reranker.hparams.get("fusion_weight")
    if weight is not None and retrieval is not None:
        return fuse(scores, retrieval, candidates, weight)
    scores[torch.as_tensor(candidates == 0)] = -torch.inf
    return scores


def validation_scores(reranker, cset: CandidateSet, batch_size: int = 256) -> torch.Tensor:
    """The reranker's scores of the validation lists: its cross-fitted (out-of-fold) scores when it was trained on
    those very lists (``fits_on_validation``, e.g. ``ltr``), so that tuning never reads in-sample scores."""
    from recsys_core.rerank.evaluate import score_lists

    if getattr(reranker, "fits_on_validation", False):
        return reranker.cross_fitted_scores(cset).float()
    return score_lists(reranker.score, cset, batch_size, desc="fusion")


def fused_validation(reranker, cset: CandidateSet, weight, batch_size: int = 256) -> torch.Tensor:
    """``validation_scores`` fused with the retriever's at ``weight`` (None or no retrieval scores: unfused)."""
    scores = validation_scores(reranker, cset, batch_size)
    if weight is not None and cset.retrieval_scores is not None:
        return fuse(scores, cset.retrieval_scores, cset.candidates, weight)
    return scores


def tune_weight(reranker, cset: CandidateSet, monitor: str, ks: Sequence[int], batch_size: int = 256):
    """The grid weight with the best validation ``monitor`` (ties: the smaller weight, the retriever's end being the
    largest); returns (weight, curve). ``monitor`` ``mrr`` reads the lists' MRR (``mrr_at_{K}``, K the list width)."""
    from recsys_core.metrics import monitored_value
    from recsys_core.rerank.evaluate import result_from_scores

    if cset.retrieval_scores is None:
        raise ValueError("score fusion needs the retriever's scores (retrieval mode)")
    raw = validation_scores(reranker, cset, batch_size)
    curve = {w: monitored_value(result_from_scores(fuse(raw, cset.retrieval_scores, cset.candidates, w), cset,
                                                   ks).all_users, monitor)
             for w in WEIGHTS}  # fmt: skip
    best = max(curve, key=lambda w: (curve[w], -weight_value(w)))
    return best, curve
