"""Careless or hostile input (issue 15, parts 4 and 5), each row of the issue's table reproduced on tiny files.

Images: an ``image_path`` that leads outside the items file's folder (absolute, "..", a symlink, /etc/passwd,
/proc/self/environ) or to something that is not a regular file is refused and never opened; the decoder says why a
picture failed (not an image / truncated / damaged, never "KeyError: 'MPO'"); every listed format, AVIF included,
decodes. Readers: empty files are a clear error; extra or missing fields, bad bytes and over-long lines are malformed
lines with their true line number in every reader, under the same --max_bad_line_share rule; valid files parse as
before.
"""

from __future__ import annotations

import gzip
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import write_manifest
from PIL import Image, features

from recsys_core.config import DataConfig, FeaturesConfig
from recsys_core.data import formats, images
from recsys_core.data.formats import MAX_LINE_BYTES, read_delimited_interactions, read_table
from recsys_core.data.images import FILES, download_images
from recsys_core.data.sources import get_source
from recsys_core.errors import ConfigError, DataFormatError

N = 150  # data lines: one malformed line is 0.67%, under the default 1% share
BAD_LINE = 74  # the true line number of the malformed line, in every file


# ---------------------------------------------------------------------------------------------- images


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def picture(width: int = 60, height: int = 40) -> Image.Image:
    return Image.new("RGB", (width, height), (200, 30, 30))


def noisy(fmt: str) -> bytes:
    """A picture whose data is long enough that cutting it leaves the header but not the pixels."""
    return encode(Image.effect_noise((300, 300), 60).convert("RGB"), fmt)


def run(items: list[tuple[str, str]], dest: Path, base_dir: Path | None) -> pd.DataFrame:
    frame = pd.DataFrame([(r, "", p) for r, p in items], columns=["raw_id", "image_url", "image_path"])
    return download_images(frame, dest, FeaturesConfig(image_workers=2), base_dir=base_dir, progress=False)


def rows(manifest: pd.DataFrame) -> dict[str, dict]:
    return {r["raw_id"]: r for r in manifest.to_dict("records")}


@pytest.fixture
def reads(monkeypatch):
    """Every path the images step opens."""
    opened: list[Path] = []
    real = images._read_local

    def spy(path, cfg):
        opened.append(Path(path))
        return real(path, cfg)

    monkeypatch.setattr(images, "_read_local", spy)
    return opened


@pytest.fixture
def folder(tmp_path) -> Path:
    """tmp_path/data: the items file's folder, with pictures inside; tmp_path/outside.png and secret.png beside it."""
    data = tmp_path / "data"
    (data / "pics").mkdir(parents=True)
    (data / "pics" / "in.png").write_bytes(encode(picture(), "PNG"))
    (tmp_path / "outside.png").write_bytes(encode(picture(), "PNG"))
    (tmp_path / "secret.png").write_bytes(encode(picture(), "PNG"))
    (data / "link_out.png").symlink_to(tmp_path / "outside.png")
    (data / "link_in.png").symlink_to(data / "pics" / "in.png")
    return data


def test_image_paths_outside_the_items_folder_are_refused_and_never_read(folder, tmp_path, reads):
    hostile = {
        "abs_outside": str(tmp_path / "outside.png"),
        "dotdot": "../secret.png",
        "passwd": "/etc/passwd",
        "environ": "/proc/self/environ",
        "symlink_out": "link_out.png",
        "dotdot_inside_first": "pics/../../secret.png",
        "home": "~/.bashrc",
    }
    fine = {"relative": "pics/in.png", "abs_inside": str(folder / "pics" / "in.png"), "symlink_in": "link_in.png",
            "dotdot_back_in": "pics/../pics/in.png"}  # fmt: skip
    manifest = rows(run(list(hostile.items()) + list(fine.items()), tmp_path / "out", folder))
    for raw_id, given in hostile.items():
        got = manifest[raw_id]
        assert got["status"] == "refused" and got["file"] == "", got
        assert f"image_path {given!r} leads to" in got["reason"], got
        assert f"outside the items file's folder {folder.resolve()}" in got["reason"]
        assert "Copy the image into that folder" in got["reason"]
    for raw_id in fine:
        assert manifest[raw_id]["status"] == "ok", manifest[raw_id]
    # Nothing outside the folder was opened, and no copy of it lies in the images folder.
    assert reads and all(p.resolve().is_relative_to(folder.resolve()) for p in reads), reads
    saved = sorted(p.name for p in (tmp_path / "out" / FILES).iterdir())
    assert saved == sorted(f"{raw_id}.jpg" for raw_id in fine)


