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
from recsys_core.data.formats import CUSTOM_FIX, BadLines, coerce_interactions, read_table
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


def _fix(manifest: dict, name: str) -> str:
    """What to do about a bad copy: fix the user's own file (named in the manifest), then download again."""
    origin = next((f.get("url") for f in manifest.get("files", []) if f.get("name") == name), None)
    return f"It is a copy of {origin}. {CUSTOM_FIX}" if origin else CUSTOM_FIX


def _pick(frame: pd.DataFrame, names: tuple[str, ...]) -> str | None:
    lower = {c.lower().strip(): c for c in frame.columns}
    return next((lower[n] for n in names if n in lower), None)


class Custom(Source):
    code = "custom"
    reuse_manifest = False  # the user's files may change under the same path: always copy them again

    def __init__(self, code: str = "custom") -> None:
        self.code = code  # `custom` or `custom-NAME`: each named dataset has its own raw folder

    def fetch(self, raw_dir: Path, cfg: DataConfig) -> dict:
        """Copy the user's files into the raw folder so that DVC versions exactly what was prepared."""
        given = [(role, Path(name)) for role, name in (("interactions", cfg.custom_interactions),
                                                        ("items", cfg.custom_items)) if name]  # fmt: skip
        for role, src in given:  # both checked before either is copied: a refusal leaves the raw folder as it was
            if not src.is_file():
                raise ConfigError(f"--custom_{role} {src}: no such file")
            if src.stat().st_size == 0:
                raise ConfigError(f"--custom_{role} {src}: the file is empty (0 bytes). {CUSTOM_FIX}")
        files = []
        for role, src in given:
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
            raise DataFormatError(f"{raw_dir}: no interactions file; run `recsys download --dataset_code {self.code}`")
        path = raw_dir / inter_name
        found = read_table(path, fix=_fix(manifest, inter_name))
        table, bad = found.frame, found.bad
        if table.empty and not bad.count:
            raise DataFormatError(f"{path}: holds a header but no rows. {_fix(manifest, inter_name)}")
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
        # ``line`` is the line each csv/tsv row starts on (parquet rows count from 1): the file order decides equal
        # timestamps, and malformed rows are reported by it.
        interactions = coerce_interactions(raw, found.lines, None, bad)
        bad.check(cfg.max_bad_line_share)
        items, bad_items = self._items(raw_dir, names, manifest)
        bad_items.check(cfg.max_bad_line_share)
        return RawDataset(interactions, items, manifest, [bad, bad_items])

    def _items(self, raw_dir: Path, names: set[str], manifest: dict) -> tuple[pd.DataFrame, BadLines]:
        item_name = next((n for n in names if n.startswith("items.")), None)
        if item_name is None:
            return items_frame([]), BadLines(raw_dir / "items")
        path = raw_dir / item_name
        found = read_table(path, fix=_fix(manifest, item_name))
        table = found.frame
        raw_col = _pick(table, ITEM_ALIASES["raw_id"])
        if raw_col is None:
            raise DataFormatError(f"{path}: missing the item id column (one of {ITEM_ALIASES['raw_id']})")
        url_col = _pick(table, ITEM_ALIASES["image_url"])
        out = pd.DataFrame({"raw_id": table[raw_col].str.strip()})
        for name in ("title", "description", "categories", "brand"):
            column = _pick(table, (name,))
            out[name] = table[column].map(clean_text) if column else ""
        out["image_url"] = table[url_col] if url_col else ""
        column = _pick(table, ("image_path",))
        out["image_path"] = table[column] if column else ""
        return items_frame(out.to_dict("records")), found.bad
