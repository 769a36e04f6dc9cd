"""Input that could bend the leave-one-out split: tie order through every reader, timestamps outside int64, and
missing-value spellings used as ids."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from conftest import (
    recbole_files,
    write_amazon_ratings,
    write_grouplens_100k,
    write_manifest,
    write_meta_2014,
)

from recsys_core.config import DataConfig
from recsys_core.data.formats import MISSING_ID_TOKENS, parse_timestamps, read_delimited_interactions
from recsys_core.data.preprocess import preprocess
from recsys_core.data.sources import get_source

# User 1 rates items 20 and 10 at the same time (20 on the earlier line), item 30 before; user 2 has no ties.
TIED = [("1", "20", 5, 100), ("2", "10", 4, 1), ("1", "10", 5, 100), ("2", "20", 4, 2), ("1", "30", 3, 50),
        ("2", "30", 4, 3)]  # fmt: skip
FILE_ORDER = ["30", "20", "10"]
ITEM_ORDER = ["30", "10", "20"]


def _write_custom(tmp_path, rows, suffix, columns=("user", "item", "rating", "timestamp")):
    frame = pd.DataFrame(rows, columns=list(columns)).astype(str)
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    path = src / f"inter{suffix}"
    if suffix == ".parquet":
        frame.to_parquet(path)
    else:
        text = frame.to_csv(sep="\t" if suffix == ".tsv" else ",", index=False)
        path.write_text(text)
    return DataConfig(dataset_code="custom", custom_interactions=str(path), min_uc=3, min_sc=1,
                      max_bad_line_share=0.9)  # fmt: skip


def load(tmp_path, fmt: str, rows, **cfg):
    """Write ``rows`` (user, item, rating, timestamp as text) in the real shape of ``fmt``; load it."""
    raw_dir = tmp_path / "raw"
    raw_dir.mkdir(exist_ok=True)
    base = {"min_uc": 3, "min_sc": 1, "max_bad_line_share": 0.9, **cfg}
    if fmt == "u.data":
        write_grouplens_100k(raw_dir, rows, 30)
        code = "ml-100k"
    elif fmt == "ml-100k.inter":
        for name, data in recbole_files(rows, 30).items():
            (raw_dir / name).write_bytes(data)
        code = "ml-100k"
    elif fmt == "ratings.csv":
        text = "userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in rows)
        (raw_dir / "ratings.csv").write_text(text)
        (raw_dir / "movies.csv").write_text("movieId,title,genres\n10,Ten (1995),Drama\n")
        code = "ml-latest-small"
    elif fmt == "amazon":
        write_amazon_ratings(raw_dir / "ratings_Beauty.csv", rows)
        write_meta_2014(raw_dir / "meta_Beauty.json.gz", {})
        code = "beauty"
    else:  # custom .csv / .tsv / .parquet
        cfg_ = _write_custom(tmp_path, rows, fmt)
        source = get_source("custom")
        cfg_ = cfg_.model_copy(update=base)
        source.download(raw_dir, cfg_)
        return source.load(raw_dir, cfg_), cfg_
    write_manifest(raw_dir, code)
    data_cfg = DataConfig(dataset_code=code, **base)
    return get_source(code).load(raw_dir, data_cfg), data_cfg


FORMATS = ["u.data", "ml-100k.inter", "ratings.csv", "amazon", ".csv", ".tsv", ".parquet"]


def user_items(ds, raw_user: str) -> list[str]:
    users = ds.interactions["user_id"].map(ds.users.set_index("user_id")["raw_id"])
    items = ds.interactions["item_id"].map(ds.items.set_index("item_id")["raw_id"])
    return items[users == raw_user].tolist()


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_reader_keeps_the_file_order_for_ties(tmp_path, fmt):
    raw, cfg = load(tmp_path, fmt, TIED)
    assert raw.interactions["line"].is_monotonic_increasing
    ds = preprocess(raw, cfg)
    assert user_items(ds, "1") == FILE_ORDER
    assert user_items(ds, "2") == ["10", "20", "30"]
    by_item = preprocess(raw, cfg.model_copy(update={"tie_order": "item_id"}))
    assert user_items(by_item, "1") == ITEM_ORDER


def test_parse_timestamps_bounds():
    text = ["9223372036854775807", "9223372036854775808", "-9223372036854775808", "-9223372036854775809",
            "1700000000000000001", "+12", "007", "874965758.0", "874965758.9", "-86400", "1e9", "1e20", "-1e19",
            "9.3e18", "inf", "-inf", "nan", "abc", "", "99999999999999999999"]  # fmt: skip
    values, non_numeric, out_of_range = parse_timestamps(pd.Series(text))
    got = {t: ("non-numeric" if n else "out of range" if o else int(v))
           for t, v, n, o in zip(text, values, non_numeric, out_of_range, strict=True)}  # fmt: skip
    assert got == {
        "9223372036854775807": 9223372036854775807, "9223372036854775808": "out of range",
        "-9223372036854775808": -9223372036854775808, "-9223372036854775809": "out of range",
        "1700000000000000001": 1700000000000000001,  # exact: not through float64
        "+12": 12, "007": 7, "874965758.0": 874965758, "874965758.9": 874965758, "-86400": -86400,
        "1e9": 10**9, "1e20": "out of range", "-1e19": "out of range", "9.3e18": "out of range",
        "inf": "out of range", "-inf": "out of range", "nan": "non-numeric", "abc": "non-numeric", "": "non-numeric",
        "99999999999999999999": "out of range",
    }  # fmt: skip


@pytest.mark.parametrize("fmt", FORMATS)
def test_timestamps_outside_int64_are_malformed_lines(tmp_path, fmt):
    """1e20 used to wrap to -2**63 (a RuntimeWarning only) and sort first, moving the user's test item."""
    rows = TIED + [("1", "40", 5, "1e20"), ("1", "50", 5, "99999999999999999999"), ("1", "60", 5, "inf"),
                   ("2", "40", 5, "-86400"), ("2", "50", 5, "1700000000000000001")]  # fmt: skip
    raw, cfg = load(tmp_path, fmt, rows)
    (bad,) = raw.bad_lines[:1]
    assert bad.count == 3
    assert [reason.split(" '")[0] for _, reason, _ in bad.examples] == ["timestamp out of range"] * 3
    assert raw.interactions["timestamp"].tolist()[-2:] == [-86400, 1700000000000000001]
    ds = preprocess(raw, cfg)
    assert user_items(ds, "1") == FILE_ORDER  # the test item is still 10
    assert user_items(ds, "2") == ["40", "10", "20", "30", "50"]