def test_what_is_not_a_regular_file_is_refused(folder, tmp_path, reads):
    os.mkfifo(folder / "pipe.png")  # opening it for reading would block forever
    (folder / "dir.png").mkdir()
    manifest = rows(run([("fifo", "pipe.png"), ("dir", "dir.png"), ("zero", "/dev/zero")], tmp_path / "out", folder))
    assert (
        manifest["fifo"]["status"] == "refused"
        and "is a fifo (named pipe), not a regular file" in (manifest["fifo"]["reason"])
    )
    assert manifest["dir"]["status"] == "refused" and "is a folder, not a regular file" in manifest["dir"]["reason"]
    assert manifest["zero"]["status"] == "refused" and "outside the items file's folder" in manifest["zero"]["reason"]
    # Even with the whole file system as the folder, devices and /proc entries are refused, not read.
    manifest = rows(run([("null", "dev/null"), ("environ", "proc/self/environ")], tmp_path / "root", Path("/")))
    assert manifest["null"]["status"] == "refused" and "a character device" in manifest["null"]["reason"]
    assert manifest["environ"]["status"] == "refused" and "/proc" in manifest["environ"]["reason"]
    assert not list((tmp_path / "root" / FILES).iterdir())


def test_a_copy_made_of_an_outside_file_before_is_removed(folder, tmp_path):
    outside = str(tmp_path / "outside.png")
    first = rows(run([("x", outside)], tmp_path / "out", tmp_path))  # the folder above: the file is inside it
    assert first["x"]["status"] == "ok" and (tmp_path / "out" / first["x"]["file"]).is_file()
    again = rows(run([("x", outside)], tmp_path / "out", folder))
    assert again["x"]["status"] == "refused" and not list((tmp_path / "out" / FILES).iterdir())


def test_images_stage_refuses_outside_paths_of_custom_items(workdir, capsys):
    from conftest import random_log

    from stages import cli

    mine = workdir / "mine"
    (mine / "pics").mkdir(parents=True)
    log = random_log(20, 6, (4, 7), seed=3)
    pd.DataFrame(log, columns=["user", "item", "rating", "timestamp"]).to_csv(mine / "log.csv", index=False)
    (mine / "pics" / "ok.png").write_bytes(encode(picture(), "PNG"))
    (workdir / "outside.png").write_bytes(encode(picture(), "PNG"))
    (workdir / "secret.png").write_bytes(encode(picture(), "PNG"))
    paths = ["/tmp/outside.png", str(workdir / "outside.png"), "../secret.png", "/etc/passwd", "/proc/self/environ",
             "pics/ok.png"]  # fmt: skip
    items = [{"item": f"i{i:03d}", "title": f"Thing {i}", "image_path": paths[i]} for i in range(6)]
    pd.DataFrame(items).to_csv(mine / "items.csv", index=False)
    flags = ["--dataset_code", "custom", "--custom_interactions", "mine/log.csv", "--custom_items", "mine/items.csv",
             "--min_uc", "3", "--min_sc", "2"]  # fmt: skip
    assert cli.main(["download", *flags]) == 0
    assert cli.main(["images", *flags]) == 0
    assert "refused" in capsys.readouterr().out
    dest = workdir / "data/images/custom"
    manifest = pd.read_parquet(dest / "manifest.parquet").set_index("raw_id")
    assert manifest["status"].to_dict() == {f"i{i:03d}": "refused" for i in range(5)} | {"i005": "ok"}
    assert sorted(p.name for p in (dest / FILES).iterdir()) == ["i005.jpg"]


README_FORMATS = ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF", "MPO"]


def test_the_installed_pillow_opens_every_listed_format():
    assert features.check("avif"), "pillow==13.0.0 (requirements.txt) has AVIF built in"
    assert set(images.FORMATS) == set(images.WANTED_FORMATS)
    assert all(fmt in Image.OPEN for fmt in images.FORMATS)  # a name Pillow cannot open was the KeyError: 'MPO'


