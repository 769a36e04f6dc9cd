"""Ground-truth candidate lists for reranker evaluation: the true item + (N-1) negatives per user and split.

Negatives are items the user never interacted with in any split, drawn uniformly or in proportion to train
popularity (+1, so every item can be drawn), without repeats, fixed by the seed. Candidate order is shuffled so
that the true item's position carries no signal.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recsys_core.data.preprocess import PreparedDataset
from recsys_core.errors import CandidateSamplingError, MissingArtifactError
from recsys_core.io import atomic_path

log = logging.getLogger(__name__)

EVAL_SPLITS = ("val", "test")
_MAX_ROUNDS = 30


def _history_keys(dataset: PreparedDataset) -> tuple[np.ndarray, int]:
    base = dataset.n_items + 1
    inter = dataset.interactions
    keys = inter["user_id"].to_numpy(np.int64) * base + inter["item_id"].to_numpy(np.int64)
    return np.unique(keys), base


def _in_sorted(keys: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    idx = np.searchsorted(sorted_keys, keys)
    idx = np.minimum(idx, len(sorted_keys) - 1)
    return sorted_keys[idx] == keys


def _probabilities(dataset: PreparedDataset, strategy: str) -> np.ndarray | None:
    if strategy == "uniform":
        return None
    train = dataset.interactions[dataset.interactions["split"] == "train"]
    counts = np.bincount(train["item_id"].to_numpy(), minlength=dataset.n_items + 1)[1:] + 1.0
    return counts / counts.sum()


def sample_negatives(
    users: np.ndarray,
    hist_keys: np.ndarray,
    base: int,
    n_items: int,
    need: int,
    rng: np.random.Generator,
    probs: np.ndarray | None,
) -> np.ndarray:
    """(len(users), need) distinct items per row, none in the user's history. Vectorised rejection sampling."""
    out = np.zeros((len(users), need), dtype=np.int64)
    pending = np.arange(len(users))
    width = max(2 * need, 16)
    for _ in range(_MAX_ROUNDS):
        if not pending.size:
            return out
        draws = rng.choice(n_items, size=(pending.size, width), p=probs) + 1
        keys = users[pending, None] * base + draws
        valid = ~_in_sorted(keys.ravel(), hist_keys).reshape(keys.shape)
        first = np.zeros(keys.size, dtype=bool)
        first[np.unique(keys.ravel(), return_index=True)[1]] = True  # drop repeats within a row
        valid &= first.reshape(keys.shape)
        enough = valid.sum(axis=1) >= need
        take = valid & (np.cumsum(valid, axis=1) <= need)
        out[pending[enough]] = draws[enough][take[enough]].reshape(-1, need)
        pending = pending[~enough]
        width *= 2
    # Users whose history covers most items: draw exactly from the complement.
    all_items = np.arange(1, n_items + 1)
    for row in pending:
        seen = hist_keys[(hist_keys >= users[row] * base) & (hist_keys < (users[row] + 1) * base)] - users[row] * base
        free = np.setdiff1d(all_items, seen, assume_unique=True)
        p = None if probs is None else probs[free - 1] / probs[free - 1].sum()
        out[row] = rng.choice(free, size=need, replace=False, p=p)
    return out


def build_gt_candidates(dataset: PreparedDataset, n_candidates: int, seed: int, strategy: str) -> pd.DataFrame:
    """One row per (user, split) for split in val/test: user_id, split, target, candidates (length n_candidates)."""
    need = n_candidates - 1
    inter = dataset.interactions
    seen = inter.groupby("user_id", observed=True)["item_id"].nunique()
    short = seen[dataset.n_items - seen < need]
    if len(short):
        user = int(short.index[0])
        raise CandidateSamplingError(
            f"user {user} has interacted with {int(short.iloc[0])} of {dataset.n_items} items, leaving fewer than "
            f"{need} unseen items for negatives ({len(short)} users are in this case). Lower "
            f"--rerank_eval_candidates (now {n_candidates}) below {dataset.n_items - int(seen.max()) + 1}."
        )
    hist_keys, base = _history_keys(dataset)
    probs = _probabilities(dataset, strategy)
    frames = []
    for index, split in enumerate(EVAL_SPLITS):
        rng = np.random.default_rng([seed, index])
        rows = inter[inter["split"] == split]
        users = rows["user_id"].to_numpy(np.int64)
        targets = rows["item_id"].to_numpy(np.int64)
        negatives = sample_negatives(users, hist_keys, base, dataset.n_items, need, rng, probs)
        lists = rng.permuted(np.column_stack([targets, negatives]), axis=1).astype(np.int32)
        frames.append(
            pd.DataFrame(
                {
                    "user_id": users.astype(np.int32),
                    "split": split,
                    "target": targets.astype(np.int32),
                    "candidates": list(lists),
                }
            )  # fmt: skip
        )
    return pd.concat(frames, ignore_index=True)


def save_gt_candidates(table: pd.DataFrame, path: Path, meta: dict) -> None:
    n = len(table["candidates"].iloc[0]) if len(table) else 0
    arrow = pa.table(
        {
            "user_id": pa.array(table["user_id"], pa.int32()),
            "split": pa.array(table["split"], pa.string()),
            "target": pa.array(table["target"], pa.int32()),
            "candidates": pa.FixedSizeListArray.from_arrays(
                pa.array(np.concatenate(table["candidates"].to_list()) if n else [], pa.int32()), n
            ),
        }
    ).replace_schema_metadata({k: str(v) for k, v in meta.items()})
    with atomic_path(path) as tmp:
        pq.write_table(arrow, tmp, compression="zstd")


def load_gt_candidates(path: Path) -> tuple[pd.DataFrame, dict]:
    path = Path(path)
    if not path.exists():
        raise MissingArtifactError(f"{path} is missing; run the gt_candidates stage (`recsys gt-candidates`)")
    table = pq.read_table(path)
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    frame = table.to_pandas()
    frame["candidates"] = [np.asarray(c, dtype=np.int64) for c in table.column("candidates").to_pylist()]
    return frame, meta


RETRIEVED_COLUMNS = ("split", "user_id", "target", "target_rank", "candidates", "scores")


def retrieved_table(results: dict) -> pd.DataFrame:
    """Per split and user: the true item, its 0-based rank in the full ranking, and the top-K ids and scores.

    ``results`` maps 'val'/'test' to RankingResult objects kept with their top-K lists. Masked (-inf) slots are
    dropped, so a list is shorter than K only when fewer unseen items exist.
    """
    rows = []
    for split, res in results.items():
        for user, target, rank, items, scores in zip(res.users, res.targets, res.target_rank, res.top_items,
                                                      res.top_scores, strict=True):  # fmt: skip
            keep = np.isfinite(scores)
            rows.append((split, int(user), int(target), float(rank), " ".join(map(str, items[keep])),
                         " ".join(f"{s:.6g}" for s in scores[keep])))  # fmt: skip
    return pd.DataFrame(rows, columns=list(RETRIEVED_COLUMNS))


def read_retrieved(path: Path) -> pd.DataFrame:
    """retrieved.csv back with ``candidates`` and ``scores`` as arrays."""
    path = Path(path)
    if not path.exists():
        raise MissingArtifactError(f"{path} is missing; run the train_retrieval stage first")
    frame = pd.read_csv(path, keep_default_na=False)
    frame["candidates"] = [np.array(s.split(), dtype=np.int64) for s in frame["candidates"]]
    frame["scores"] = [np.array(s.split(), dtype=np.float64) for s in frame["scores"]]
    return frame
