"""Where prepared datasets live and how they are written (atomically) and read back."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recsys_core.config import DataConfig, prepared_dir_name
from recsys_core.data.preprocess import PreparedDataset
from recsys_core.errors import MissingArtifactError
from recsys_core.io import staged_directory

INTERACTIONS = "interactions.parquet"
ITEMS = "items.parquet"
USERS = "users.parquet"
STATS = "stats.json"
EXPORT = "dataset_single_export.csv"
GT_CANDIDATES = "gt_candidates.parquet"
PREPARED_FILES = (INTERACTIONS, ITEMS, USERS, EXPORT, STATS)


@dataclass(frozen=True)
class DataPaths:
    """Folder layout under a project root: data/raw/{code}/, data/images/{code}/, data/preprocessed/{code}_min_rating.../
    (with embeddings/ inside), experiments/"""

    root: Path

    def raw(self, code: str) -> Path:
        return self.root / "data" / "raw" / code

    def images(self, code: str) -> Path:
        """data/images/{code}/: resized item images keyed by raw item id + manifest.parquet (shared by every
        filter setting of the dataset, so changing min_uc never downloads an image twice)."""
        return self.root / "data" / "images" / code

    def prepared(self, data: DataConfig) -> Path:
        return self.root / "data" / "preprocessed" / prepared_dir_name(data)

    def experiment(self, stage: str, method: str, dataset: str, seed: int) -> Path:
        """experiments/{retrieval,rerank}/{method}/{dataset}/seed{seed}/"""
        return self.root / "experiments" / stage / method / dataset / f"seed{seed}"


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    # Fixed writer options so that the same table gives the same bytes (DVC hashes them).
    frame.to_parquet(path, index=False, compression="zstd", engine="pyarrow")


def save_prepared(dataset: PreparedDataset, dest: Path) -> None:
    """Write every prepared file into a scratch folder, then move them into ``dest`` together."""
    with staged_directory(dest) as scratch:
        _write_parquet(dataset.interactions, scratch / INTERACTIONS)
        _write_parquet(dataset.items, scratch / ITEMS)
        _write_parquet(dataset.users, scratch / USERS)
        export = dataset.interactions.merge(
            dataset.items[["item_id", "raw_id", "title"]].rename(columns={"raw_id": "raw_item_id"}), on="item_id"
        ).merge(dataset.users[["user_id", "raw_id"]].rename(columns={"raw_id": "raw_user_id"}), on="user_id")
        export = export.sort_values(["user_id", "timestamp", "item_id"], kind="stable")
        export.to_csv(scratch / EXPORT, index=False)
        (scratch / STATS).write_text(json.dumps(dataset.stats, indent=2) + "\n", encoding="utf-8")


def load_prepared(folder: Path) -> PreparedDataset:
    folder = Path(folder)
    missing = [name for name in (INTERACTIONS, ITEMS, USERS, STATS) if not (folder / name).exists()]
    if missing:
        raise MissingArtifactError(
            f"{folder}: missing {', '.join(missing)}; run the prepare stage first (`recsys prepare` or `dvc repro prepare`)"
        )
    interactions = pd.read_parquet(folder / INTERACTIONS)
    items = pd.read_parquet(folder / ITEMS)
    users = pd.read_parquet(folder / USERS)
    stats = json.loads((folder / STATS).read_text(encoding="utf-8"))
    return PreparedDataset(interactions, items, users, stats)


@dataclass(frozen=True)
class Sequences:
    """Per-user views of the split, as later stages need them.

    train[u] holds the train items in time order (index 0 unused, users are 1..U); val[u] and test[u] the held-out
    items. The validation input is train[u]; the test input is train[u] + [val[u]].
    """

    train: list[np.ndarray]
    val: np.ndarray
    test: np.ndarray

    @staticmethod
    def from_dataset(dataset: PreparedDataset) -> Sequences:
        inter = dataset.interactions
        n_users = dataset.n_users
        users = inter["user_id"].to_numpy()
        items = inter["item_id"].to_numpy()
        split = inter["split"].astype(str).to_numpy()
        val = np.zeros(n_users + 1, dtype=np.int64)
        test = np.zeros(n_users + 1, dtype=np.int64)
        val[users[split == "val"]] = items[split == "val"]
        test[users[split == "test"]] = items[split == "test"]
        train_mask = split == "train"
        t_users, t_items = users[train_mask], items[train_mask]
        bounds = np.searchsorted(t_users, np.arange(n_users + 2))
        train = [t_items[bounds[u] : bounds[u + 1]] for u in range(n_users + 1)]
        return Sequences(train, val, test)

    def shifted(self, steps: int) -> Sequences:
        """The split ``steps`` interactions earlier (``shift_split``). A model trained on the shifted train split never
        saw the shifted validation items, as the real one never saw the real ones (the learning-to-rank reranker trains
        on such lists, ``rerank/ltr.py``)."""
        return Sequences(*shift_split(self.train, self.val, steps))


def shift_split(
    train: list[np.ndarray], val: np.ndarray, steps: int
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Per-user values (items, or their times) of a split moved ``steps`` earlier: train[u] loses its last ``steps``
    values, the first of them becomes the validation value and the next (the validation value, for one step) the
    test value. A user with ``steps`` train values or fewer keeps an empty train and 0 (no list)."""
    if steps < 1:
        raise ValueError(f"steps must be 1 or more, got {steps}")
    kept, new_val, new_test = [], np.zeros_like(val), np.zeros_like(val)
    for u, values in enumerate(train):
        if u == 0 or len(values) <= steps:
            kept.append(values[:0])
            continue
        after = np.append(values, val[u])  # the held-out values in order: the next one is the test value
        cut = len(values) - steps
        kept.append(values[:cut])
        new_val[u], new_test[u] = after[cut], after[cut + 1]
    return kept, new_val, new_test
