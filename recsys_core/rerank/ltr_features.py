"""Features of the learning-to-rank reranker (``rerank/ltr.py``) that are counted from interactions or read from
item embeddings, and the check that no training list's own target is counted in them.

**Visible interactions.** Every count statistic is built from a :class:`Visible`: per user, the interactions that
happened before the targets of the lists it will describe, with their times. The rule is "everything before the
target": the validation lists (history = train, target = the validation item) are described by counts over the train
split (``visible_before(seqs, "val")``); the test lists and served requests (history = train + validation item) by
counts over train + validation (``visible_before(seqs, "test")``). A validation list's target therefore never sits in
the counts that describe it: neither its own interaction (popularity) nor the transition history[-1] -> target.

**Families** (each a switch of ``ltr.ltr_features``; ``ltr.py`` adds ``retriever`` and ``models``):

- ``popularity``: the candidate's share of all visible interactions, its share of the newest ``recent_share`` of
  them (by timestamp; ties at the cut all count as recent), and its rank in the list by overall share.
- ``transitions``: counts of consecutive pairs (a, b) in the visible sequences. For each of the last ``window``
  history items s (most recent first), c(s -> candidate) / out(s), out(s) the number of pairs leaving s; features: the
  value from the last item, the sum and the max over the window, and the raw count from the last item.
- ``content``: per modality with embeddings (text, image), the cosine between the candidate's vector and the mean of
  the (unit) vectors of the last ``content_window`` history items that have one; missing -> NaN (LightGBM's missing
  value).
- ``history``: the history length.

Empty slots (candidate id 0) get NaN in every feature.

**The leak check** (:func:`check_no_target_leak`) takes the tables, the visible interactions they were declared to be
built from, and the lists with their targets, and raises :class:`TargetLeakError` when a target sits in its own
history or among its user's visible interactions (so its interaction and the transition into it would be counted),
or when the tables' counts at a target (its popularity, recent popularity, the transition from history[-1] into it
and that item's out-count) differ from an independent recount over the declared visible interactions (tables built
from more than they declare, e.g. from train + validation for validation lists).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recsys_core.data.store import Sequences, shift_split
from recsys_core.errors import RecsysError

log = logging.getLogger(__name__)

ORDER = ("retriever", "models", "popularity", "transitions", "content", "history")


class TargetLeakError(RecsysError):
    """A training list's features would be computed from that list's own target."""


# --- visible interactions ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InteractionTimes:
    """Timestamps aligned with ``Sequences``: ``train[u][i]`` is the time of ``seqs.train[u][i]``, ``val[u]`` that of
    ``seqs.val[u]``."""

    train: list[np.ndarray]
    val: np.ndarray

    def shifted(self, steps: int) -> InteractionTimes:
        """The times of :meth:`Sequences.shifted`'s train and validation items."""
        train, val, _ = shift_split(self.train, self.val, steps)
        return InteractionTimes(train, val)


@dataclass(frozen=True)
class Visible:
    """Interactions visible before some targets: ``sequences[u]`` user u's items in time order (index 0 unused),
    ``times[u]`` their times. ``label`` names them in messages (``train``, ``train+val``)."""

    sequences: list[np.ndarray]
    times: list[np.ndarray]
    label: str

    @property
    def n_interactions(self) -> int:
        return int(sum(len(s) for s in self.sequences))


def _position_times(sequences: list[np.ndarray]) -> list[np.ndarray]:
    """Without timestamps: an interaction's time is its position counted from the user's last one (-1, -2, ...), so
    that the "recent" share holds the latest interactions of every user."""
    return [np.arange(-len(s), 0, dtype=np.float64) for s in sequences]


def visible_before(seqs: Sequences, split: str, times: InteractionTimes | None = None) -> Visible:
    """What may be counted for lists whose target is the ``split`` item: the train split for ``val`` targets, train +
    validation for ``test`` targets (and for served requests, whose history is the whole known sequence)."""
    if split == "val":
        sequences = [np.asarray(s, dtype=np.int64) for s in seqs.train]
        stamps = [np.asarray(t, dtype=np.float64) for t in times.train] if times is not None else None
        label = "train"
    elif split == "test":
        sequences = [np.asarray(seqs.train[0], dtype=np.int64)] + [
            np.append(seqs.train[u], seqs.val[u]).astype(np.int64) for u in range(1, len(seqs.train))
        ]
        stamps = None
        if times is not None:
            stamps = [np.asarray(times.train[0], dtype=np.float64)] + [
                np.append(times.train[u], times.val[u]).astype(np.float64) for u in range(1, len(seqs.train))
            ]
        label = "train+val"
    else:
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    return Visible(sequences, stamps if stamps is not None else _position_times(sequences), label)


