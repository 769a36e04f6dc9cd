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


def test_every_user_has_train_val_and_test_in_time_order():
    ds = prepared(random_log(50, 30, (3, 12), seed=1))
    inter = ds.interactions
    counts = inter.groupby(["user_id", "split"], observed=False).size().unstack()
    assert (counts["train"] >= 1).all() and (counts["val"] == 1).all() and (counts["test"] == 1).all()
    for _, group in inter.groupby("user_id"):
        key = list(zip(group["timestamp"], group["item_id"], strict=True))
        assert key == sorted(key), "per-user order is (timestamp, item)"
        assert group["split"].tolist()[-2:] == ["val", "test"]
        train_ts = group.loc[group["split"] == "train", "timestamp"]
        val_ts = group.loc[group["split"] == "val", "timestamp"].iloc[0]
        test_ts = group.loc[group["split"] == "test", "timestamp"].iloc[0]
        assert train_ts.max() <= val_ts <= test_ts


def test_ties_are_broken_by_item_id():
    rows = [("u", "b", 5.0, 10), ("u", "a", 5.0, 10), ("u", "c", 5.0, 5), ("v", "a", 5.0, 1), ("v", "b", 5.0, 2),
            ("v", "c", 5.0, 3)]  # fmt: skip
    ds = prepared(rows, min_sc=1)
    items = ds.items.set_index("item_id")["raw_id"]
    order = ds.interactions[ds.interactions["user_id"] == 1]["item_id"].map(items).tolist()
    assert order == ["c", "a", "b"]


def test_held_out_items_never_appear_in_the_train_sequence():
    rows = random_log(40, 20, (4, 10), seed=2)
    # Re-purchases: the same item again later for many users (the last one would otherwise leak into train).
    rows += [(u, i, r, t + 10**6) for (u, i, r, t) in rows[::3]]
    ds = prepared(rows)
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
