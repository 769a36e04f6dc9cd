"""Each raw format (RAW_FORMATS.md) parses into the standard tables; the ML-100K offline fallback is checked."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import (
    ml100k_rows,
    random_log,
    recbole_files,
    write_amazon_ratings,
    write_fake_recbole_wheel,
    write_grouplens_100k,
    write_manifest,
    write_meta_2014,
    write_meta_2018,
)
from test_download import Server

from recsys_core.config import DataConfig
from recsys_core.data.preprocess import preprocess
from recsys_core.data.sources import get_source
from recsys_core.data.sources.movielens import RECBOLE_SHA256, MovieLens100K
from recsys_core.errors import ChecksumError, DownloadError
from recsys_core.io import sha256_file

CFG = DataConfig()


@pytest.fixture
def server():
    srv = Server()
    yield srv
    srv.close()


def test_beauty_2014_ratings_and_python_literal_metadata(tmp_path):
    rows = random_log(20, 10, (3, 6))
    write_amazon_ratings(tmp_path / "ratings_Beauty.csv", rows)
    meta = {
        "i000": {"title": "Rose Hand Cream 3.4 oz", "price": 12.5, "imUrl": "http://ecx.images-amazon.com/a.jpg",
                 "categories": [["Beauty", "Skin Care", "Hands & Nails"]], "brand": "Acme",
                 "description": "A rich cream"},
        "i001": {"salesRank": {"Beauty": 3}},  # keys vary: no title at all
        "zzz": {"title": "never rated"},
    }  # fmt: skip
    write_meta_2014(tmp_path / "meta_Beauty.json.gz", meta)
    write_manifest(tmp_path, "beauty")
    raw = get_source("beauty").load(tmp_path, CFG)
    assert len(raw.interactions) == len(rows)
    assert raw.interactions["rating"].dtype == "float64" and raw.interactions["timestamp"].dtype == "int64"
    items = raw.items.set_index("raw_id")
    assert items.loc["i000", "title"] == "Rose Hand Cream 3.4 oz"
    assert items.loc["i000", "image_url"] == "http://ecx.images-amazon.com/a.jpg"
    assert items.loc["i000", "categories"] == "Beauty > Skin Care > Hands & Nails"
    assert items.loc["i001", "title"] == ""
    assert "zzz" not in items.index  # only rated items are parsed


def test_metadata_is_never_evaluated(tmp_path):
    """A line with a call in it is malformed data, not code: literal_eval refuses it."""
    write_amazon_ratings(tmp_path / "ratings_Beauty.csv", [("u1", "B1", 5.0, 1), ("u1", "B2", 5.0, 2)])
    marker = tmp_path / "pwned"
    with open(tmp_path / "meta_Beauty.json.gz", "wb") as handle:
        import gzip

        handle.write(gzip.compress(
            (repr({"asin": "B1", "title": "ok"}) + "\n"
             + f"{{'asin': 'B2', 'title': __import__('pathlib').Path({str(marker)!r}).touch()}}\n").encode()
        ))  # fmt: skip
    write_manifest(tmp_path, "beauty")
    raw = get_source("beauty").load(tmp_path, DataConfig(max_bad_line_share=0.6))
    assert not marker.exists()
    assert raw.bad_lines[1].count == 1 and raw.bad_lines[1].examples[0][0] == 2


def test_games_2018_json_metadata(tmp_path):
    write_amazon_ratings(tmp_path / "ratings_Video_Games.csv", [("u1", "B00XYZ1234", 4.0, 5), ("u2", "B2", 3.0, 6)])
    meta = {
        "B00XYZ1234": {"category": ["Video Games", "PC", "Games"], "description": ["Build your city ...", "Fast."],
                       "title": "City Builder <b>Deluxe</b> &amp; More", "brand": "Acme", "feature": ["x"],
                       "imageURL": ["https://img/51x._SS40_.jpg"], "imageURLHighRes": ["https://img/51x.jpg"]},
        "B2": {"title": "", "description": [], "imageURL": ["https://img/small.jpg"], "imageURLHighRes": []},
    }  # fmt: skip
    write_meta_2018(tmp_path / "meta_Video_Games.json.gz", meta)
    write_manifest(tmp_path, "games")
    items = get_source("games").load(tmp_path, CFG).items.set_index("raw_id")
    assert items.loc["B00XYZ1234", "title"] == "City Builder Deluxe & More"
    assert items.loc["B00XYZ1234", "description"] == "Build your city ... Fast."
    assert items.loc["B00XYZ1234", "image_url"] == "https://img/51x.jpg"
    assert items.loc["B00XYZ1234", "categories"] == "Video Games > PC > Games"
    assert items.loc["B2", "image_url"] == "https://img/small.jpg" and items.loc["B2", "title"] == ""


def test_grouplens_ml100k_files(tmp_path):
    rows = ml100k_rows()
    write_grouplens_100k(tmp_path, rows, 25)
    write_manifest(tmp_path, "ml-100k")
    raw = get_source("ml-100k").load(tmp_path, CFG)
    assert len(raw.interactions) == len(rows)
    item = raw.items.set_index("raw_id").loc["3"]
    assert item["title"] == "Café Movie 3 (1995)"  # latin-1 decoded
    assert item["description"].startswith("Genres: ")


def test_ml_latest_small_files(tmp_path):
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,3.5,964981247\n")
    (tmp_path / "movies.csv").write_text(
        'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n3,"American President, The (1995)",'
        "(no genres listed)\n"
    )
    write_manifest(tmp_path, "ml-latest-small")
    raw = get_source("ml-latest-small").load(tmp_path, CFG)
    assert raw.interactions["rating"].tolist() == [4.0, 3.5]
    items = raw.items.set_index("raw_id")
    assert items.loc["3", "title"] == "American President, The (1995)"
    assert items.loc["1", "categories"] == "Adventure, Animation" and items.loc["3", "categories"] == ""


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
def test_custom_tables(tmp_path, suffix):
    inter = pd.DataFrame({"user_id": ["a", "a", "b"], "item_id": ["x", "y", "x"], "timestamp": ["3", "1", "2"]})
    items = pd.DataFrame({"item": ["x", "y"], "title": ["X <i>thing</i>", "Y"], "image_path": ["img/x.png", ""]})
    src = tmp_path / "src"
    src.mkdir()
    for frame, name in ((inter, "inter"), (items, "items")):
        path = src / f"{name}{suffix}"
        if suffix == ".parquet":
            frame.to_parquet(path)
        else:
            frame.to_csv(path, sep="\t" if suffix == ".tsv" else ",", index=False)
    cfg = DataConfig(dataset_code="custom", custom_interactions=str(src / f"inter{suffix}"),
                     custom_items=str(src / f"items{suffix}"))  # fmt: skip
    raw_dir = tmp_path / "raw"
    source = get_source("custom")
    manifest = source.download(raw_dir, cfg)
    assert {f["name"] for f in manifest["files"]} == {f"interactions{suffix}", f"items{suffix}"}
    raw = source.load(raw_dir, cfg)
    assert raw.interactions["rating"].tolist() == [1.0, 1.0, 1.0]  # no rating column: implicit feedback
    assert raw.interactions["timestamp"].tolist() == [3, 1, 2]
    assert raw.items.set_index("raw_id").loc["x", "title"] == "X thing"
    assert raw.items.set_index("raw_id").loc["x", "image_path"] == "img/x.png"


def test_custom_without_timestamp_uses_file_order(tmp_path):
    path = tmp_path / "inter.csv"
    path.write_text("user,item\na,x\na,y\na,z\n")
    cfg = DataConfig(dataset_code="custom", custom_interactions=str(path))
    source = get_source("custom")
    source.download(tmp_path / "raw", cfg)
    raw = source.load(tmp_path / "raw", cfg)
    assert raw.interactions["timestamp"].tolist() == [0, 1, 2]


def _fallback(tmp_path, server, expected=None):
    rows = ml100k_rows()
    wheel = write_fake_recbole_wheel(tmp_path / "recbole-1.2.1-py3-none-any.whl", recbole_files(rows, 25))
    server.script["/ml-100k.zip"] = ["404"]
    source = MovieLens100K(url=server.url("/ml-100k.zip"), wheel=str(wheel), expected=expected)
    return source, rows


def test_ml100k_falls_back_to_the_recbole_wheel_and_checks_sha256(tmp_path, server):
    files = recbole_files(ml100k_rows(), 25)
    import hashlib

    expected = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    source, rows = _fallback(tmp_path, server, expected)
    raw_dir = tmp_path / "raw"
    manifest = source.download(raw_dir, CFG)
    assert server.hits["/ml-100k.zip"] == 1
    assert "recbole==1.2.1" in manifest["source"] and "unreachable" in manifest["source"]
    assert {f["name"]: f["sha256"] for f in manifest["files"]} == expected
    assert json.loads((raw_dir / "source.json").read_text()) == manifest

    # The prepared result equals the one from GroupLens' own files holding the same ratings.
    grouplens = tmp_path / "grouplens"
    write_grouplens_100k(grouplens, rows, 25)
    write_manifest(grouplens, "ml-100k")
    a = preprocess(source.load(raw_dir, CFG), CFG)
    b = preprocess(get_source("ml-100k").load(grouplens, CFG), CFG)
    pd.testing.assert_frame_equal(a.interactions, b.interactions)
    assert a.items["raw_id"].tolist() == b.items["raw_id"].tolist()
    assert a.items["title"].tolist() == b.items["title"].tolist()


def test_fake_wheel_fails_the_real_checksums_and_leaves_nothing(tmp_path, server):
    source, _ = _fallback(tmp_path, server)  # expects the real recbole sha256 values
    assert source.expected == RECBOLE_SHA256
    raw_dir = tmp_path / "raw"
    with pytest.raises(ChecksumError, match="ml-100k.inter"):
        source.download(raw_dir, CFG)
    assert not (raw_dir / "ml-100k.inter").exists() and not (raw_dir / "source.json").exists()


def test_no_grouplens_and_no_wheel_says_what_to_do(tmp_path, server):
    server.script["/ml-100k.zip"] = ["404"]
    source = MovieLens100K(url=server.url("/ml-100k.zip"), wheel=str(tmp_path / "missing.whl"))
    with pytest.raises(DownloadError) as err:
        source.download(tmp_path / "raw", CFG)
    text = str(err.value)
    assert server.url("/ml-100k.zip") in text and "u.data" in text and "RECSYS_RECBOLE_WHEEL" in text


def test_second_download_keeps_the_manifest(tmp_path):
    write_grouplens_100k(tmp_path, ml100k_rows(), 25)
    first = get_source("ml-100k").download(tmp_path, CFG)
    before = (tmp_path / "source.json").read_bytes()
    second = get_source("ml-100k").download(tmp_path, CFG)
    assert first == second and (tmp_path / "source.json").read_bytes() == before
    assert {f["name"]: f["sha256"] for f in first["files"]} == {
        n: sha256_file(tmp_path / n) for n in ("u.data", "u.item")
    }
