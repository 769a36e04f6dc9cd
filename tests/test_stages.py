"""The stages end to end from a scratch project root, and every kind of bad input: clear error, no output."""

from __future__ import annotations

import gzip
import json
import logging

import pandas as pd
import pytest
from conftest import random_log, write_amazon_ratings, write_meta_2014

from recsys_core.data.store import GT_CANDIDATES
from stages import cli

PREP = "data/preprocessed/beauty_min_rating0-min_uc3-min_sc2"
FLAGS = ["--dataset_code", "beauty", "--min_uc", "3", "--min_sc", "2", "--rerank_eval_candidates", "10"]


def place_beauty(root, rows=None, lines_extra: str = ""):
    """Files 'placed by hand' in data/raw/beauty: the download stage must not need the network then."""
    raw = root / "data" / "raw" / "beauty"
    rows = rows if rows is not None else random_log(40, 25, (4, 10), seed=21)
    write_amazon_ratings(raw / "ratings_Beauty.csv", rows)
    if lines_extra:
        with open(raw / "ratings_Beauty.csv", "a") as handle:
            handle.write(lines_extra)
    write_meta_2014(raw / "meta_Beauty.json.gz", {f"i{i:03d}": {"title": f"Cream {i}"} for i in range(25)})
    return raw


def run(*argv: str) -> int:
    return cli.main(list(argv))


