"""Semantic summaries (Qwen3-VL): the text rules, generation with the offline tiny Qwen3-VL, the resumable table, the
stage and its flag, and the offline failure of a hub model.

No Qwen3-VL weights can be had here, so generation runs on ``write_tiny_qwen3vl`` (random weights, Qwen's real
tokenizer, the real processor and architecture). Its output layer is untied from the embeddings: a tied random model
only repeats the prompt's last token ("\\n\\n"), which cleans to an empty text, so the non-empty and word-limit paths
would go untested.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import tiny_config
from PIL import Image

from recsys_core.config import prepared_dir_name
from recsys_core.data.images import COLUMNS as MANIFEST_COLUMNS
from recsys_core.data.images import MANIFEST, image_files
from recsys_core.errors import MissingArtifactError
from recsys_core.features import summaries
from recsys_core.features.summaries import (
    COLUMNS,
    SMALL_MAX_WORDS,
    SUMMARIES,
    SummaryInput,
    build_summaries,
    clean_summary,
    limit_words,
    load_summaries,
    prompt_text,
    small_summary,
    strip_thinking,
    summarise,
)
from recsys_core.rerank.llm import vl_model
from recsys_core.rerank.llm.tiny_vl import write_tiny_qwen3vl
from recsys_core.rerank.llm.vl_model import load_vl_model
from stages import summaries as stage

FAST = {"features.summary_max_new_tokens": 8, "features.semantic_summary_batch_size": 2}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_qwen3vl(tmp_path_factory.mktemp("tiny-vl") / "qwen3vl", seed=0)


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    """The tiny model as the stage loads it."""
    return load_vl_model(str(tiny_dir), min_pixels=1024, max_pixels=50176)


@pytest.fixture
def counted(tiny, monkeypatch):
    """The tiny model whose generate calls are counted (calls: list of batch sizes)."""
    model, processor = tiny
    calls: list[int] = []
    real = model.generate

    def generate(*args, **kwargs):
        calls.append(int(kwargs["input_ids"].shape[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "generate", generate)
    return model, processor, calls


def picture(path, colour, size=(200, 120)):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, colour)
    image.paste(Image.new("RGB", (size[0] // 2, size[1] // 2), (255, 255, 255)), (0, 0))
    image.save(path)
    return path


def items_frame(n: int) -> pd.DataFrame:
    ids = list(range(1, n + 1))
    return pd.DataFrame({"item_id": pd.Series(ids, dtype="int32"), "raw_id": [f"i{i:03d}" for i in ids],
                         "title": [f"Thing {i}" for i in ids],
                         "description": [f"A thing, number {i}." for i in ids]})  # fmt: skip


# ---- text rules ----------------------------------------------------------------------------------------------------


def test_thinking_is_never_kept():
    assert strip_thinking("<think>hmm, red?</think>\n\nA red shoe.").strip() == "A red shoe."
    assert strip_thinking("reasoning the template opened</think>A hat.") == "A hat."
    assert strip_thinking("A lamp. <think>ran out of tokens while") == "A lamp. "
    assert clean_summary("<think>\n\n</think>\n\n  A blue\n\nmug.  ") == "A blue mug."
    assert clean_summary("\n\n\n") == ""
    assert summaries._opens_thinking("<|im_start|>assistant\n<think>\n") and not summaries._opens_thinking(
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )


def test_small_summary_is_one_line_of_at_most_25_words():
    long = " ".join(f"w{i}," for i in range(40))
    cut = limit_words(long)
    assert len(cut.split()) == SMALL_MAX_WORDS and cut.endswith("w24.")  # dangling comma replaced by a full stop
    assert limit_words("A short red shoe.") == "A short red shoe."
    assert small_summary("A red running shoe.\n\nIt also has laces.") == "A red running shoe."
    assert small_summary("<think>x</think>") == ""


def test_prompts_ask_for_the_attributes_and_the_word_limit():
    with_image = prompt_text("semantic_summary", SummaryInput("Nike Air", "Running shoe " * 200, image="x.jpg"))
    for word in ("category", "type", "colour", "style", "brand", "notable"):
        assert word in with_image
    assert "Title: Nike Air" in with_image and "image" in with_image and len(with_image) < 1200
    small = prompt_text("semantic_summary_small", SummaryInput("Toy Story (1995)"))
    assert "one sentence of at most 25 words" in small and "image" not in small and "Description" not in small


# ---- generation with the tiny Qwen3-VL -----------------------------------------------------------------------------


def test_summarise_images_and_titles(counted, tmp_path, monkeypatch):
    model, processor, calls = counted
    items = [SummaryInput("Red running shoe", "Mesh upper.", picture(tmp_path / "a.png", (220, 30, 30), (640, 900))),
             SummaryInput("Toy Story (1995)", "Genres: Animation")]  # fmt: skip
    prompt = summaries._chat_text(processor, summaries._messages("semantic_summary", items[0]))
    assert "<|vision_start|><|image_pad|><|vision_end|>" in prompt and prompt.endswith("<think>\n\n</think>\n\n")
    # The random model writes ~2.6 tokens per word: 80 tokens give the small summary more than 25 words to cut.
    monkeypatch.setattr(summaries, "SMALL_MAX_NEW_TOKENS", 80)
    raw: dict[str, list[str]] = {}
    real = summaries.generate_texts

    def recorded(model, processor, items, kind, *args):
        raw[kind] = real(model, processor, items, kind, *args)
        return raw[kind]

    monkeypatch.setattr(summaries, "generate_texts", recorded)
    cfg = tiny_config(**{"features.summary_max_new_tokens": 80}).features
    timings: dict[str, float] = {}
    out = summarise(model, processor, items, cfg, timings=timings)
    assert calls == [2, 2]  # one batched generate call per kind
    for kind in ("semantic_summary", "semantic_summary_small"):
        assert len(out[kind]) == 2 and all(isinstance(t, str) and t.strip() for t in out[kind]), out
        assert timings[kind] > 0
    assert out["semantic_summary"] == [clean_summary(t) for t in raw["semantic_summary"]]
    assert all(len(t.split()) <= SMALL_MAX_WORDS for t in out["semantic_summary_small"])
    assert any(len(t.split()) > SMALL_MAX_WORDS for t in raw["semantic_summary_small"])  # so the cut did happen
    assert out["semantic_summary_small"] == [small_summary(t) for t in raw["semantic_summary_small"]]


# ---- the table -----------------------------------------------------------------------------------------------------


def test_table_is_resumable_and_keeps_its_rows(counted, tmp_path):
    model, processor, calls = counted
    prepared = tmp_path / "prepared"
    items = items_frame(3)
    images = {1: picture(tmp_path / "img" / "1.png", (200, 0, 0)), 2: picture(tmp_path / "img" / "2.png", (0, 90, 0))}
    cfg = tiny_config(**{**FAST, "features.summary_model": "tiny-vl"}).features

    run = build_summaries(prepared, items, images, cfg, True, model_and_processor=(model, processor), progress=False)
    table = pd.read_parquet(prepared / SUMMARIES)
    assert tuple(table.columns) == COLUMNS and run.generated == 3 and calls == [2, 2, 1, 1]
    assert table["item_id"].tolist() == [1, 2, 3] and table["raw_id"].tolist() == ["i001", "i002", "i003"]
    assert table["source"].tolist() == ["image+title", "image+title", "title"]
    assert set(table["model"]) == {"tiny-vl"}
    assert all(len(t.split()) <= SMALL_MAX_WORDS for t in table["semantic_summary_small"])

    calls.clear()
    again = build_summaries(prepared, items, images, cfg, True, model_and_processor=(model, processor), progress=False)
    assert calls == [] and again.generated == 0 and again.kept == 3
    pd.testing.assert_frame_equal(pd.read_parquet(prepared / SUMMARIES), table)

    more = pd.concat([items, items_frame(4).iloc[[3]]], ignore_index=True)
    third = build_summaries(prepared, more, images, cfg, True, model_and_processor=(model, processor), progress=False)
    assert third.generated == 1 and third.kept == 3 and calls == [1, 1]
    after = pd.read_parquet(prepared / SUMMARIES)
    pd.testing.assert_frame_equal(after.iloc[:3], table)
    assert after.iloc[3][["item_id", "raw_id", "source"]].tolist() == [4, "i004", "title"]

    # A rebuilt item table (item 2 is another item now) and a new image for item 3: only those are made again.
    calls.clear()
    rebuilt = more.copy()
    rebuilt.loc[1, "raw_id"] = "other"
    images[3] = picture(tmp_path / "img" / "3.png", (0, 0, 200))
    fourth = build_summaries(prepared, rebuilt, images, cfg, True, model_and_processor=(model, processor),
                             progress=False)  # fmt: skip
    assert fourth.generated == 2 and fourth.kept == 2 and calls == [2, 2]
    final = load_summaries(prepared).set_index("item_id")
    assert final.loc[2, "raw_id"] == "other" and final.loc[3, "source"] == "image+title"


def test_interrupted_run_keeps_its_work_and_items_without_anything_are_recorded(counted, tmp_path, monkeypatch):
    model, processor, calls = counted
    prepared = tmp_path / "prepared"
    items = items_frame(5)
    items.loc[4, ["title", "description"]] = ""  # item 5: no image, no text
    cfg = tiny_config(**FAST).features
    real = model.generate

    def dies_on_the_second_batch(*args, **kwargs):
        if len(calls) >= 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "generate", dies_on_the_second_batch)
    with pytest.raises(KeyboardInterrupt):
        build_summaries(prepared, items, {}, cfg, True, model_and_processor=(model, processor), save_every=1,
                        progress=False)  # fmt: skip
    partial = load_summaries(prepared)
    assert partial["item_id"].tolist() == [1, 2, 5]  # the first batch, and the item with nothing to describe
    assert partial.set_index("item_id").loc[5, ["semantic_summary", "source"]].tolist() == ["", "none"]

    monkeypatch.setattr(model, "generate", real)
    run = build_summaries(prepared, items, {}, cfg, True, model_and_processor=(model, processor), progress=False)
    assert run.generated == 2 and run.kept == 3
    assert load_summaries(prepared)["item_id"].tolist() == [1, 2, 3, 4, 5]


def test_other_settings_or_model_summarise_everything_again(tmp_path, monkeypatch, caplog):
    made: list[int] = []

    def fake(model, processor, items, cfg, kinds=summaries.KINDS, timings=None):
        made.append(len(items))
        return {kind: [f"{kind} of {item.title}" for item in items] for kind in kinds}

    monkeypatch.setattr(summaries, "summarise", fake)
    prepared, items, stub = tmp_path / "prepared", items_frame(3), (object(), object())
    for overrides, expected in (({}, 3), ({}, 0), ({"features.vl_max_pixels": 4096}, 3),
                                ({"features.vl_max_pixels": 4096, "features.summary_model": "other"}, 3)):  # fmt: skip
        made.clear()
        cfg = tiny_config(**{**FAST, **overrides}).features
        build_summaries(prepared, items, {}, cfg, True, model_and_processor=stub, progress=False)
        assert sum(made) == expected, overrides
        assert summaries.read_settings(prepared) == summaries.summary_settings(cfg)
    assert "vl_max_pixels 50176 -> 4096" in caplog.text
    assert set(load_summaries(prepared)["model"]) == {"other"}


def test_generation_off_loads_no_model(tmp_path, monkeypatch, caplog):
    def refuse(*args, **kwargs):
        raise AssertionError("no model may be loaded with generate_semantic_summary false")

    monkeypatch.setattr(vl_model, "load_vl_model", refuse)
    prepared = tmp_path / "prepared"
    cfg = tiny_config().features
    with caplog.at_level("INFO"):
        run = build_summaries(prepared, items_frame(3), {}, cfg, False)
    assert "--generate_semantic_summary" in caplog.text and "data.generate_semantic_summary=true" in caplog.text
    empty = pd.read_parquet(prepared / SUMMARIES)
    assert tuple(empty.columns) == COLUMNS and empty.empty and run.table.empty

    kept = pd.DataFrame([[1, "i001", "A red shoe.", "A red shoe.", "image+title", "m"]], columns=list(COLUMNS))
    summaries.save_summaries(kept, prepared)
    before = (prepared / SUMMARIES).read_bytes()
    build_summaries(prepared, items_frame(3), {}, cfg, False)
    assert (prepared / SUMMARIES).read_bytes() == before


def test_missing_hub_model_offline_fails_fast_naming_it(tmp_path, monkeypatch, connections):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = tiny_config(**{"features.summary_model": "Qwen/Qwen3-VL-2B-Instruct"}).features
    connections.refuse = True
    with pytest.raises(MissingArtifactError) as err:
        build_summaries(tmp_path / "prepared", items_frame(2), {}, cfg, True, progress=False)
    assert connections == []
    assert "Qwen/Qwen3-VL-2B-Instruct" in str(err.value) and "--summary_model" in str(err.value)
    assert not (tmp_path / "prepared" / SUMMARIES).exists()


# ---- the stage -----------------------------------------------------------------------------------------------------


def write_prepared(root, items: pd.DataFrame):
    """The files load_prepared needs (only items matter here) in the folder the default params.yaml names."""
    cfg = tiny_config()
    folder = root / "data" / "preprocessed" / prepared_dir_name(cfg.data)
    folder.mkdir(parents=True)
    items.to_parquet(folder / "items.parquet", index=False)
    pd.DataFrame({"user_id": [1], "item_id": [1], "rating": [5.0], "timestamp": [1], "split": ["test"]}).to_parquet(
        folder / "interactions.parquet", index=False
    )
    pd.DataFrame({"user_id": [1], "raw_id": ["u1"], "n_interactions": [1]}).to_parquet(folder / "users.parquet")
    (folder / "stats.json").write_text(json.dumps({}))
    return folder


def write_images(root, raw_ids: list[str]):
    folder = root / "data" / "images" / cfg_code()
    rows = []
    for k, raw_id in enumerate(raw_ids):
        picture(folder / "files" / f"{raw_id}.jpg", (40 * k, 100, 160))
        rows.append({"raw_id": raw_id, "source": f"{raw_id}.png", "status": "ok", "reason": "",
                     "file": f"files/{raw_id}.jpg", "width": 200, "height": 120, "orig_width": 200,
                     "orig_height": 120})  # fmt: skip
    pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS)).to_parquet(folder / MANIFEST, index=False)
    return folder


def cfg_code() -> str:
    return tiny_config().data.dataset_code


def test_stage_flag_off_then_on(workdir, tiny_dir, monkeypatch, capsys):
    items = items_frame(3)
    prepared = write_prepared(workdir, items)
    images_dir = write_images(workdir, ["i001"])
    assert list(image_files(items, images_dir)) == [1]

    loads: list[str] = []
    real = vl_model.load_vl_model

    def counting(name, **kwargs):
        loads.append(name)
        return real(name, **kwargs)

    monkeypatch.setattr(vl_model, "load_vl_model", counting)
    assert stage.main([]) == 0  # params.yaml: generate_semantic_summary false
    assert loads == [] and "--generate_semantic_summary" in capsys.readouterr().out
    assert pd.read_parquet(prepared / SUMMARIES).empty

    flags = ["--generate_semantic_summary", "--summary_model", str(tiny_dir), "--summary_max_new_tokens", "8",
             "--semantic_summary_batch_size", "2", "--device", "cpu"]  # fmt: skip
    assert stage.main(flags) == 0
    out = capsys.readouterr().out
    table = pd.read_parquet(prepared / SUMMARIES)
    assert loads == [str(tiny_dir)] and "made now         3" in out and "items/s" in out
    assert table["source"].tolist() == ["image+title", "title", "title"] and set(table["model"]) == {str(tiny_dir)}

    assert stage.main(flags) == 0  # nothing left to do: the model is not even loaded
    assert loads == [str(tiny_dir)] and "kept             3" in capsys.readouterr().out
