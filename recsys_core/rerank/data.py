"""What rerankers read: candidate lists to score (ground truth or retrieved) and training examples.

A CandidateSet holds, per user, the input history, the candidate ids (0-padded to a common length) and where the
true item sits in the list (-1 when the retriever missed it: that user still counts, as a miss).
Training examples are prefixes of the train sequences with their next item; validation and test items never appear
in them, neither as history, nor as target, nor as a negative.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from recsys_core.candidates import sample_negatives
from recsys_core.data.store import Sequences
from recsys_core.errors import LineageError, MissingArtifactError
from recsys_core.evaluation import mask_history, split_inputs


@dataclass
class CandidateSet:
    users: np.ndarray  # (U,)
    histories: list[np.ndarray]
    candidates: np.ndarray  # (U, K) item ids, 0 = no candidate in that slot
    targets: np.ndarray  # (U,)
    target_index: np.ndarray  # (U,) position of the target in its list, -1 if absent
    retrieval_scores: np.ndarray | None = None  # (U, K) the retriever's scores (retrieval mode), -inf in empty slots

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


def target_index_of(candidates: np.ndarray, targets: np.ndarray) -> np.ndarray:
    match = candidates == targets[:, None]
    return np.where(match.any(axis=1), match.argmax(axis=1), -1)


def _rows_for_users(table: pd.DataFrame, users: np.ndarray, split: str, fix: str) -> pd.DataFrame:
    """The ``split`` rows of a candidate table in user order; every user must have one."""
    rows = table[table["split"] == split].set_index("user_id").reindex(users)
    if rows["target"].isna().any():
        missing = users[rows["target"].isna().to_numpy()][:5].tolist()
        raise MissingArtifactError(f"the candidate lists lack {split} users {missing}; {fix}")
    return rows


def from_ground_truth(table: pd.DataFrame, seqs: Sequences, split: str) -> CandidateSet:
    """Rows of gt_candidates.parquet for ``split``, with the matching input histories."""
    histories, targets, users = split_inputs(seqs, split)
    rows = _rows_for_users(table, users, split, "run the gt_candidates stage again")
    if not np.array_equal(rows["target"].to_numpy(np.int64), targets):
        raise MissingArtifactError(
            "gt_candidates targets differ from the prepared split; run the gt_candidates stage again"
        )
    candidates = np.stack([np.asarray(c, dtype=np.int64) for c in rows["candidates"]])
    return CandidateSet(users, histories, candidates, targets, target_index_of(candidates, targets))


def from_retrieved(table: pd.DataFrame, seqs: Sequences, split: str, top_k: int) -> CandidateSet:
    """The retriever's top ``top_k`` for ``split`` (retrieved.csv rows), in the retriever's order."""
    histories, targets, users = split_inputs(seqs, split)
    rows = _rows_for_users(table, users, split, "retrain the retriever on this dataset")
    wrong = np.flatnonzero(rows["target"].to_numpy(np.int64) != targets)
    if len(wrong):
        raise LineageError(
            f"the retrieved lists' {split} targets differ from the prepared split for {len(wrong)} of {len(users)} "
            f"users (user {users[wrong[0]]}: target {int(rows['target'].iloc[wrong[0]])} in the lists, "
            f"{int(targets[wrong[0]])} in the split): the retriever was trained on other prepared data; retrain it "
            "on this data (`dvc repro train_retrieval`) and promote it"
        )
    candidates = _pack(list(rows["candidates"]), top_k)
    scores = np.full(candidates.shape, -np.inf)
    for row, values in enumerate(rows["scores"]):
        values = np.asarray(values[:top_k], dtype=np.float64)
        scores[row, : len(values)] = values
    return CandidateSet(users, histories, candidates, targets, target_index_of(candidates, targets), scores)


@dataclass
class TrainingExamples:
    """Prefix examples: history = train[:t], the next item train[t] is the target, among shuffled candidates."""

    users: np.ndarray
    histories: list[np.ndarray]
    candidates: np.ndarray  # (E, K)
    target_index: np.ndarray  # (E,)


def _prefixes(seqs: Sequences, max_per_user: int | None) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Every prefix train[:t] (t >= 1) with its next item; ``max_per_user`` keeps each user's most recent ones."""
    users, histories, targets = [], [], []
    for user in range(1, len(seqs.train)):
        train = seqs.train[user]
        first = 1 if max_per_user is None else max(1, len(train) - max_per_user)
        for t in range(first, len(train)):
            users.append(user)
            histories.append(train[:t])
            targets.append(train[t])
    return np.asarray(users, dtype=np.int64), histories, np.asarray(targets, dtype=np.int64)


def training_examples(
    seqs: Sequences, n_items: int, n_candidates: int, rng: np.random.Generator, max_per_user: int | None = None
) -> TrainingExamples:
    """ground_truth mode: the true next item + (n_candidates - 1) negatives the user never interacted with in any
    split, shuffled."""
    users_arr, histories, targets = _prefixes(seqs, max_per_user)
    seen = _all_seen(seqs, n_items)
    negatives = sample_negatives(users_arr, seen, n_items + 1, n_items, n_candidates - 1, rng, None)
    lists = rng.permuted(np.column_stack([targets, negatives]), axis=1)
    return TrainingExamples(users_arr, histories, lists, target_index_of(lists, targets))


