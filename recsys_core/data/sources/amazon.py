"""Amazon review datasets: 2014 ratings CSVs with 2014 (Python-literal) or 2018 (JSON) metadata."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from recsys_core.config import DataConfig
from recsys_core.data.download import download
from recsys_core.data.formats import (
    BadLines,
    iter_metadata,
    parse_json,
    parse_python_literal,
    read_delimited_interactions,
)
from recsys_core.data.sources.base import RawDataset, Source, items_frame, read_manifest
from recsys_core.data.text import clean_text
from recsys_core.errors import MissingArtifactError

SNAP = "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/"
UCSD_2018 = "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2/metaFiles2/"


def _first(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return str(value[0]) if value else ""
    return "" if value is None else str(value)


def _categories(value: object) -> str:
    """2014: list of category paths; 2018: one path. -> 'A > B > C | D > E'."""
    if not value:
        return ""
    if isinstance(value, list) and value and isinstance(value[0], list):
        return " | ".join(" > ".join(clean_text(c) for c in path) for path in value)
    if isinstance(value, list):
        return " > ".join(clean_text(c) for c in value)
    return clean_text(value)


def item_from_2014(record: dict) -> dict:
    return {
        "raw_id": str(record.get("asin", "")),
        "title": clean_text(record.get("title")),
        "description": clean_text(record.get("description")),
        "image_url": _first(record.get("imUrl")),
        "categories": _categories(record.get("categories")),
        "brand": clean_text(record.get("brand")),
    }


def item_from_2018(record: dict) -> dict:
    return {
        "raw_id": str(record.get("asin", "")),
        "title": clean_text(record.get("title")),
        "description": clean_text(record.get("description")),
        "image_url": _first(record.get("imageURLHighRes")) or _first(record.get("imageURL")),
        "categories": _categories(record.get("category")),
        "brand": clean_text(record.get("brand")),
    }


class AmazonSource(Source):
    ratings_file: ClassVar[str]
    ratings_url: ClassVar[str]
    meta_file: ClassVar[str]
    meta_url: ClassVar[str]
    parse_line: ClassVar[Callable[[str], object]]
    to_item: ClassVar[Callable[[dict], dict]]
    release: ClassVar[str]

    def fetch(self, raw_dir: Path, cfg: DataConfig) -> dict:
        files = [
            download(self.ratings_url, raw_dir / self.ratings_file),
            download(self.meta_url, raw_dir / self.meta_file),
        ]
        return {"source": self.release, "files": [f.as_dict() for f in files]}

    def load(self, raw_dir: Path, cfg: DataConfig) -> RawDataset:
        manifest = read_manifest(raw_dir, self.code)
        ratings_path, meta_path = raw_dir / self.ratings_file, raw_dir / self.meta_file
        for path in (ratings_path, meta_path):
            if not path.exists():
                raise MissingArtifactError(f"{path} is missing; run `recsys download --dataset_code {self.code}`")
        interactions, bad_ratings = read_delimited_interactions(ratings_path, ",", header=False)
        bad_ratings.check(cfg.max_bad_line_share)
        bad_meta = BadLines(meta_path)
        wanted = set(interactions["item"].unique())
        records = [type(self).to_item(r) for r in iter_metadata(meta_path, type(self).parse_line, bad_meta, wanted)]
        bad_meta.check(cfg.max_bad_line_share)
        return RawDataset(interactions, items_frame(records), manifest, [bad_ratings, bad_meta])


class Beauty(AmazonSource):
    code = "beauty"
    release = "Amazon 2014 (McAuley) Beauty: ratings + metadata"
    ratings_file = "ratings_Beauty.csv"
    ratings_url = SNAP + "ratings_Beauty.csv"
    meta_file = "meta_Beauty.json.gz"
    meta_url = SNAP + "meta_Beauty.json.gz"
    parse_line = staticmethod(parse_python_literal)
    to_item = staticmethod(item_from_2014)


class Games(AmazonSource):
    code = "games"
    release = "Amazon 2014 Video Games ratings + Amazon 2018 metadata"
    ratings_file = "ratings_Video_Games.csv"
    ratings_url = SNAP + "ratings_Video_Games.csv"
    meta_file = "meta_Video_Games.json.gz"
    meta_url = UCSD_2018 + "meta_Video_Games.json.gz"
    parse_line = staticmethod(parse_json)
    to_item = staticmethod(item_from_2018)