@pytest.mark.parametrize("fmt", README_FORMATS)
def test_every_listed_format_decodes(folder, tmp_path, fmt):
    kwargs = {"save_all": True, "append_images": [picture()]} if fmt == "MPO" else {}
    (folder / f"p.{fmt.lower()}").write_bytes(encode(picture(300, 150), fmt, **kwargs))
    got = rows(run([("p", f"p.{fmt.lower()}")], tmp_path / "out", folder))["p"]
    assert (got["status"], got["orig_width"], got["orig_height"], got["width"], got["height"]) == (
        "ok", 300, 150, 224, 112), got  # fmt: skip
    assert Image.open(tmp_path / "out" / got["file"]).size == (224, 112)


def test_the_decoder_reports_the_real_reason(folder, tmp_path):
    (folder / "passwd.png").write_bytes(Path("/etc/passwd").read_bytes())  # text under an image name
    (folder / "doc.png").write_bytes(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n")
    (folder / "cut.jpg").write_bytes(noisy("JPEG")[:400])
    (folder / "cut.png").write_bytes(noisy("PNG")[:3000])
    (folder / "cut.avif").write_bytes(noisy("AVIF")[:300])
    (folder / "empty.png").write_bytes(b"")
    (folder / "ok.avif").write_bytes(encode(picture(), "AVIF"))
    names = ["passwd.png", "doc.png", "cut.jpg", "cut.png", "cut.avif", "empty.png", "ok.avif"]
    manifest = rows(run([(n, n) for n in names], tmp_path / "out", folder))
    reasons = {n: (manifest[n]["status"], manifest[n]["reason"]) for n in names}
    assert reasons["passwd.png"][0] == "not_image"
    assert reasons["passwd.png"][1].startswith("not an image: cannot identify image file (it is text;")
    assert reasons["doc.png"] == ("not_image", reasons["doc.png"][1]) and "a PDF document" in reasons["doc.png"][1]
    assert reasons["cut.jpg"][0] == "corrupt" and reasons["cut.jpg"][1].startswith("truncated JPEG")
    assert reasons["cut.png"][0] == "corrupt" and reasons["cut.png"][1].startswith("truncated PNG")
    assert reasons["cut.avif"][0] == "corrupt" and "AVIF" in reasons["cut.avif"][1]
    assert reasons["empty.png"] == ("not_image", "not an image: the file is empty (0 bytes)")
    assert reasons["ok.avif"] == ("ok", "")
    assert not any("KeyError" in reason or "0x" in reason for _, reason in reasons.values()), reasons


# ---------------------------------------------------------------------------------------------- readers


@dataclass(frozen=True)
class Reader:
    """One interactions format: the file, its separator and header, and the item file its source needs."""

    code: str
    name: str
    sep: str
    header: str | None
    items: dict[str, bytes]

    def line(self, k: int) -> str:
        user = f"1m_{k % 10}" if self.name == "ml-1m.inter" else f"u{k % 10}"
        return self.sep.join([user, f"i{k % 13}", "4", str(1000 + k)])

    def first_data_line(self) -> int:
        return 2 if self.header else 1


U_ITEM = ("1|Movie (1995)|01-Jan-1995||http://x|" + "|".join(["0"] * 19) + "\n").encode("latin-1")
READERS = {
    "u.data": Reader("ml-100k", "u.data", "\t", None, {"u.item": U_ITEM}),
    "ml-100k.inter": Reader(
        "ml-100k", "ml-100k.inter", "\t", "user_id:token\titem_id:token\trating:float\ttimestamp:float",
        {"ml-100k.item": b"item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n1\tM\t1995\tA\n"},
    ),
    "ratings.csv": Reader("ml-latest-small", "ratings.csv", ",", "userId,movieId,rating,timestamp",
                          {"movies.csv": b"movieId,title,genres\n1,Movie (1995),Drama\n"}),
    "amazon": Reader("beauty", "ratings_Beauty.csv", ",", None,
                     {"meta_Beauty.json.gz": gzip.compress(b"{'asin': 'i1', 'title': 'x'}\n")}),
    "ratings.dat": Reader("ml-1m", "ratings.dat", "::", None, {"movies.dat": b"1::Movie (1995)::Drama\n"}),
    "ml-1m.inter": Reader(
        "ml-1m", "ml-1m.inter", "\t", "user_id:token\titem_id:token\trating:float\ttimestamp:float",
        {"ml-1m.item": b"item_id:token\tmovie_title:token_seq\trelease_year:token\tgenre:token_seq\n"
                       b"Movie (1995)\tMovie\t1995\tDrama\n"},
    ),
    "custom.csv": Reader("custom", "inter.csv", ",", "user,item,rating,timestamp", {}),
    "custom.tsv": Reader("custom", "inter.tsv", "\t", "user\titem\trating\ttimestamp", {}),
}  # fmt: skip


def write_and_load(tmp_path: Path, reader: Reader, data: list[bytes], **cfg):
    """Write the data lines (bytes, one per line) under the reader's header, with its item file; load the source."""
    body = b"".join(line + b"\n" for line in data)
    if reader.header:
        body = reader.header.encode() + b"\n" + body
    raw = tmp_path / "raw"
    raw.mkdir(exist_ok=True)
    config = DataConfig(dataset_code=reader.code, **cfg)
    if reader.code == "custom":
        src = tmp_path / "src" / reader.name
        src.parent.mkdir(exist_ok=True)
        src.write_bytes(body)
        config = config.model_copy(update={"custom_interactions": str(src)})
        get_source("custom").download(raw, config)
    else:
        (raw / reader.name).write_bytes(body)
        for name, content in reader.items.items():
            (raw / name).write_bytes(content)
        write_manifest(raw, reader.code)
    return get_source(reader.code).load(raw, config)


def good_lines(reader: Reader) -> list[bytes]:
    return [reader.line(k).encode() for k in range(N)]


def with_bad(reader: Reader, bad: bytes) -> list[bytes]:
    """N good data lines, the one on file line BAD_LINE replaced by ``bad``."""
    lines = good_lines(reader)
    lines[BAD_LINE - reader.first_data_line()] = bad
    return lines


def check_one_bad_line(tmp_path, reader: Reader, bad: bytes, reason: str) -> None:
    """The line is counted with its true number and reason; the rest loads; above the share it fails naming it."""
    raw = write_and_load(tmp_path, reader, with_bad(reader, bad))
    tally = raw.bad_lines[0]
    assert (tally.count, tally.total) == (1, N), tally.describe()
    ((line, got, _),) = tally.examples
    assert line == BAD_LINE and reason in got, (line, got)
    assert len(raw.interactions) == N - 1
    assert BAD_LINE not in set(raw.interactions["line"])
    with pytest.raises(DataFormatError) as err:
        write_and_load(tmp_path, reader, with_bad(reader, bad), max_bad_line_share=0.0)
    text = str(err.value)
    assert re.search(rf"line {BAD_LINE}: [^\n]*{re.escape(reason)}", text), text
    assert raw_name(reader) in text and "--max_bad_line_share" in text


def raw_name(reader: Reader) -> str:
    """The file the source reads: a custom file is copied into the raw folder as interactions.<suffix>."""
    return "interactions" + Path(reader.name).suffix if reader.code == "custom" else reader.name


@pytest.mark.parametrize("fmt", READERS)
def test_valid_files_parse_every_line_in_order(tmp_path, fmt):
    reader = READERS[fmt]
    raw = write_and_load(tmp_path, reader, good_lines(reader))
    assert [b.count for b in raw.bad_lines] == [0] * len(raw.bad_lines)
    first = reader.first_data_line()
    assert raw.interactions["line"].tolist() == list(range(first, first + N))
    assert raw.interactions["timestamp"].tolist() == [1000 + k for k in range(N)]
    assert raw.interactions["item"].tolist() == [f"i{k % 13}" for k in range(N)]
    assert raw.interactions["user"].tolist() == [f"{'' if fmt == 'ml-1m.inter' else 'u'}{k % 10}" for k in range(N)]


@pytest.mark.parametrize("fmt", READERS)
def test_a_line_with_an_extra_field_is_a_malformed_line(tmp_path, fmt):
    reader = READERS[fmt]
    check_one_bad_line(tmp_path, reader, (reader.line(0) + reader.sep + "extra").encode(), "found 5")


@pytest.mark.parametrize("fmt", READERS)
def test_a_line_with_a_missing_field_is_a_malformed_line(tmp_path, fmt):
    reader = READERS[fmt]
    short = reader.sep.join(reader.line(0).split(reader.sep)[:3])
    check_one_bad_line(tmp_path, reader, short.encode(), "found 3")


@pytest.mark.parametrize("fmt", READERS)
def test_a_non_utf8_byte_is_a_malformed_line_with_its_true_number(tmp_path, fmt):
    reader = READERS[fmt]
    check_one_bad_line(tmp_path, reader, reader.line(0).encode() + b"\xff", "not valid utf-8: byte 0xff at position")


@pytest.mark.parametrize("fmt", READERS)
def test_an_over_long_line_is_a_malformed_line(tmp_path, fmt, monkeypatch):
    monkeypatch.setattr(formats, "MAX_LINE_BYTES", 1000)
    reader = READERS[fmt]
    check_one_bad_line(tmp_path, reader, reader.line(0).encode() + b"x" * 2000, "is longer than the 1,000-byte limit")


def test_the_real_line_limit(tmp_path):
    reader = READERS["custom.csv"]
    long_line = reader.line(0).encode() + b"x" * MAX_LINE_BYTES
    check_one_bad_line(tmp_path, reader, long_line, f"is longer than the {MAX_LINE_BYTES:,}-byte limit")


@pytest.mark.parametrize("fmt", [f for f in READERS if READERS[f].code != "custom"])
def test_an_empty_interactions_file_names_the_file_and_the_fix(tmp_path, fmt):
    reader = READERS[fmt]
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / reader.name).write_bytes(b"")
    for name, content in reader.items.items():
        (raw / name).write_bytes(content)
    write_manifest(raw, reader.code)
    with pytest.raises(DataFormatError) as err:
        get_source(reader.code).load(raw, DataConfig(dataset_code=reader.code))
    assert str(err.value).startswith(f"{raw / reader.name} is empty (0 bytes)"), err.value
    assert "recsys download" in str(err.value)