def held_out_of(seqs: Sequences, users: np.ndarray) -> list[np.ndarray]:
    return [np.array([seqs.val[u], seqs.test[u]]) for u in users]


def retrieval_training_examples(
    seqs: Sequences,
    score,
    n_candidates: int,
    rng: np.random.Generator,
    max_per_user: int | None = None,
    batch_size: int = 256,
) -> TrainingExamples:
    """retrieval mode: each prefix's candidates are the retriever's top ``n_candidates`` (``score``: histories ->
    (B, N+1) scores; the retriever was trained on the train split only). The prefix itself and the user's validation
    and test items are masked out before taking the top, so held-out items never enter training; prefixes whose next
    item was not retrieved are dropped (nothing to learn from them).

    A prefix with fewer unblocked items than ``n_candidates`` gets a shorter list: the masked (-inf) slots of the top
    are dropped, not kept as items, and the list is padded with 0 up to ``n_candidates``. Lists are shuffled among
    their real items, the 0 slots staying last (see ``shuffle_filled``).

    ``score`` is called with histories only, so a collaborative retriever (VBPR, MMGCN, BM3) scores each prefix by
    fold-in (the mean of its items' vectors), never with the user's learned vector: that vector was trained on the
    user's whole train sequence, the prefix's own next item included, so it would leak the target into the list."""
    import torch

    users, histories, targets = _prefixes(seqs, max_per_user)
    kept, lists = [], []
    for start in range(0, len(users), batch_size):
        stop = start + batch_size
        hist = histories[start:stop]
        held_out = held_out_of(seqs, users[start:stop])
        blocked = [np.concatenate([h, extra]) for h, extra in zip(hist, held_out, strict=True)]
        scores = mask_history(score(hist).float(), blocked)
        values, top = torch.topk(scores, min(n_candidates, scores.shape[1] - 1), dim=1)
        top = top.cpu().numpy()
        top[torch.isneginf(values).cpu().numpy()] = 0  # masked slots (history, held out, padding): no candidate
        top = _pack(list(top), n_candidates)
        hit = (top == targets[start:stop, None]).any(axis=1)
        kept.extend(np.flatnonzero(hit) + start)
        lists.append(top[hit])
    keep = np.asarray(kept, dtype=np.int64)
    shuffled = shuffle_filled(np.concatenate(lists) if lists else np.zeros((0, n_candidates), np.int64), rng)
    return TrainingExamples(
        users[keep], [histories[i] for i in keep], shuffled, target_index_of(shuffled, targets[keep])
    )


def shuffle_filled(lists: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each row's real ids (non-zero) in a random order, its 0 slots (no candidate) kept at the end: a row with k
    real items holds them in its first k slots, so its target index is below k."""
    keys = rng.random(lists.shape)
    keys[lists == 0] = 2.0  # after every real id (the keys of real ids are in [0, 1))
    return np.take_along_axis(lists, np.argsort(keys, axis=1, kind="stable"), axis=1)


class GroundTruthExamples:
    """ground_truth mode's source of training lists: fresh negatives and a fresh order at every draw."""

    def __init__(self, seqs: Sequences, n_items: int):
        self.seqs, self.n_items = seqs, n_items

    def draw(self, width: int, rng: np.random.Generator, max_per_user: int | None = None) -> TrainingExamples:
        return training_examples(self.seqs, self.n_items, width, rng, max_per_user)


@dataclass
class RetrievedExamples:
    """retrieval mode's source of training lists: the retriever's top ``width`` for each train prefix (computed once
    per (width, max_per_user), since the retriever does not change), shuffled afresh at every draw.

    ``score`` takes histories only: prefixes are scored without a user (fold-in for the collaborative retrievers),
    because a user's learned vector was trained on the prefix's own next item (see ``retrieval_training_examples``).
    A list shorter than ``width`` (too few unblocked items) is 0-padded at its end; the shuffle never moves the
    padding, so a consumer can strip trailing zeros and keep ``target_index``."""

    seqs: Sequences
    score: Callable  # histories -> (B, N+1) scores, e.g. the champion retriever's ``score``
    _cache: dict = field(default_factory=dict, repr=False)

    def draw(self, width: int, rng: np.random.Generator, max_per_user: int | None = None) -> TrainingExamples:
        key = (width, max_per_user)
        if key not in self._cache:
            self._cache[key] = retrieval_training_examples(self.seqs, self.score, width, np.random.default_rng(0),
                                                           max_per_user)  # fmt: skip
        ex = self._cache[key]
        lists = shuffle_filled(ex.candidates, rng)
        targets = ex.candidates[np.arange(len(ex.users)), ex.target_index]
        return TrainingExamples(ex.users, ex.histories, lists, target_index_of(lists, targets))


ExampleSource = GroundTruthExamples | RetrievedExamples


def _all_seen(seqs: Sequences, n_items: int) -> np.ndarray:
    """Sorted keys user*(N+1)+item of every interaction in every split (what negatives must avoid)."""
    base = n_items + 1
    keys = [u * base + np.concatenate([seqs.train[u], [seqs.val[u], seqs.test[u]]]) for u in range(1, len(seqs.train))]
    return np.unique(np.concatenate(keys).astype(np.int64))
