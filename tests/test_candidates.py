"""Ground-truth candidate lists: the true item exactly once, no seen item, fixed by the seed."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import random_log, raw_dataset

from recsys_core.candidates import build_gt_candidates, load_gt_candidates, save_gt_candidates
from recsys_core.config import DataConfig
from recsys_core.data.preprocess import preprocess
from recsys_core.errors import CandidateSamplingError


@pytest.fixture(scope="module")
def dataset():
    return preprocess(raw_dataset(random_log(120, 300, (5, 40), seed=11)), DataConfig(min_uc=5, min_sc=2))


def test_candidates_hold_the_true_item_once_and_nothing_seen(dataset):
    table = build_gt_candidates(dataset, 50, seed=1, strategy="uniform")
    seen = dataset.interactions.groupby("user_id")["item_id"].apply(set)
    truth = dataset.interactions.set_index(["user_id", "split"])["item_id"]
    assert sorted(table["split"].unique()) == ["test", "val"]
    assert len(table) == 2 * dataset.n_users
    for row in table.itertuples():
        cands = list(row.candidates)
        assert len(cands) == 50 and len(set(cands)) == 50
        assert cands.count(row.target) == 1
        assert row.target == truth[(row.user_id, row.split)]
        assert not (set(cands) - {row.target}) & seen[row.user_id]
        assert all(1 <= c <= dataset.n_items for c in cands)


def test_true_item_position_is_spread(dataset):
    table = build_gt_candidates(dataset, 20, seed=2, strategy="uniform")
    positions = [list(c).index(t) for c, t in zip(table["candidates"], table["target"], strict=True)]
    assert len(set(positions)) > 10  # shuffled, not always first


def test_same_seed_same_file_other_seed_other_lists(dataset, tmp_path):
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        save_gt_candidates(build_gt_candidates(dataset, 30, seed, "uniform"), tmp_path / f"{name}.parquet", {})
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    assert (tmp_path / "a.parquet").read_bytes() != (tmp_path / "c.parquet").read_bytes()
    back, _ = load_gt_candidates(tmp_path / "a.parquet")
    again = build_gt_candidates(dataset, 30, 5, "uniform")
    assert all(np.array_equal(x, y) for x, y in zip(back["candidates"], again["candidates"], strict=True))


def test_popularity_sampling_prefers_popular_items(dataset):
    train = dataset.interactions[dataset.interactions["split"] == "train"]
    popular = set(train["item_id"].value_counts().index[:30])

    def share(strategy: str) -> float:
        table = build_gt_candidates(dataset, 20, 3, strategy)
        negatives = [c for cands, t in zip(table["candidates"], table["target"], strict=True) for c in cands if c != t]
        return np.mean([c in popular for c in negatives])

    assert share("popularity") > 1.5 * share("uniform")


@pytest.mark.parametrize("rounds", [0, 30])
def test_heavy_users_get_exact_negatives(monkeypatch, rounds):
    """A user who has seen nearly every item still gets distinct unseen negatives (rejection, then complement)."""
    monkeypatch.setattr("recsys_core.candidates._MAX_ROUNDS", rounds)
    rows = [("heavy", f"i{i:02d}", 5.0, i) for i in range(57)]
    rows += [(f"u{u}", f"i{i:02d}", 5.0, i) for u in range(5) for i in range(u * 12, u * 12 + 12)]
    ds = preprocess(raw_dataset(rows), DataConfig(min_uc=3, min_sc=1))
    heavy = int(ds.users.index[ds.users["raw_id"] == "heavy"][0]) + 1
    table = build_gt_candidates(ds, ds.n_items - 57 + 1, seed=0, strategy="uniform")
    seen = set(ds.interactions.loc[ds.interactions["user_id"] == heavy, "item_id"])
    for cands, target in table.loc[table["user_id"] == heavy, ["candidates", "target"]].itertuples(index=False):
        assert sorted(set(cands) - {target}) == sorted(set(range(1, ds.n_items + 1)) - seen)


def test_too_many_candidates_is_a_clear_error(dataset):
    with pytest.raises(CandidateSamplingError, match="--rerank_eval_candidates"):
        build_gt_candidates(dataset, dataset.n_items, seed=0, strategy="uniform")