def training_visible(seqs: Sequences, times: InteractionTimes | None = None) -> Visible:
    """The interactions counted for the ranker's training lists (the validation lists): the train split only."""
    return visible_before(seqs, "val", times)


def serving_visible(seqs: Sequences, times: InteractionTimes | None = None) -> Visible:
    """The interactions counted for test lists and served requests: train + validation."""
    return visible_before(seqs, "test", times)


def interaction_times(prepared: Path | None, seqs: Sequences) -> InteractionTimes | None:
    """The timestamps of the prepared ``interactions.parquet`` aligned with ``seqs``; None when the file is absent or
    does not match the sequences (the caller then orders by position)."""
    import pandas as pd

    from recsys_core.data.store import INTERACTIONS

    if prepared is None or not (Path(prepared) / INTERACTIONS).exists():
        return None
    frame = pd.read_parquet(Path(prepared) / INTERACTIONS, columns=["user_id", "item_id", "timestamp", "split"])
    split = frame["split"].astype(str).to_numpy()
    users, items = frame["user_id"].to_numpy(np.int64), frame["item_id"].to_numpy(np.int64)
    stamps = frame["timestamp"].to_numpy(np.float64)
    n_users = len(seqs.train) - 1
    train = split == "train"
    t_users, t_items, t_times = users[train], items[train], stamps[train]
    if len(t_users) and np.any(np.diff(t_users) < 0):
        log.warning("%s is not sorted by user; recent popularity falls back to positions", INTERACTIONS)
        return None
    bounds = np.searchsorted(t_users, np.arange(n_users + 2))
    train_times = [t_times[bounds[u] : bounds[u + 1]] for u in range(n_users + 1)]
    if any(not np.array_equal(t_items[bounds[u] : bounds[u + 1]], seqs.train[u]) for u in range(n_users + 1)):
        log.warning("%s does not match the sequences; recent popularity falls back to positions", INTERACTIONS)
        return None
    val_times = np.zeros(n_users + 1, dtype=np.float64)
    val_times[users[split == "val"]] = stamps[split == "val"]
    return InteractionTimes(train_times, val_times)


# --- count tables --------------------------------------------------------------------------------------------------