ITEM_FILES = {"u.item": "u.data", "ml-100k.item": "ml-100k.inter", "movies.csv": "ratings.csv",
              "movies.dat": "ratings.dat", "ml-1m.item": "ml-1m.inter"}  # fmt: skip


@pytest.mark.parametrize("item_file", ITEM_FILES)
def test_an_empty_item_file_names_the_file(tmp_path, item_file):
    reader = READERS[ITEM_FILES[item_file]]
    raw = tmp_path / "raw"
    raw.mkdir()
    header = [reader.header.encode()] if reader.header else []
    (raw / reader.name).write_bytes(b"".join(line + b"\n" for line in header + good_lines(reader)))
    (raw / item_file).write_bytes(b"\n\n")  # blank lines only: no more use than 0 bytes
    write_manifest(raw, reader.code)
    with pytest.raises(DataFormatError, match=rf"{item_file} is empty"):
        get_source(reader.code).load(raw, DataConfig(dataset_code=reader.code))


def test_an_empty_gzip_metadata_file_is_a_broken_download(tmp_path):
    reader = READERS["amazon"]
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / reader.name).write_bytes(b"\n".join(good_lines(reader)) + b"\n")
    (raw / "meta_Beauty.json.gz").write_bytes(b"")
    write_manifest(raw, "beauty")
    with pytest.raises(DataFormatError, match=r"meta_Beauty.json.gz: truncated or corrupt gzip file \(0 bytes\)"):
        get_source("beauty").load(raw, DataConfig(dataset_code="beauty"))


