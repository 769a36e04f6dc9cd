"""Ranking metrics for one held-out item per user: Recall, NDCG, Hit at K, and MRR. Vectorised over a batch.

The rank of the true item counts every other item scored at least as high (ties count against the true item), so a
model that gives every item the same score ranks it last instead of profiting from the item order. Items masked with
-inf (history, padding) can never outrank it. A user whose true item is absent from a candidate list has rank = inf:
a miss at every K, counted in the average.

With one relevant item, Recall@K equals Hit@K; both are reported because users expect both names.

Two MRRs, named apart: ``mrr`` is the full-ranking MRR (every item scored; stage 1); ``mrr_at_{N}`` is the MRR over
candidate lists of N items (stage 2, the two-stage model: a true item outside the list is a miss, reciprocal rank 0),
e.g. ``mrr_at_50``. ``list_metrics`` renames the one into the other; ``monitored_value`` lets ``training.monitor: mrr``
read whichever of the two a validation reports.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import torch

DEFAULT_KS = (5, 10, 20)
METRICS = ("recall", "ndcg", "hit")


def target_ranks(scores: torch.Tensor, target_index: torch.Tensor) -> torch.Tensor:
    """0-based rank of column ``target_index[b]`` in row b of ``scores`` (B, C); target_index < 0 means absent."""
    scores = scores.float()
    scores = torch.where(torch.isnan(scores), -math.inf, scores)  # a NaN score never helps an item
    present = target_index >= 0
    safe = target_index.clamp(min=0)
    target_score = scores.gather(1, safe.unsqueeze(1))
    ahead = (scores >= target_score).sum(dim=1) - 1  # others at least as high (the target ties with itself)
    rank = ahead.to(torch.float64)
    rank[~present] = math.inf
    rank[present & torch.isneginf(target_score.squeeze(1))] = math.inf  # a masked target cannot be found
    return rank


def metrics_from_ranks(ranks: torch.Tensor, ks: Iterable[int] = DEFAULT_KS) -> dict[str, torch.Tensor]:
    """Per-user metric values (float64 tensors of length B) keyed like ``ndcg_at_10`` and ``mrr``."""
    out: dict[str, torch.Tensor] = {}
    finite = torch.isfinite(ranks)
    for k in ks:
        hit = (ranks < k).to(torch.float64)
        out[f"recall_at_{k}"] = hit
        out[f"hit_at_{k}"] = hit
        gain = torch.zeros_like(ranks)
        gain[finite] = 1.0 / torch.log2(ranks[finite] + 2.0)
        out[f"ndcg_at_{k}"] = gain * hit
    rr = torch.zeros_like(ranks)
    rr[finite] = 1.0 / (ranks[finite] + 1.0)
    out["mrr"] = rr
    return out


def metric_names(ks: Iterable[int] = DEFAULT_KS) -> list[str]:
    return [f"{m}_at_{k}" for m in METRICS for k in ks] + ["mrr"]


class MetricAccumulator:
    """Sums per-user values over batches; ``result()`` averages over every user seen."""

    def __init__(self, ks: Iterable[int] = DEFAULT_KS):
        self.ks = tuple(ks)
        self.sums = {name: 0.0 for name in metric_names(self.ks)}
        self.count = 0

    def add_ranks(self, ranks: torch.Tensor) -> None:
        for name, values in metrics_from_ranks(ranks.cpu(), self.ks).items():
            self.sums[name] += float(values.sum())
        self.count += int(ranks.numel())

    def result(self) -> dict[str, float]:
        if not self.count:
            raise ValueError("no users were evaluated")
        return {name: total / self.count for name, total in self.sums.items()}


def list_mrr_name(width: int) -> str:
    """The name of the MRR over candidate lists of ``width`` items: ``mrr_at_{width}``."""
    return f"mrr_at_{int(width)}"


def list_metrics(metrics: dict[str, float], width: int) -> dict[str, float]:
    """Metrics computed on candidate lists of ``width`` items, their ``mrr`` renamed ``mrr_at_{width}`` (the
    full-ranking name ``mrr`` stays for stage 1)."""
    return {(list_mrr_name(width) if name == "mrr" else name): value for name, value in metrics.items()}


_LIST_MRR = re.compile(r"mrr_at_\d+")


def monitored_value(metrics: dict[str, float], monitor: str) -> float:
    """``metrics[monitor]``; ``monitor`` ``mrr`` on list metrics (which have no ``mrr``) reads their ``mrr_at_{N}``,
    so that ``training.monitor: mrr`` means the MRR of whatever the model is validated on (full ranking for a
    retriever, the validation lists for a reranker)."""
    if monitor in metrics:
        return metrics[monitor]
    if monitor == "mrr":
        found = [name for name in metrics if _LIST_MRR.fullmatch(name)]
        if len(found) == 1:
            return metrics[found[0]]
    raise KeyError(f"the validation metrics have no {monitor!r}; they are: {', '.join(metrics)}")


def prefixed(metrics: dict[str, float], split: str) -> dict[str, float]:
    """``{"ndcg_at_10": x}`` -> ``{"val/ndcg_at_10": x}``: the names MLflow and DVC use."""
    return {f"{split}/{name}": value for name, value in metrics.items()}


def format_table(
    rows: dict[str, dict[str, float]], ks: Iterable[int] = DEFAULT_KS, list_length: int | None = None
) -> str:
    """Readable table: one block per row label, metrics as lines, K as columns. With ``list_length`` (the ranked
    lists hold that many items), a K above it shows ``n/a``: its value would only repeat the one at that length."""
    ks = tuple(ks)
    width = max([12, *(len(label) + 1 for label in rows)])
    lines = []

    def cell(metrics: dict[str, float], name: str, k: int) -> str:
        return f"{'n/a':>10}" if list_length is not None and k > list_length else f"{metrics[name]:>10.4f}"

    for label, metrics in rows.items():
        lines.append(f"{label:<{width}}" + "".join(f"{'@' + str(k):>10}" for k in ks))
        for m in METRICS:
            lines.append(f"  {m.capitalize():<{width - 2}}" + "".join(cell(metrics, f"{m}_at_{k}", k) for k in ks))
        for name, value in metrics.items():
            if name == "mrr" or _LIST_MRR.fullmatch(name):  # full ranking: MRR; lists of N items: MRR@N
                title = "MRR" if name == "mrr" else f"MRR@{name.rsplit('_', 1)[1]}"
                lines.append(f"  {title:<{width - 2}}{value:>10.4f}")
    if list_length is not None and any(k > list_length for k in ks):
        lines.append(f"n/a: K above the {list_length} items of each ranked list.")
    return "\n".join(lines)