def error_text(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


def test_download_prepare_candidates(workdir, capsys):
    place_beauty(workdir)
    assert run("download", *FLAGS) == 0
    manifest = json.loads((workdir / "data/raw/beauty/source.json").read_text())
    assert {f["origin"] for f in manifest["files"]} == {"already present"}
    assert run("prepare", *FLAGS) == 0
    out = capsys.readouterr().out
    assert "Dataset statistics" in out and "k_core" in out
    stats = json.loads((workdir / PREP / "stats.json").read_text())
    assert stats["raw_files"]["ratings_Beauty.csv"] == manifest["files"][0]["sha256"]
    assert stats["params"]["min_uc"] == 3
    assert run("gt-candidates", *FLAGS) == 0
    table = pd.read_parquet(workdir / PREP / GT_CANDIDATES)
    assert len(table) == 2 * stats["users"] and len(table["candidates"].iloc[0]) == 10
    assert not list((workdir / "data/preprocessed").glob(".*"))  # no scratch folders left


def test_data_prepare_runs_every_data_stage(workdir):
    place_beauty(workdir)
    assert run("data-prepare", *FLAGS) == 0
    assert (workdir / PREP / GT_CANDIDATES).exists() and (workdir / PREP / "dataset_single_export.csv").exists()
    # captions and summaries are off by default: empty tables, no model loaded
    assert (workdir / PREP / "blip2_captions.parquet").exists() and (
        workdir / PREP / "semantic_summaries.parquet"
    ).exists()


def test_truncated_gzip(workdir, caplog):
    raw = place_beauty(workdir)
    data = (raw / "meta_Beauty.json.gz").read_bytes()
    (raw / "meta_Beauty.json.gz").write_bytes(data[: len(data) // 2])
    assert run("download", *FLAGS) == 0
    assert run("prepare", *FLAGS) == 1
    text = error_text(caplog)
    assert "meta_Beauty.json.gz" in text and "truncated or corrupt gzip" in text and "download stage again" in text
    assert not (workdir / PREP).exists()


def test_malformed_lines_counted_reported_and_limited(workdir, caplog):
    bad = "u1,i001,5.0\nu2,i002,five,1000\nu3,i003,4.0,soon\n"
    place_beauty(workdir, lines_extra=bad)
    assert run("download", *FLAGS) == 0
    assert run("prepare", *FLAGS, "--max_bad_line_share", "0.001") == 1
    text = error_text(caplog)
    assert "3 of" in text and "ratings_Beauty.csv" in text and "--max_bad_line_share" in text
    assert "expected 4 fields, found 3" in text and "non-numeric rating 'five'" in text
    assert "non-numeric timestamp 'soon'" in text
    assert not (workdir / PREP).exists()
    # Below the limit the lines are skipped, and counted in stats.json.
    assert run("prepare", *FLAGS, "--max_bad_line_share", "0.05") == 0
    stats = json.loads((workdir / PREP / "stats.json").read_text())
    (entry,) = stats["malformed_lines"]
    assert entry["malformed"] == 3 and [f["line"] for f in entry["first"]] == [n for n in (entry["lines"] - 2,
           entry["lines"] - 1, entry["lines"])]  # fmt: skip


def test_missing_columns(workdir, caplog):
    raw = place_beauty(workdir)
    (raw / "ratings_Beauty.csv").write_text("".join(f"u{u},i{u:03d},5.0\n" for u in range(50)))
    assert run("download", *FLAGS) == 0
    assert run("prepare", *FLAGS) == 1
    assert "missing columns: expected 4 fields (user, item, rating, timestamp)" in error_text(caplog)
    assert not (workdir / PREP).exists()


def test_filters_that_empty_the_dataset(workdir, caplog):
    place_beauty(workdir)
    assert run("download", *FLAGS) == 0
    assert run("prepare", *FLAGS[:4], "--min_uc", "500") == 1
    text = error_text(caplog)
    assert "'k_core' filter removed every interaction" in text and "raw" in text and "--min_uc" in text
    assert not list((workdir / "data" / "preprocessed").glob("*min_uc500*"))


def test_failed_run_leaves_the_earlier_good_output_alone(workdir):
    raw = place_beauty(workdir)
    assert run("data-prepare", *FLAGS) == 0
    before = {p.name: p.read_bytes() for p in (workdir / PREP).iterdir()}
    with gzip.open(raw / "meta_Beauty.json.gz", "rb") as handle:
        data = gzip.compress(handle.read())
    (raw / "meta_Beauty.json.gz").write_bytes(data[:-30])  # truncated
    assert run("prepare", *FLAGS) == 1
    after = {p.name: p.read_bytes() for p in (workdir / PREP).iterdir()}
    assert after == before
    assert not list((workdir / "data/preprocessed").glob(".*"))


def test_missing_raw_files_name_the_stage_to_run(workdir, caplog):
    assert run("prepare", *FLAGS) == 1
    assert "recsys download --dataset_code beauty" in error_text(caplog)


def test_gt_candidates_before_prepare_names_the_stage(workdir, caplog):
    assert run("gt-candidates", *FLAGS) == 1
    assert "run the prepare stage first" in error_text(caplog)


def test_custom_dataset_through_the_stages(workdir):
    rows = random_log(30, 20, (4, 9), seed=22)
    pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"]).to_parquet(workdir / "mine.parquet")
    flags = ["--dataset_code", "custom", "--custom_interactions", "mine.parquet", "--min_uc", "3", "--min_sc", "2",
             "--rerank_eval_candidates", "5"]  # fmt: skip
    assert run("data-prepare", *flags) == 0
    stats = json.loads((workdir / "data/preprocessed/custom_min_rating0-min_uc3-min_sc2/stats.json").read_text())
    assert stats["source"] == "custom files" and stats["interactions"] > 0


def test_unknown_command_lists_the_commands(capsys):
    assert run("train") == 2
    assert "data-prepare" in capsys.readouterr().out


def test_bad_flag_values_exit_with_usage(workdir, caplog):
    with pytest.raises(SystemExit) as err:
        run("prepare", "--min_uc", "not-a-number")
    assert err.value.code == 2
    for code in ("nope", "custom-", "custom-Shoes", "custom-a/b"):
        assert run("prepare", "--dataset_code", code) == 1
        assert f"unknown dataset_code {code!r}" in error_text(caplog) and "custom-NAME" in error_text(caplog)


def test_named_custom_datasets_live_side_by_side(workdir):
    """`--dataset_code custom-NAME`: each dataset of one's own has its raw and prepared folders, experiment and
    registered-model prefix; preparing the second leaves the first as it was."""
    from recsys_core.config import DataConfig
    from recsys_core.registry import data_prefix

    for name, seed in (("shoes", 23), ("books", 24)):
        rows = random_log(30, 20, (4, 9), seed=seed)
        pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"]).to_csv(workdir / f"{name}.csv", index=False)
    flags = ["--min_uc", "3", "--min_sc", "2", "--rerank_eval_candidates", "5"]
    assert run("data-prepare", "--dataset_code", "custom-shoes", "--custom_interactions", "shoes.csv", *flags) == 0
    shoes = workdir / "data/preprocessed/custom-shoes_min_rating0-min_uc3-min_sc2/interactions.parquet"
    before = shoes.read_bytes()
    assert run("data-prepare", "--dataset_code", "custom-books", "--custom_interactions", "books.csv", *flags) == 0
    books = workdir / "data/preprocessed/custom-books_min_rating0-min_uc3-min_sc2/interactions.parquet"
    assert shoes.read_bytes() == before and books.exists() and books.read_bytes() != before
    assert (workdir / "data/raw/custom-shoes/interactions.csv").read_text() == (workdir / "shoes.csv").read_text()
    manifest = json.loads((workdir / "data/raw/custom-books/source.json").read_text())
    assert manifest["dataset"] == "custom-books"
    assert data_prefix(DataConfig(dataset_code="custom-shoes", min_uc=3, min_sc=2)).startswith("custom-shoes_")


def test_tiny_model_command_writes_a_loadable_smoke_model(tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoProcessor, AutoTokenizer

    assert run("tiny-model", "--arch", "qwen3", "--out", str(tmp_path / "smoke"), "--vocab", "bytes") == 0
    assert "not a recommender" in capsys.readouterr().out
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "smoke", local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "smoke", local_files_only=True)
    assert model.config.model_type == "qwen3" and len(tokenizer("Toy Story")["input_ids"]) > 0
    assert run("tiny-model", "--arch", "t5", "--out", str(tmp_path / "t5")) == 0
    assert "--vip5_model" in capsys.readouterr().out
    t5 = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "t5", local_files_only=True)
    t5_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "t5", local_files_only=True)
    assert t5.config.model_type == "t5" and t5_tokenizer.pad_token_id == 0 and t5_tokenizer("item_12").input_ids
    assert run("tiny-model", "--arch", "blip2", "--out", str(tmp_path / "blip2")) == 0
    assert "--caption_model" in capsys.readouterr().out
    assert AutoProcessor.from_pretrained(tmp_path / "blip2", local_files_only=True) is not None