@pytest.mark.parametrize("role", ["interactions", "items"])
@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
def test_an_empty_custom_file_is_refused_with_its_name(tmp_path, role, suffix):
    src = tmp_path / f"mine{suffix}"
    src.write_bytes(b"")
    good = tmp_path / "log.csv"
    good.write_text("user,item\nu1,i1\n")
    paths = {"custom_interactions": str(src if role == "interactions" else good)}
    if role == "items":
        paths["custom_items"] = str(src)
    cfg = DataConfig(dataset_code="custom", **paths)
    with pytest.raises(ConfigError) as err:
        get_source("custom").download(tmp_path / "raw", cfg)
    assert f"--custom_{role} {src}: the file is empty (0 bytes)" in str(err.value)
    assert "header line and at least one row" in str(err.value)
    assert not list((tmp_path / "raw").glob("*.*"))  # checked before copying: nothing half-fetched
    # A copy that became empty in the raw folder fails the load the same way, naming the user's file.
    (src.write_text("user,item\nu1,i1\n") if suffix != ".parquet" else
     pd.DataFrame({"user": ["u1"], "item": ["i1"]}).to_parquet(src))  # fmt: skip
    get_source("custom").download(tmp_path / "raw", cfg)
    (tmp_path / "raw" / f"{role}{suffix}").write_bytes(b"")
    with pytest.raises(DataFormatError) as err:
        get_source("custom").load(tmp_path / "raw", cfg)
    text = str(err.value)
    assert text.startswith(f"{tmp_path / 'raw' / f'{role}{suffix}'} is empty (0 bytes)") and str(src) in text


