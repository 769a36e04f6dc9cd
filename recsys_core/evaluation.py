"""Full-ranking evaluation: score every item for every user, mask the input history, rank the held-out item.

Validation input = the train sequence; test input = train + the validation item (which is then also masked).
Every user is counted. Optionally keeps each user's top-K items and scores (the retrieved candidates).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from recsys_core.data.store import Sequences
from recsys_core.metrics import DEFAULT_KS, MetricAccumulator, target_ranks

# (histories, user ids) -> (B, N+1) scores, column 0 = padding. Sequential models ignore the user ids.
ScoreFn = Callable[[list[np.ndarray], np.ndarray], torch.Tensor]


def split_inputs(seqs: Sequences, split: str) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """(histories, targets, user ids) for split 'val' or 'test', users 1..U in order."""
    users = np.arange(1, len(seqs.train))
    if split == "val":
        histories = [seqs.train[u] for u in users]
        targets = seqs.val[users]
    elif split == "test":
        histories = [np.append(seqs.train[u], seqs.val[u]) for u in users]
        targets = seqs.test[users]
    else:
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    return histories, targets, users


def mask_history(scores: torch.Tensor, histories: Sequence[np.ndarray]) -> torch.Tensor:
    """Set the padding column and every history item to -inf, in place."""
    rows = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
    cols = np.concatenate(histories) if len(rows) else np.zeros(0, dtype=np.int64)
    scores[:, 0] = -torch.inf
    if len(rows):
        scores[torch.as_tensor(rows, device=scores.device), torch.as_tensor(cols, device=scores.device)] = -torch.inf
    return scores


@dataclass
class RankingResult:
    metrics: dict[str, float]
    users: np.ndarray
    targets: np.ndarray
    target_rank: np.ndarray  # 0-based rank of the true item in the full ranking
    top_items: np.ndarray | None = None  # (U, K)
    top_scores: np.ndarray | None = None


def evaluate_full_ranking(
    score: ScoreFn,
    histories: list[np.ndarray],
    targets: np.ndarray,
    users: np.ndarray,
    ks: Sequence[int] = DEFAULT_KS,
    batch_size: int = 256,
    keep_top: int = 0,
    desc: str = "eval",
) -> RankingResult:
    acc = MetricAccumulator(ks)
    ranks, tops, top_scores = [], [], []
    # Users in order of history length: batches of similar lengths waste little compute on padding.
    order = np.argsort([len(h) for h in histories], kind="stable")
    targets = np.asarray(targets)
    for start in tqdm(range(0, len(histories), batch_size), desc=desc, leave=False, unit="batch"):
        rows = order[start : start + batch_size]
        hist = [histories[i] for i in rows]
        scores = mask_history(score(hist, np.asarray(users)[rows]).float(), hist)
        tgt = torch.as_tensor(targets[rows], device=scores.device, dtype=torch.long)
        batch_ranks = target_ranks(scores, tgt)
        acc.add_ranks(batch_ranks)
        ranks.append(batch_ranks.cpu().numpy())
        if keep_top:
            k = min(keep_top, scores.shape[1] - 1)
            values, items = torch.topk(scores, k, dim=1)
            tops.append(items.cpu().numpy().astype(np.int32))
            top_scores.append(values.cpu().numpy().astype(np.float32))
    back = np.argsort(order)  # rows back in the callers' user order
    return RankingResult(
        metrics=acc.result(),
        users=users,
        targets=targets,
        target_rank=np.concatenate(ranks)[back],
        top_items=np.concatenate(tops)[back] if keep_top else None,
        top_scores=np.concatenate(top_scores)[back] if keep_top else None,
    )