def test_pandas_default_na_spellings_are_exactly_the_missing_ids():
    candidates = sorted(MISSING_ID_TOKENS - {""}) + ["NAN", "Nan", "nil", "NONE", "none", "NULL_", "0", "-", "na"]
    text = "k,x\n" + "".join(f'{n},"{c}"\n' for n, c in enumerate(candidates))
    parsed = pd.read_csv(io.StringIO(text))  # pandas' default NA parsing
    assert dict(zip(candidates, parsed["x"].isna(), strict=True)) == {c: c in MISSING_ID_TOKENS for c in candidates}
    assert "" in MISSING_ID_TOKENS


SPELLINGS = ["nan", "NaN", "None", "null", "NA", "N/A", "<NA>", "", "  ", " nan "]


@pytest.mark.parametrize("fmt", FORMATS)
def test_missing_id_spellings_are_malformed_lines(tmp_path, fmt):
    rows = list(TIED)
    for k, token in enumerate(SPELLINGS):
        rows.append((token, "10", 5, 200 + k))  # would be one extra user "nan" (or NaN), or ...
        rows.append(("1", token, 5, 300 + k))  # ... user 1's test item
    rows.append(("NAN", "10", 5, 7))  # not a pandas NA spelling: a real id
    raw, cfg = load(tmp_path, fmt, rows)
    bad = raw.bad_lines[0]
    assert bad.count == 2 * len(SPELLINGS)
    reasons = {reason for _, reason, _ in bad.examples}
    assert reasons == {"missing user id", "missing item id"}
    assert "NAN" in set(raw.interactions["user"])
    assert not raw.interactions["user"].isin(MISSING_ID_TOKENS).any()
    assert not raw.interactions["item"].isin(MISSING_ID_TOKENS).any()
    ds = preprocess(raw, cfg)
    assert user_items(ds, "1") == FILE_ORDER
    assert set(ds.users["raw_id"]) == {"1", "2"}


def test_parquet_nulls_are_missing_ids(tmp_path):
    frame = pd.DataFrame({"user": ["1", None, "1", "1", "1"], "item": ["10", "20", None, "20", "30"],
                          "timestamp": np.array([1, 2, 3, 4, 5])})  # fmt: skip
    path = tmp_path / "inter.parquet"
    frame.to_parquet(path)
    cfg = DataConfig(dataset_code="custom", custom_interactions=str(path), max_bad_line_share=0.9)
    source = get_source("custom")
    source.download(tmp_path / "raw", cfg)
    raw = source.load(tmp_path / "raw", cfg)
    assert raw.bad_lines[0].count == 2
    assert raw.interactions["item"].tolist() == ["10", "20", "30"]


def test_delimited_reader_counts_each_reason_once_per_line(tmp_path):
    path = tmp_path / "u.data"
    path.write_text("1\t10\t5\t100\nnan\tnull\tx\t1e20\n1\t20\tinf\t100\n")
    frame, bad = read_delimited_interactions(path, "\t", header=False)
    assert bad.count == 2 and bad.total == 3
    assert [(n, r.split(" '")[0]) for n, r, _ in bad.examples] == [(2, "missing user id"), (3, "non-numeric rating")]
    assert frame["line"].tolist() == [1]