def test_a_custom_header_without_rows_says_so(tmp_path):
    src = tmp_path / "log.csv"
    src.write_text("user,item,rating,timestamp\n")
    cfg = DataConfig(dataset_code="custom", custom_interactions=str(src))
    get_source("custom").download(tmp_path / "raw", cfg)
    with pytest.raises(DataFormatError, match="interactions.csv: holds a header but no rows"):
        get_source("custom").load(tmp_path / "raw", cfg)


def test_custom_items_with_bad_lines_are_counted(tmp_path):
    inter = tmp_path / "log.csv"
    inter.write_text("user,item\n" + "".join(f"u{k % 10},i{k % 13}\n" for k in range(N)))
    lines = [b"item,title,image_path"] + [f"i{k},Thing {k},".encode() for k in range(N - 1)]
    lines[BAD_LINE - 1] = b"i72,Thing \xff 72,"  # file line 74 (line 1 is the header)
    lines[BAD_LINE] = b"i73,Thing, with a comma,"  # unquoted separator: one field too many
    items = tmp_path / "items.csv"
    items.write_bytes(b"\n".join(lines) + b"\n")
    cfg = DataConfig(dataset_code="custom", custom_interactions=str(inter), custom_items=str(items),
                     max_bad_line_share=0.05)  # fmt: skip
    get_source("custom").download(tmp_path / "raw", cfg)
    raw = get_source("custom").load(tmp_path / "raw", cfg)
    tally = raw.bad_lines[1]
    assert tally.path.name == "items.csv" and (tally.count, tally.total) == (2, N - 1)
    assert [(n, r.split(":")[0]) for n, r, _ in tally.examples] == [
        (BAD_LINE, "not valid utf-8"), (BAD_LINE + 1, "expected 3 fields as in the header, found 4")]  # fmt: skip
    assert not {"i72", "i73"} & set(raw.items["raw_id"]) and len(raw.items) == N - 3
    with pytest.raises(DataFormatError, match=r"2 of \d+ lines .* malformed in .*items.csv"):
        get_source("custom").load(tmp_path / "raw", cfg.model_copy(update={"max_bad_line_share": 0.01}))


def test_metadata_bad_bytes_and_over_long_lines_are_counted(tmp_path, monkeypatch):
    monkeypatch.setattr(formats, "MAX_LINE_BYTES", 200)
    lines = [repr({"asin": f"i{k % 13}", "title": f"T{k}"}).encode() for k in range(13)]
    lines[3] = repr({"asin": "i3", "title": "T3"}).encode()[:-2] + b"\xff'}"
    lines[6] = repr({"asin": "i6", "title": "x" * 500}).encode()
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "ratings_Beauty.csv").write_text("".join(f"u{k},i{k},5,{k}\n" for k in range(13)))
    (raw / "meta_Beauty.json.gz").write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    write_manifest(raw, "beauty")
    loaded = get_source("beauty").load(raw, DataConfig(dataset_code="beauty", max_bad_line_share=0.2))
    tally = loaded.bad_lines[1]
    assert [(n, r.split(":")[0].split(" of ")[0]) for n, r, _ in tally.examples] == [(4, "not valid utf-8"),
                                                                                   (7, "line")]  # fmt: skip
    assert "longer than the 200-byte limit" in tally.examples[1][1]
    titles = loaded.items.set_index("raw_id")["title"]
    assert titles["i5"] == "T5" and titles["i7"] == "T7" and "i3" not in titles and "i6" not in titles


