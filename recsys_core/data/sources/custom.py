"""Bring-your-own data: an interactions table and an optional item table (csv, tsv or parquet).

Interactions need ``user`` and ``item`` columns; ``rating`` and ``timestamp`` are optional (without a timestamp the
row order of the file is the time order; without a rating every row counts as 1). Items may carry ``title``,
``description``, ``image_url`` and ``image_path``. A row whose user or item is empty or a missing-value spelling
(``nan``, ``None``, ``null``, ``NA``...: ``formats.MISSING_ID_TOKENS``) or a null in parquet is a malformed line.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from recsys_core.config import DataConfig
from recsys_core.data.formats import BadLines, coerce_interactions, read_table
from recsys_core.data.sources.base import RawDataset, Source, items_frame, read_manifest
from recsys_core.data.text import clean_text
from recsys_core.errors import ConfigError, DataFormatError
from recsys_core.io import atomic_path, sha256_file

ALIASES = {
    "user": ("user", "user_id", "userid", "uid"),
    "item": ("item", "item_id", "itemid", "iid", "asin"),
    "rating": ("rating", "score"),
    "timestamp": ("timestamp", "time", "ts", "unix_time"),
}
ITEM_ALIASES = {"raw_id": ALIASES["item"], "image_url": ("image_url", "imurl", "image")}


def _suffix(path: Path) -> str:
    return "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix


def _pick(frame: pd.DataFrame, names: tuple[str, ...]) -> str | None:
    lower = {c.lower().strip(): c for c in frame.columns}
    return next((lower[n] for n in names if n in lower), None)


class Custom(Source):
    code = "custom"
    reuse_manifest = False  # the user's files may change under the same path: always copy them again

    def fetch(self, raw_dir: Path, cfg: DataConfig) -> dict:
        """Copy the user's files into the raw folder so that DVC versions exactly what was prepared."""
        files = []
        for role, given in (("interactions", cfg.custom_interactions), ("items", cfg.custom_items)):
            if not given:
                continue
            src = Path(given)
            if not src.is_file():
                raise ConfigError(f"--custom_{role} {given}: no such file")
            dest = raw_dir / f"{role}{_suffix(src)}"
            for stale in raw_dir.glob(f"{role}.*"):
                if stale != dest:
                    stale.unlink()
            with atomic_path(dest) as tmp:
                shutil.copyfile(src, tmp)
            files.append({"name": dest.name, "url": str(src.resolve()), "sha256": sha256_file(dest),
                          "size": dest.stat().st_size, "origin": "copied"})  # fmt: skip
        return {"source": "custom files", "files": files}

    def load(self, raw_dir: Path, cfg: DataConfig) -> RawDataset:
        manifest = read_manifest(raw_dir, self.code)
        names = {f["name"] for f in manifest["files"]}
        inter_name = next((n for n in names if n.startswith("interactions.")), None)
        if inter_name is None:
            raise DataFormatError(f"{raw_dir}: no interactions file; run `recsys download --dataset_code custom`")
        path = raw_dir / inter_name
        table = read_table(path)
        columns = {key: _pick(table, names_) for key, names_ in ALIASES.items()}
        missing = [k for k in ("user", "item") if columns[k] is None]
        if missing:
            raise DataFormatError(
                f"{path}: missing column(s) {missing}; found {list(table.columns)}. Name them "
                + "; ".join(f"{k}: one of {ALIASES[k]}" for k in missing)
            )
        raw = pd.DataFrame(
            {
                "user": table[columns["user"]],
                "item": table[columns["item"]],
                "rating": table[columns["rating"]] if columns["rating"] else "1",
                "timestamp": table[columns["timestamp"]] if columns["timestamp"] else np.arange(len(table)).astype(str),
            }
        )
        # ``line`` keeps the row order (file order decides equal timestamps): csv/tsv rows start on line 2 (after
        # the header), parquet rows count from 1.
        first_line = 1 if _suffix(path) in (".parquet", ".pq") else 2
        bad = BadLines(path, total=len(raw))
        interactions = coerce_interactions(raw, np.arange(first_line, first_line + len(raw)), None, bad)
        bad.check(cfg.max_bad_line_share)
        items = self._items(raw_dir, names)
        return RawDataset(interactions, items, manifest, [bad])

    def _items(self, raw_dir: Path, names: set[str]) -> pd.DataFrame:
        item_name = next((n for n in names if n.startswith("items.")), None)
        if item_name is None:
            return items_frame([])
        path = raw_dir / item_name
        table = read_table(path)
        raw_col = _pick(table, ITEM_ALIASES["raw_id"])
        if raw_col is None:
            raise DataFormatError(f"{path}: missing the item id column (one of {ITEM_ALIASES['raw_id']})")
        url_col = _pick(table, ITEM_ALIASES["image_url"])
        out = pd.DataFrame({"raw_id": table[raw_col].str.strip()})
        for column in ("title", "description", "categories", "brand"):
            found = _pick(table, (column,))
            out[column] = table[found].map(clean_text) if found else ""
        out["image_url"] = table[url_col] if url_col else ""
        found = _pick(table, ("image_path",))
        out["image_path"] = table[found] if found else ""
        return items_frame(out.to_dict("records"))
