"""Raw tables -> a prepared dataset: duplicates, min_rating, item filters, iterative k-core, dense ids, and the
leave-one-out split by time (test = last, validation = second to last, train = the rest)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from recsys_core.config import DataConfig
from recsys_core.data.sources.base import ITEM_COLUMNS, RawDataset
from recsys_core.data.text import item_text
from recsys_core.errors import DataFormatError, EmptyDatasetError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# A filter over item metadata: (name, items frame -> boolean mask of items to keep).
ItemFilter = tuple[str, Callable[[pd.DataFrame], np.ndarray]]


@dataclass
class PreparedDataset:
    """Dense ids (items 1..N, users 1..U; 0 is padding), interactions sorted by user, then timestamp, then the
    tie order (``DataConfig.tie_order``)."""

    interactions: pd.DataFrame  # user_id, item_id, rating, timestamp, split
    items: pd.DataFrame  # item_id, raw_id, title, description, text, image_url, image_path, categories, brand
    users: pd.DataFrame  # user_id, raw_id, n_interactions
    stats: dict = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def n_users(self) -> int:
        return len(self.users)


@dataclass
class _Counts:
    steps: list[dict] = field(default_factory=list)

    def record(self, name: str, frame: pd.DataFrame, detail: str = "") -> None:
        row = {
            "step": name,
            "users": int(frame["user"].nunique()),
            "items": int(frame["item"].nunique()),
            "interactions": int(len(frame)),
        }
        if detail:
            row["detail"] = detail
        self.steps.append(row)
        log.info("%-22s users=%-8d items=%-8d interactions=%d", name, row["users"], row["items"], row["interactions"])
        if row["interactions"] == 0:
            table = "\n".join(
                f"    {s['step']:<22} users={s['users']:<8} items={s['items']:<8} interactions={s['interactions']}"
                for s in self.steps
            )
            raise EmptyDatasetError(
                f"the '{name}' filter removed every interaction. Counts after each step:\n{table}\n"
                f"Loosen that filter (e.g. lower --min_rating, --min_uc or --min_sc) or check the raw data."
            )


def text_filter(items: pd.DataFrame) -> np.ndarray:
    """--use_text keeps items with a title or a description."""
    return ((items["title"].str.len() > 0) | (items["description"].str.len() > 0)).to_numpy()


def kcore_mask(users: np.ndarray, items: np.ndarray, min_uc: int, min_sc: int) -> tuple[np.ndarray, int]:
    """Keep-mask of the largest sub-table where every user has >= min_uc rows and every item >= min_sc.

    Removing every violator at once each round reaches the same fixpoint as one at a time (the k-core is unique).
    ``users`` and ``items`` are integer codes. Returns the mask and the number of rounds.
    """
    keep = np.ones(len(users), dtype=bool)
    rounds = 0
    while True:
        rounds += 1
        u_count = np.bincount(users[keep], minlength=users.max(initial=0) + 1)
        i_count = np.bincount(items[keep], minlength=items.max(initial=0) + 1)
        violators = keep & ((u_count[users] < min_uc) | (i_count[items] < min_sc))
        if not violators.any():
            return keep, rounds
        keep &= ~violators


def _dense_order(raw_ids: np.ndarray, listed: pd.Series | None = None) -> np.ndarray:
    """Raw ids in the order they are ``listed`` in (a source whose raw ids are not its own ids, listed in their
    order), else sorted numerically when they are all integers (ML ids), else as text: a stable id assignment.
    Ids missing from ``listed`` come after the listed ones, in the unlisted order."""
    if listed is not None:
        position = pd.Index(listed.astype(str)).get_indexer(raw_ids.astype(str))
        known = raw_ids[position >= 0][np.argsort(position[position >= 0], kind="stable")]
        return np.concatenate([known, _dense_order(raw_ids[position < 0])])
    as_int = pd.to_numeric(pd.Series(raw_ids), errors="coerce")
    if not as_int.isna().any():
        return raw_ids[np.argsort(as_int.to_numpy(), kind="stable")]
    return np.sort(raw_ids.astype(str))


# --tie_order shuffle: one fixed permutation of the raw rows (taken in file order) drawn with numpy's
# default_rng(SHUFFLE_SEED). It does not depend on --seed, so every training seed sees the same prepared data.
SHUFFLE_SEED = 0


def _tie_keys(frame: pd.DataFrame, tie_order: str) -> np.ndarray:
    """Per raw row (``frame`` in file order), the key that orders one user's interactions within one timestamp
    before dense ids exist: the file line for "file", a seeded random rank for "shuffle". For "item_id" it is the
    line too: there it only decides between rows of the same (user, item, timestamp), i.e. which repeat is kept;
    different items are ordered by dense item id in ``_finalise``."""
    if tie_order == "shuffle":
        return np.random.default_rng(SHUFFLE_SEED).permutation(len(frame)).astype(np.int64)
    return frame["line"].to_numpy(np.int64)


def preprocess(raw: RawDataset, cfg: DataConfig, item_filters: Sequence[ItemFilter] = ()) -> PreparedDataset:
    """Apply the filters in order, then the k-core (again after any item filter), then ids and the split.

    Order: drop exact duplicate rows (keeping the first line), ``min_rating``, drop later repeats of a (user, item)
    pair (keeping the first remaining one), the item filters, the iterative k-core. Each user's interactions are in
    time order; equal timestamps follow ``cfg.tie_order``: "file" (the raw file's line order, the default),
    "item_id" (dense item id) or "shuffle" (seeded by SHUFFLE_SEED). "Later" repeats are later in that same order.
    """
    if "line" not in raw.interactions:
        raise DataFormatError(
            "the raw interactions have no 'line' column (line number in the raw file); the source must keep it so "
            "that equal timestamps can follow the file order"
        )
    counts = _Counts()
    frame = raw.interactions[["user", "item", "rating", "timestamp", "line"]]
    frame = frame.sort_values("line", kind="stable").reset_index(drop=True)
    frame = frame.assign(tie=_tie_keys(frame, cfg.tie_order))
    counts.record("raw", frame)

    exact = frame.duplicated(["user", "item", "rating", "timestamp"], keep="first")
    frame = frame[~exact.to_numpy()]
    counts.record("drop_duplicate_rows", frame, f"{int(exact.sum())} identical rows dropped")

    # Before repeat removal: an item rated 1 and later 5 keeps its 5 (repeat removal first would drop it entirely).
    if cfg.min_rating > 0:
        frame = frame[frame["rating"].to_numpy() >= cfg.min_rating]
        counts.record("min_rating", frame, f"rating >= {cfg.min_rating}")

    # A repeated (user, item) would put a test item inside its own training history: keep the first occurrence.
    frame = frame.sort_values(["user", "timestamp", "tie"], kind="stable")
    repeats = frame.duplicated(["user", "item"], keep="first")
    frame = frame[~repeats.to_numpy()]
    counts.record("drop_repeat_interactions", frame, f"{int(repeats.sum())} later repeats of a user-item pair")

    items_meta = raw.items.set_index("raw_id", drop=False)
    filters = list(item_filters)
    if cfg.use_text:
        filters.insert(0, ("use_text", text_filter))
    for name, keep_fn in filters:
        present = items_meta.reindex(pd.Index(frame["item"].unique(), name="raw_id")).fillna("")
        present["raw_id"] = present.index
        kept = set(present.index[keep_fn(present.reset_index(drop=True))])
        frame = frame[frame["item"].isin(kept).to_numpy()]
        counts.record(name, frame, f"{len(present) - len(kept)} items dropped")

    user_codes, _ = pd.factorize(frame["user"])
    item_codes, _ = pd.factorize(frame["item"])
    keep, rounds = kcore_mask(user_codes, item_codes, cfg.min_uc, cfg.min_sc)
    frame = frame[keep]
    counts.record("k_core", frame, f"min_uc={cfg.min_uc}, min_sc={cfg.min_sc}, {rounds} rounds to converge")

    return _finalise(frame, items_meta, counts, raw, cfg.tie_order)


def _finalise(
    frame: pd.DataFrame, items_meta: pd.DataFrame, counts: _Counts, raw: RawDataset, tie_order: str
) -> PreparedDataset:
    listed = raw.items["raw_id"] if raw.items_in_id_order else None
    item_raw = _dense_order(frame["item"].unique().astype(object), listed)
    user_raw = _dense_order(frame["user"].unique().astype(object))
    item_id = pd.Index(item_raw).get_indexer(frame["item"]) + 1
    user_id = pd.Index(user_raw).get_indexer(frame["user"]) + 1
    timestamp = frame["timestamp"].to_numpy(np.int64)
    # Per user by (timestamp, tie key); the key is unique within a user (lines, a permutation, or distinct items).
    tie = item_id if tie_order == "item_id" else frame["tie"].to_numpy(np.int64)
    order = np.lexsort((tie, timestamp, user_id))
    user_id, item_id, timestamp = user_id[order], item_id[order], timestamp[order]
    rating = frame["rating"].to_numpy(np.float32)[order]

    starts = np.r_[0, np.flatnonzero(np.diff(user_id)) + 1]
    lengths = np.diff(np.r_[starts, len(user_id)])
    from_end = np.repeat(starts + lengths, lengths) - np.arange(len(user_id)) - 1  # 0 = last interaction
    split = np.where(from_end == 0, "test", np.where(from_end == 1, "val", "train"))

    interactions = pd.DataFrame(
        {
            "user_id": user_id.astype(np.int32),
            "item_id": item_id.astype(np.int32),
            "rating": rating,
            "timestamp": timestamp,
            "split": pd.Categorical(split, categories=list(SPLITS)),
        }
    )
    meta = items_meta.reindex(pd.Index(item_raw, name="raw_id"))
    meta = meta.drop(columns="raw_id").reset_index().fillna("")
    items = pd.DataFrame({"item_id": np.arange(1, len(item_raw) + 1, dtype=np.int32)})
    for column in ITEM_COLUMNS:
        items[column] = meta[column].astype("str").to_numpy()
    items.insert(4, "text", [item_text(t, d) for t, d in zip(items["title"], items["description"], strict=True)])
    users = pd.DataFrame(
        {
            "user_id": np.arange(1, len(user_raw) + 1, dtype=np.int32),
            "raw_id": pd.Series(user_raw).astype("str").to_numpy(),
            "n_interactions": lengths.astype(np.int32),
        }
    )
    dataset = PreparedDataset(interactions, items, users)
    dataset.stats = _stats(dataset, counts, raw, tie_order)
    return dataset


def held_out_ties(interactions: pd.DataFrame) -> dict[str, int]:
    """How many validation / test items share their timestamp with another interaction of the same user: the
    held-out items that the tie order (not the time) picks."""
    key = interactions[["user_id", "timestamp"]]
    tied = key.duplicated(keep=False).to_numpy()
    split = interactions["split"].astype(str).to_numpy()
    return {s: int((tied & (split == s)).sum()) for s in ("val", "test")}


def _stats(ds: PreparedDataset, counts: _Counts, raw: RawDataset, tie_order: str) -> dict:
    n_users, n_items, n_inter = ds.n_users, ds.n_items, len(ds.interactions)
    split_sizes = ds.interactions["split"].value_counts()
    return {
        "users": n_users,
        "items": n_items,
        "interactions": n_inter,
        "avg_sequence_length": round(n_inter / n_users, 4),
        "density": round(n_inter / (n_users * n_items), 6),
        "min_sequence_length": int(ds.users["n_interactions"].min()),
        "max_sequence_length": int(ds.users["n_interactions"].max()),
        "split_interactions": {s: int(split_sizes.get(s, 0)) for s in SPLITS},
        "items_with_title": int((ds.items["title"].str.len() > 0).sum()),
        "items_with_image_url": int((ds.items["image_url"].str.len() > 0).sum()),
        "filters": counts.steps,
        "tie_order": tie_order,
        "held_out_in_ties": held_out_ties(ds.interactions),
        "malformed_lines": [b.as_dict() for b in raw.bad_lines if b.count],
        "source": raw.manifest.get("source", ""),
        "raw_files": {f["name"]: f["sha256"] for f in raw.manifest.get("files", [])},
    }