def test_item_files_count_bad_bytes_with_their_line(tmp_path):
    reader = READERS["ml-100k.inter"]
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / reader.name).write_bytes((reader.header + "\n").encode() + b"\n".join(good_lines(reader)) + b"\n")
    items = [b"item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
    items += [f"{k}\tMovie {k}\t1995\tDrama".encode() for k in range(1, N)]
    items[BAD_LINE - 1] = b"73\tMovie \xe9 73\t1995\tDrama"  # latin-1 in a UTF-8 file
    (raw / "ml-100k.item").write_bytes(b"\n".join(items) + b"\n")
    write_manifest(raw, "ml-100k")
    loaded = get_source("ml-100k").load(raw, DataConfig(dataset_code="ml-100k"))
    tally = loaded.bad_lines[1]
    assert (tally.count, tally.total, tally.examples[0][0]) == (1, N - 1, BAD_LINE)
    assert "73" not in set(loaded.items["raw_id"]) and len(loaded.items) == N - 2


# ---------------------------------------------------------------------------------------------- valid input


TRICKY_CSV = (
    "\ufeffuser,item,title,note\r\n"
    'u1,i1,"Comma, inside",plain\r\n'
    'u2,i2,"Quote ""inside""",\r\n'
    'u3,i3,"two\nlines",é ü 漢字\r\n'
    "u4,i4,,  spaced  \r\n"
    "\r\n"
    "u5,i5,nan,NULL\r\n"
)


def test_read_table_matches_pandas_on_valid_files(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(TRICKY_CSV.encode("utf-8"))
    table = read_table(path)
    expected = pd.read_csv(path, dtype=str, keep_default_na=False)
    pd.testing.assert_frame_equal(table.frame, expected)
    assert table.lines.tolist() == [2, 3, 4, 6, 8]  # the row after the two-line field starts on line 6
    assert table.bad.count == 0 and table.bad.total == 6
    tsv = tmp_path / "t.tsv"
    tsv.write_text("a\tb\tb\t\n1\t2\t3\t4\n")
    pd.testing.assert_frame_equal(read_table(tsv).frame, pd.read_csv(tsv, sep="\t", dtype=str, keep_default_na=False))


def test_read_table_without_quotes_matches_pandas(tmp_path):
    """Files without a quote take the vectorised path: same frame as pandas, lines counted the same way."""
    path = tmp_path / "t.csv"
    path.write_bytes("\ufeffuser,item,,user\r\n\r\nu1,i1,x,é\r\n   \r\nu2,i2,,\r\nu3, i3 ,nan,NULL\r\n".encode())
    table = read_table(path)
    pd.testing.assert_frame_equal(table.frame, pd.read_csv(path, dtype=str, keep_default_na=False))
    assert list(table.frame.columns) == ["user", "item", "Unnamed: 2", "user.1"]
    assert table.lines.tolist() == [3, 5, 6] and (table.bad.count, table.bad.total) == (0, 3)


def test_broken_rows_of_a_quoted_csv_are_malformed_lines(tmp_path):
    path = tmp_path / "t.csv"
    rows = ["user,item,title"] + [f"u{k},i{k},Title {k}" for k in range(1, 10)]
    rows[3] = 'u3,i3,"Title, three",extra'  # line 4: a field too many
    rows[5] = 'u5,i5,"Title"five'  # line 6: text after the closing quote
    rows[7] = 'u7,i7,"Never closed'  # line 8: the quote swallows lines 8-10
    path.write_text("\n".join(rows) + "\n")
    table = read_table(path)
    assert table.frame["user"].tolist() == ["u1", "u2", "u4", "u6"] and table.lines.tolist() == [2, 3, 5, 7]
    reasons = [(n, r) for n, r, _ in table.bad.examples]
    assert reasons == [(4, "expected 3 fields as in the header, found 4"),
                       (6, "broken quoting (',' expected after '\"')"),
                       (8, "a quote opened on line 8 is never closed: lines 8 to 10 are lost")]  # fmt: skip
    assert (table.bad.count, table.bad.total) == (5, 9)  # lines 4 and 6, and lines 8-10 lost to the open quote


def test_read_delimited_matches_a_plain_split(tmp_path):
    path = tmp_path / "u.data"
    lines = [f"{k % 7}\t{k % 5}\t{k % 5 + 1}\t{880000000 + k}" for k in range(200)]
    path.write_text("\n".join(lines) + "\n")
    frame, bad = read_delimited_interactions(path, "\t", header=False)
    parts = np.array([line.split("\t") for line in lines])
    assert bad.count == 0 and bad.total == 200
    assert frame["user"].tolist() == parts[:, 0].tolist() and frame["item"].tolist() == parts[:, 1].tolist()
    assert frame["rating"].tolist() == parts[:, 2].astype(float).tolist()
    assert frame["timestamp"].tolist() == parts[:, 3].astype(int).tolist()
    assert frame["line"].tolist() == list(range(1, 201))
