"""What the report shows, computed from the pipeline's files and per-user results: pure functions, so each number
is tested without a store or a browser."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from recsys_core.significance import PairedDelta, paired_bootstrap

CUTOFFS = (10, 20, 30, 50, 75, 100, 150, 200)
BUCKETS = 4


def candidate_recall(ranks: Iterable[float], cutoffs: Sequence[int] = CUTOFFS) -> dict[int, float]:
    """The share of users whose true item the retriever ranks within its first K (0-based rank below K), for each
    K: what a reranker of the top K can reach at best. A miss (negative or non-finite rank) never counts."""
    ranks = np.asarray(list(ranks), dtype=np.float64)
    if not len(ranks):
        raise ValueError("candidate recall needs at least one user's rank")
    found = np.isfinite(ranks) & (ranks >= 0)
    return {k: float((found & (ranks < k)).mean()) for k in cutoffs}


def history_buckets(lengths: Iterable[int], n: int = BUCKETS) -> list[tuple[int, int]]:
    """Up to ``n`` inclusive ranges of history length with about the same number of users each (quantile edges);
    ties at an edge make fewer, never an empty range."""
    lengths = np.asarray(list(lengths), dtype=np.int64)
    edges = np.unique(np.quantile(lengths, np.linspace(0, 1, n + 1), method="lower").astype(np.int64))
    ranges, low = [], int(lengths.min())
    for edge in edges[1:-1]:
        if int(edge) >= low and ((lengths >= low) & (lengths <= edge)).any():
            ranges.append((low, int(edge)))
            low = int(edge) + 1
    if (lengths >= low).any():
        ranges.append((low, int(lengths.max())))
    return ranges


@dataclass(frozen=True)
class BucketGain:
    low: int
    high: int
    delta: PairedDelta

    @property
    def label(self) -> str:
        return f"{self.low}" if self.low == self.high else f"{self.low}–{self.high}"


def gain_by_history(lengths: Iterable[int], retrieval: Iterable[float], two_stage: Iterable[float],
                    n: int = BUCKETS) -> list[BucketGain]:  # fmt: skip
    """Two-stage minus retrieval alone within each history-length bucket, paired per user with its 95% interval:
    where the reranker helps (long histories give it more to read) and where it hurts."""
    lengths = np.asarray(list(lengths), dtype=np.int64)
    a, b = np.asarray(list(retrieval), dtype=np.float64), np.asarray(list(two_stage), dtype=np.float64)
    if not len(lengths) == len(a) == len(b):
        raise ValueError(f"one history length and two values per user: got {len(lengths)}, {len(a)}, {len(b)}")
    out = []
    for low, high in history_buckets(lengths, n):
        mask = (lengths >= low) & (lengths <= high)
        out.append(BucketGain(low, high, paired_bootstrap(a[mask], b[mask])))
    return out


def paired_frames(two_stage: pd.DataFrame, retrieval: pd.DataFrame, lengths: pd.Series, metric: str):
    """(history lengths, retrieval values, two-stage values) aligned on user id; the files must hold the same users
    and targets (they come from one evaluation)."""
    merged = retrieval[["user_id", "target", metric]].merge(
        two_stage[["user_id", "target", metric]], on=["user_id", "target"], suffixes=("_a", "_b"), validate="1:1"
    )
    if len(merged) != len(two_stage) or len(merged) != len(retrieval):
        raise ValueError(
            f"the two-stage and retrieval-only per-user files do not hold the same users and targets "
            f"({len(two_stage)} and {len(retrieval)} rows, {len(merged)} in common)"
        )
    return lengths.loc[merged["user_id"]].to_numpy(), merged[f"{metric}_a"].to_numpy(), merged[f"{metric}_b"].to_numpy()


def at_k_rows(metrics: dict[str, float], split: str, ks: Sequence[int], baseline: str) -> dict[str, dict[str, float]]:
    """{system: {metric_at_k: value}} of the pipeline's metrics.json for one split: retrieval alone, two-stage."""
    rows = {}
    for label, prefix in (("retrieval alone", f"{split}_{baseline}"), ("two-stage", split)):
        rows[label] = {f"{m}_at_{k}": metrics[f"{prefix}/{m}_at_{k}"] for m in ("ndcg", "recall", "hit") for k in ks
                       if f"{prefix}/{m}_at_{k}" in metrics}  # fmt: skip
    return rows


def fusion_sentence(weight: float | str | None) -> str:
    """What the score fusion tuned on validation did to the reranker's order (``rerank/fusion.py``)."""
    if weight is None:
        return ""
    if weight == "retrieval":
        return ("The fusion weight tuned on validation is \"retrieval\": the reranker did not beat the retrieval order "
                "on the validation lists, so the two-stage lists keep the retriever's order (ties broken by the "
                "reranker).")  # fmt: skip
    if float(weight) == 0:
        return "The fusion weight tuned on validation is 0: the two-stage lists are in the reranker's order."
    return (f"The reranker's score is fused with the retriever's (retrieval weight {float(weight):g}, tuned on "
            "validation; both standardised within each list).")  # fmt: skip
