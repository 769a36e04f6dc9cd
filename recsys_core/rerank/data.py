"""What rerankers read: candidate lists to score (ground truth or retrieved) and training examples.

A CandidateSet holds, per user, the input history, the candidate ids (0-padded to a common length) and where the
true item sits in the list (-1 when the retriever missed it: that user still counts, as a miss).
Training examples are prefixes of the train sequences with their next item; validation and test items never appear
in them, neither as history, nor as target, nor as a negative.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from recsys_core.candidates import sample_negatives
from recsys_core.data.store import Sequences
from recsys_core.evaluation import split_inputs


@dataclass
class CandidateSet:
    users: np.ndarray  # (U,)
    histories: list[np.ndarray]
    candidates: np.ndarray  # (U, K) item ids, 0 = no candidate in that slot
    targets: np.ndarray  # (U,)
    target_index: np.ndarray  # (U,) position of the target in its list, -1 if absent

    def __len__(self) -> int:
        return len(self.users)

    @property
    def hit_mask(self) -> np.ndarray:
        return self.target_index >= 0


def _pack(lists: list[np.ndarray], width: int) -> np.ndarray:
    out = np.zeros((len(lists), width), dtype=np.int64)
    for row, items in enumerate(lists):
        items = np.asarray(items[:width], dtype=np.int64)
        out[row, : len(items)] = items
    return out


def _target_index(candidates: np.ndarray, targets: np.ndarray) -> np.ndarray:
    match = candidates == targets[:, None]
    return np.where(match.any(axis=1), match.argmax(axis=1), -1)


def from_ground_truth(table: pd.DataFrame, seqs: Sequences, split: str) -> CandidateSet:
    """Rows of gt_candidates.parquet for ``split``, with the matching input histories."""
    histories, targets, users = split_inputs(seqs, split)
    rows = table[table["split"] == split].set_index("user_id").reindex(users)
    if rows["target"].isna().any():
        missing = users[rows["target"].isna().to_numpy()][:5].tolist()
        raise ValueError(f"gt_candidates has no {split} list for users {missing}; run the gt_candidates stage again")
    if not np.array_equal(rows["target"].to_numpy(np.int64), targets):
        raise ValueError("gt_candidates targets differ from the prepared split; run the gt_candidates stage again")
    candidates = np.stack([np.asarray(c, dtype=np.int64) for c in rows["candidates"]])
    return CandidateSet(users, histories, candidates, targets, _target_index(candidates, targets))


def from_retrieved(table: pd.DataFrame, seqs: Sequences, split: str, top_k: int) -> CandidateSet:
    """The retriever's top ``top_k`` for ``split`` (retrieved.csv rows), in the retriever's order."""
    histories, targets, users = split_inputs(seqs, split)
    rows = table[table["split"] == split].set_index("user_id").reindex(users)
    if rows["target"].isna().any():
        missing = users[rows["target"].isna().to_numpy()][:5].tolist()
        raise ValueError(f"retrieved candidates lack {split} users {missing}; retrain the retriever on this dataset")
    candidates = _pack(list(rows["candidates"]), top_k)
    return CandidateSet(users, histories, candidates, targets, _target_index(candidates, targets))


@dataclass
class TrainingExamples:
    """Prefix examples: history = train[:t], the next item train[t] is the target, among shuffled candidates."""

    users: np.ndarray
    histories: list[np.ndarray]
    candidates: np.ndarray  # (E, K)
    target_index: np.ndarray  # (E,)


def training_examples(
    seqs: Sequences, n_items: int, n_candidates: int, rng: np.random.Generator, max_per_user: int | None = None
) -> TrainingExamples:
    """The true next item + (n_candidates - 1) negatives the user never interacted with in any split, shuffled.

    ``max_per_user`` keeps each user's most recent prefixes (all of them when None).
    """
    users, histories, targets = [], [], []
    for user in range(1, len(seqs.train)):
        train = seqs.train[user]
        first = 1 if max_per_user is None else max(1, len(train) - max_per_user)
        for t in range(first, len(train)):
            users.append(user)
            histories.append(train[:t])
            targets.append(train[t])
    users_arr = np.asarray(users, dtype=np.int64)
    seen = _all_seen(seqs, n_items)
    negatives = sample_negatives(users_arr, seen, n_items + 1, n_items, n_candidates - 1, rng, None)
    lists = rng.permuted(np.column_stack([np.asarray(targets, dtype=np.int64), negatives]), axis=1)
    return TrainingExamples(users_arr, histories, lists, _target_index(lists, np.asarray(targets, dtype=np.int64)))


def _all_seen(seqs: Sequences, n_items: int) -> np.ndarray:
    """Sorted keys user*(N+1)+item of every interaction in every split (what negatives must avoid)."""
    base = n_items + 1
    keys = [u * base + np.concatenate([seqs.train[u], [seqs.val[u], seqs.test[u]]]) for u in range(1, len(seqs.train))]
    return np.unique(np.concatenate(keys).astype(np.int64))