@dataclass
class CountTables:
    """Popularity and transition counts over one :class:`Visible`. Transitions are stored sparse: ``pair_keys``
    (sorted, src * (N+1) + dst) with ``pair_counts``."""

    n_items: int
    popularity: np.ndarray  # (N+1,) int64
    recent: np.ndarray  # (N+1,) int64: interactions at or after the recent cut
    out_count: np.ndarray  # (N+1,) int64: pairs leaving each item
    pair_keys: np.ndarray  # (P,) int64, sorted
    pair_counts: np.ndarray  # (P,) int64
    recent_cut: float  # the time from which an interaction counts as recent
    source: str = ""  # the Visible's label (not saved with the counts' values; informative)

    @classmethod
    def build(cls, visible: Visible, n_items: int, recent_share: float) -> CountTables:
        base = n_items + 1
        seqs = [s for s in visible.sequences if len(s)]
        items = np.concatenate(seqs) if seqs else np.zeros(0, np.int64)
        times = np.concatenate([t for s, t in zip(visible.sequences, visible.times, strict=True) if len(s)]
                               ) if seqs else np.zeros(0)  # fmt: skip
        popularity = np.bincount(items, minlength=base).astype(np.int64)
        if len(times):
            newest = max(1, math.ceil(recent_share * len(times)))
            cut = float(np.sort(times)[-newest])
        else:
            cut = math.inf
        recent = np.bincount(items[times >= cut], minlength=base).astype(np.int64)
        src = np.concatenate([s[:-1] for s in seqs]) if seqs else np.zeros(0, np.int64)
        dst = np.concatenate([s[1:] for s in seqs]) if seqs else np.zeros(0, np.int64)
        keys, counts = np.unique(src.astype(np.int64) * base + dst, return_counts=True)
        out_count = np.bincount(src, minlength=base).astype(np.int64)
        return cls(n_items, popularity, recent, out_count, keys.astype(np.int64), counts.astype(np.int64), cut,
                   visible.label)  # fmt: skip

    def transitions(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        """Counts of the pairs (src -> dst), elementwise (any shape; id 0 counts 0)."""
        keys = np.asarray(src, dtype=np.int64) * (self.n_items + 1) + np.asarray(dst, dtype=np.int64)
        if not len(self.pair_keys):
            return np.zeros(keys.shape, dtype=np.int64)
        pos = np.clip(np.searchsorted(self.pair_keys, keys), 0, len(self.pair_keys) - 1)
        return np.where(self.pair_keys[pos] == keys, self.pair_counts[pos], 0)

    def tensors(self) -> dict[str, np.ndarray]:
        return {"popularity": self.popularity, "recent": self.recent, "out_count": self.out_count,
                "pair_keys": self.pair_keys, "pair_counts": self.pair_counts,
                "recent_cut": np.array([self.recent_cut], dtype=np.float64)}  # fmt: skip

    @classmethod
    def from_tensors(cls, n_items: int, t: dict[str, np.ndarray], source: str = "") -> CountTables:
        return cls(n_items, t["popularity"], t["recent"], t["out_count"], t["pair_keys"], t["pair_counts"],
                   float(t["recent_cut"][0]), source)  # fmt: skip


# --- the leak check -------------------------------------------------------------------------------------------------


def _recount(visible: Visible, items: set[int], pairs: set[tuple[int, int]], sources: set[int], cut: float):
    """Counts at the given items / pairs / sources, by a plain scan of ``visible`` (independent of the tables)."""
    pop, recent, pair, out = Counter(), Counter(), Counter(), Counter()
    for seq, times in zip(visible.sequences, visible.times, strict=True):
        seq = seq.tolist()
        for item, time in zip(seq, times.tolist(), strict=True):
            if item in items:
                pop[item] += 1
                recent[item] += time >= cut
        for a, b in zip(seq[:-1], seq[1:], strict=False):
            if a in sources:
                out[a] += 1
                if (a, b) in pairs:
                    pair[(a, b)] += 1
    return pop, recent, pair, out


def check_no_target_leak(tables: CountTables, visible: Visible, users: np.ndarray, histories: list[np.ndarray],
                         targets: np.ndarray) -> None:  # fmt: skip
    """Raise :class:`TargetLeakError` unless, for every list (user, history, target): the target is not in its history,
    not among its user's visible interactions, and the tables count exactly what ``visible`` holds at the target (its
    popularity and recent popularity, the transition history[-1] -> target, history[-1]'s out-count). Targets 0 (no
    target) are skipped."""
    users, targets = np.asarray(users, dtype=np.int64), np.asarray(targets, dtype=np.int64)
    problems: list[str] = []
    for row, (user, history, target) in enumerate(zip(users, histories, targets, strict=True)):
        if target <= 0:
            continue
        if np.isin(target, history):
            problems.append(f"list {row} (user {user}): the target {target} is in its own history")
        elif 0 < user < len(visible.sequences) and np.isin(target, visible.sequences[user]):
            problems.append(f"list {row} (user {user}): the target {target} is among the user's counted "
                            f"({visible.label}) interactions, so its own interaction and the transition into it "
                            "are counted")  # fmt: skip
        if len(problems) >= 5:
            break
    if not problems:
        lasts = np.array([h[-1] if len(h) else 0 for h in histories], dtype=np.int64)
        keep = targets > 0
        items = set(targets[keep].tolist())
        pairs = {(int(a), int(b)) for a, b in zip(lasts[keep], targets[keep], strict=True) if a > 0}
        sources = {a for a, _ in pairs}
        pop, recent, pair, out = _recount(visible, items, pairs, sources, tables.recent_cut)
        table_pairs = tables.transitions(lasts, targets)
        for row in np.flatnonzero(keep):
            t, a = int(targets[row]), int(lasts[row])
            found = {"popularity": (int(tables.popularity[t]), pop[t]), "recent": (int(tables.recent[t]), recent[t])}
            if a > 0:
                found["transition"] = (int(table_pairs[row]), pair[(a, t)])
                found["out-count"] = (int(tables.out_count[a]), out[a])
            wrong = {k: v for k, v in found.items() if v[0] != v[1]}
            if wrong:
                what = ", ".join(f"{k} {v[0]} in the tables vs {v[1]} in the {visible.label} interactions"
                                 for k, v in wrong.items())  # fmt: skip
                problems.append(f"list {row} (user {int(users[row])}, target {t}, last item {a}): {what}")
            if len(problems) >= 5:
                break
    if problems:
        raise TargetLeakError(
            "features of the ranker's lists would count their own targets (the tables must hold only interactions "
            f"before the targets: {visible.label}): " + "; ".join(problems)
        )


# --- features -------------------------------------------------------------------------------------------------------

POPULARITY = ("pop_share", "pop_recent_share", "pop_list_rank")
TRANSITIONS = ("trans_last", "trans_sum", "trans_max", "trans_last_count")
HISTORY = ("history_length",)


def feature_names(families: list[str], models: list[str], modalities: list[str]) -> list[str]:
    """The ranker's columns, in a fixed order: family by family (``ORDER``), only the families switched on."""
    names: list[str] = []
    for family in ORDER:
        if family not in families:
            continue
        if family == "retriever":
            names += ["retriever_score", "retriever_rank", "retriever_gap"]
        elif family == "models":
            for model in models:
                names += [f"model_{model}", f"model_{model}_rank"]
        elif family == "popularity":
            names += list(POPULARITY)
        elif family == "transitions":
            names += list(TRANSITIONS)
        elif family == "content":
            names += [f"content_{m}_cos" for m in modalities]
        elif family == "history":
            names += list(HISTORY)
    return names


def list_rank(values: np.ndarray, filled: np.ndarray) -> np.ndarray:
    """Per row, how many filled slots hold a strictly larger value (0 = the list's best; independent of the slot
    order); NaN where the slot is empty or its value is NaN."""
    v = np.where(filled, values, np.nan).astype(np.float64)
    other = np.where(np.isnan(v), -np.inf, v)
    rank = (other[:, None, :] > v[:, :, None]).sum(axis=2).astype(np.float64)
    return np.where(np.isnan(v), np.nan, rank)


def _last_items(histories: list[np.ndarray], window: int) -> np.ndarray:
    """(B, window) the last items, most recent first, 0-padded."""
    out = np.zeros((len(histories), window), dtype=np.int64)
    for row, h in enumerate(histories):
        tail = np.asarray(h[-window:], dtype=np.int64)[::-1]
        out[row, : len(tail)] = tail
    return out


def popularity_features(tables: CountTables, candidates: np.ndarray) -> dict[str, np.ndarray]:
    filled = candidates != 0
    total, recent_total = max(1, int(tables.popularity.sum())), max(1, int(tables.recent.sum()))
    share = np.where(filled, tables.popularity[candidates] / total, np.nan)
    recent = np.where(filled, tables.recent[candidates] / recent_total, np.nan)
    return {"pop_share": share, "pop_recent_share": recent, "pop_list_rank": list_rank(share, filled)}


def transition_features(tables: CountTables, histories: list[np.ndarray], candidates: np.ndarray,
                        window: int) -> dict[str, np.ndarray]:  # fmt: skip
    filled = candidates != 0
    last = _last_items(histories, window)  # (B, W)
    counts = tables.transitions(last[:, None, :], candidates[:, :, None]).astype(np.float64)  # (B, K, W)
    out = tables.out_count[last].astype(np.float64)[:, None, :]  # (B, 1, W)
    norm = np.divide(counts, out, out=np.zeros_like(counts), where=out > 0)
    source = np.broadcast_to((last > 0)[:, None, :], counts.shape)
    norm = np.where(source, norm, np.nan)
    has_source = source.any(axis=2) & filled
    with np.errstate(invalid="ignore"):
        summed = np.where(has_source, np.nansum(norm, axis=2), np.nan)
        biggest = np.where(has_source, np.nanmax(np.where(source, norm, -np.inf), axis=2), np.nan)
    has_last = filled & (last[:, :1] > 0)
    return {"trans_last": np.where(has_last, norm[:, :, 0], np.nan), "trans_sum": summed, "trans_max": biggest,
            "trans_last_count": np.where(has_last, counts[:, :, 0], np.nan)}  # fmt: skip


@dataclass
class ContentTable:
    """One modality's unit item vectors (N+1, D) float32 (zeros where absent) and which items have one."""

    vectors: np.ndarray
    present: np.ndarray

    @classmethod
    def from_vectors(cls, vectors: np.ndarray, present: np.ndarray) -> ContentTable:
        vectors = np.asarray(vectors, dtype=np.float32)
        present = np.asarray(present, dtype=bool) & (np.linalg.norm(vectors, axis=1) > 0)
        unit = np.zeros_like(vectors)
        unit[present] = vectors[present] / np.linalg.norm(vectors[present], axis=1, keepdims=True)
        return cls(unit, present)


def content_features(tables: dict[str, ContentTable], histories: list[np.ndarray], candidates: np.ndarray,
                     window: int) -> dict[str, np.ndarray]:  # fmt: skip
    filled = candidates != 0
    last = _last_items(histories, window)
    out = {}
    for modality, table in tables.items():
        have = table.present[last] & (last > 0)  # (B, W)
        summed = (table.vectors[last] * have[:, :, None]).sum(axis=1)  # (B, D)
        norm = np.linalg.norm(summed, axis=1, keepdims=True)
        profile = np.divide(summed, norm, out=np.zeros_like(summed), where=norm > 0)
        cos = np.einsum("bkd,bd->bk", table.vectors[candidates], profile).astype(np.float64)
        valid = filled & table.present[candidates] & have.any(axis=1)[:, None]
        out[f"content_{modality}_cos"] = np.where(valid, cos, np.nan)
    return out


def history_features(histories: list[np.ndarray], candidates: np.ndarray) -> dict[str, np.ndarray]:
    lengths = np.array([len(h) for h in histories], dtype=np.float64)[:, None]
    return {"history_length": np.where(candidates != 0, lengths, np.nan)}
