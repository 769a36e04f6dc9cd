"""BLIP-2 captions: the offline smoke model, the resumable captions table, the off and no-image paths (no model
loaded), fast failure without weights, and the item texts of the reranker's modes.

No BLIP-2 weights can be downloaded here, so captions come from the tiny random-weight BLIP-2 that
``write_tiny_blip2`` builds (real architecture and processor): its captions are words, not descriptions.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from recsys_core.config import DataConfig, FeaturesConfig, prepared_dir_name
from recsys_core.data.images import COLUMNS as MANIFEST_COLUMNS
from recsys_core.data.images import MANIFEST
from recsys_core.errors import MissingArtifactError
from recsys_core.features import captions
from recsys_core.features.blip2_tiny import IMAGE_TOKEN, NUM_QUERY_TOKENS, write_tiny_blip2
from recsys_core.features.captions import CAPTIONS, caption_images, load_blip2, load_captions, make_captions
from recsys_core.features.texts import SUMMARIES, attach_generated_texts, texts_for_mode


@pytest.fixture(scope="module")
def tiny_blip2(tmp_path_factory) -> Path:
    return write_tiny_blip2(tmp_path_factory.mktemp("models") / "blip2-smoke", seed=0)


def make_images(folder: Path, names: list[str]) -> dict[str, str]:
    """raw_id -> file name of a small picture (RGB, grey, RGBA in turn) with some structure."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for k, raw in enumerate(names):
        mode, colour = [("RGB", (200, 30 * k, 40)), ("L", 90 + k), ("RGBA", (0, 0, 255, 120))][k % 3]
        image = Image.new(mode, (60 + 10 * k, 40), colour)
        image.paste(Image.new(mode, (20, 20)), (k, 5))
        files[raw] = f"{raw}.png"
        image.save(folder / files[raw])
    return files


def write_manifest(images: Path, statuses: dict[str, str]) -> None:
    """A manifest as the images stage writes it; ``ok`` items get a generated picture."""
    files = make_images(images, [r for r, s in statuses.items() if s == "ok"])
    rows = [{"raw_id": r, "source": f"{r}.png", "status": s, "reason": "" if s == "ok" else "test",
             "file": files.get(r, ""), "width": 0, "height": 0, "orig_width": 0, "orig_height": 0}
            for r, s in statuses.items()]  # fmt: skip
    pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS)).to_parquet(images / MANIFEST, index=False)


def items_frame(raw_ids: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"item_id": range(1, len(raw_ids) + 1), "raw_id": raw_ids,
                         "title": [f"Thing {r}" for r in raw_ids], "text": ""})  # fmt: skip


@pytest.fixture
def counted(monkeypatch):
    """Loads of BLIP-2 and calls of its generate, through the real loader."""
    calls = {"load": 0, "generate": 0, "fail_at": None}
    real_load = captions.load_blip2

    def load(name, device="cpu"):
        calls["load"] += 1
        model, processor = real_load(name, device)
        generate = model.generate

        def counting(**kwargs):
            calls["generate"] += 1
            if calls["generate"] == calls["fail_at"]:
                raise KeyboardInterrupt
            return generate(**kwargs)

        model.generate = counting
        return model, processor

    monkeypatch.setattr(captions, "load_blip2", load)
    return calls


@pytest.fixture
def no_model(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("BLIP-2 must not be loaded here")

    monkeypatch.setattr(captions, "load_blip2", refuse)


# ---- the smoke model -------------------------------------------------------------------------------------------------


def test_smoke_model_loads_offline_and_captions_each_image(tiny_blip2, tmp_path, monkeypatch):
    import torch
    from transformers import AutoProcessor, Blip2ForConditionalGeneration, Blip2Processor

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    processor = Blip2Processor.from_pretrained(tiny_blip2)
    assert type(AutoProcessor.from_pretrained(tiny_blip2)) is Blip2Processor
    model, loaded = load_blip2(str(tiny_blip2))
    assert loaded.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) == model.config.image_token_index
    prompt = processor(images=Image.new("RGB", (50, 50)), text="a photo of", return_tensors="pt")
    assert prompt["input_ids"][0, :NUM_QUERY_TOKENS].tolist() == [model.config.image_token_index] * NUM_QUERY_TOKENS
    assert "random weights" in (tiny_blip2 / "smoke_model.json").read_text()
    assert not [p for p in tiny_blip2.parent.iterdir() if p.name.startswith(".")]

    images = make_images(tmp_path, ["r", "g", "a", "b"])
    paths = [tmp_path / f for f in images.values()] + [tmp_path / "missing.jpg"]
    texts = caption_images(model, loaded, paths, batch_size=3, max_new_tokens=5)
    assert len(texts) == 5 and texts[-1] is None  # an unreadable file gets no caption and stops nothing
    assert all(isinstance(t, str) and t.strip() and len(t.split()) == 5 for t in texts[:4]), texts
    assert IMAGE_TOKEN not in " ".join(texts[:4])
    # fp16, as CUDA runs load it: the Q-Former stays fp32 (transformers keeps it so), the pictures follow the ViT
    half = Blip2ForConditionalGeneration.from_pretrained(tiny_blip2, dtype=torch.float16).eval()
    assert half.query_tokens.dtype == torch.float32
    assert [len(t.split()) for t in caption_images(half, loaded, paths[:2], max_new_tokens=3)] == [3, 3]


# ---- the captions table ----------------------------------------------------------------------------------------------


def test_table_is_made_then_resumed(tiny_blip2, tmp_path, counted):
    prepared, images = tmp_path / "prepared", tmp_path / "images"
    prepared.mkdir()
    write_manifest(images, {"a": "ok", "b": "ok", "c": "http_error", "d": "ok", "zz": "ok"})
    items = items_frame(["a", "b", "c", "d", "e"])  # e: not in the manifest
    cfg = FeaturesConfig(caption_model=str(tiny_blip2), caption_batch_size=2, caption_max_new_tokens=4)

    first = make_captions(prepared, items, images, cfg, enabled=True, progress=False)
    table = pd.read_parquet(prepared / CAPTIONS)
    assert list(table.columns) == ["item_id", "raw_id", "caption", "model"] and str(table["item_id"].dtype) == "int64"
    assert table["item_id"].tolist() == [1, 2, 4] and table["raw_id"].tolist() == ["a", "b", "d"]
    assert table["caption"].str.strip().str.len().gt(0).all() and set(table["model"]) == {str(tiny_blip2.resolve())}
    assert (first.made, first.kept, counted["load"], counted["generate"]) == (3, 0, 1, 2)  # 3 images, batches of 2

    again = make_captions(prepared, items, images, cfg, enabled=True, progress=False)
    assert (again.made, again.kept, counted["load"], counted["generate"]) == (0, 3, 1, 2)  # nothing new, no model
    pd.testing.assert_frame_equal(pd.read_parquet(prepared / CAPTIONS), table)

    write_manifest(images, {"a": "ok", "b": "ok", "c": "ok", "d": "ok"})  # c's image arrives
    items.loc[items["raw_id"] == "b", "raw_id"] = "b2"  # re-prepared: id 2 is another item now, without an image
    third = make_captions(prepared, items, images, cfg, enabled=True, progress=False)
    after = pd.read_parquet(prepared / CAPTIONS)
    assert (third.made, counted["load"], counted["generate"]) == (1, 2, 3)
    assert after["raw_id"].tolist() == ["a", "c", "d"]
    assert after.set_index("raw_id").loc[["a", "d"], "caption"].tolist() == table.set_index("raw_id").loc[
        ["a", "d"], "caption"].tolist()  # fmt: skip


def test_interrupted_run_keeps_what_it_made(tiny_blip2, tmp_path, counted):
    prepared, images = tmp_path / "prepared", tmp_path / "images"
    write_manifest(images, {r: "ok" for r in "abcd"})
    items = items_frame(list("abcd"))
    cfg = FeaturesConfig(caption_model=str(tiny_blip2), caption_batch_size=1, caption_max_new_tokens=3)
    counted["fail_at"] = 3
    with pytest.raises(KeyboardInterrupt):
        make_captions(prepared, items, images, cfg, enabled=True, progress=False, save_every=10)
    assert load_captions(prepared)["raw_id"].tolist() == ["a", "b"]
    assert not [p for p in prepared.iterdir() if p.name.startswith(".")]  # no temp file left behind
    counted["fail_at"] = None
    resumed = make_captions(prepared, items, images, cfg, enabled=True, progress=False)
    assert resumed.made == 2 and load_captions(prepared)["raw_id"].tolist() == list("abcd")


def test_partial_saves_every_few_batches(tiny_blip2, tmp_path, monkeypatch):
    prepared, images = tmp_path / "prepared", tmp_path / "images"
    write_manifest(images, {r: "ok" for r in "abc"})
    saved: list[int] = []
    real_write = captions.write_captions
    monkeypatch.setattr(
        captions, "write_captions", lambda frame, path: (saved.append(len(frame)), real_write(frame, path))
    )
    cfg = FeaturesConfig(caption_model=str(tiny_blip2), caption_batch_size=1, caption_max_new_tokens=2)
    make_captions(prepared, items_frame(list("abc")), images, cfg, enabled=True, progress=False, save_every=2)
    assert saved == [2, 3]  # after batch 2, then the final table


def test_another_model_captions_again(tiny_blip2, tmp_path, counted):
    prepared, images = tmp_path / "prepared", tmp_path / "images"
    write_manifest(images, {"a": "ok"})
    prepared.mkdir()
    old = pd.DataFrame({"item_id": [1], "raw_id": ["a"], "caption": ["old words"], "model": ["some/other-blip2"]})
    old.to_parquet(prepared / CAPTIONS)
    cfg = FeaturesConfig(caption_model=str(tiny_blip2), caption_max_new_tokens=2)
    run = make_captions(prepared, items_frame(["a"]), images, cfg, enabled=True, progress=False)
    assert run.made == 1 and load_captions(prepared)["model"].tolist() == [str(tiny_blip2.resolve())]


def test_captions_off_loads_nothing_and_says_how(tmp_path, no_model, caplog):
    prepared, images = tmp_path / "prepared", tmp_path / "images"
    write_manifest(images, {"a": "ok"})
    with caplog.at_level(logging.INFO):
        run = make_captions(prepared, items_frame(["a"]), images, FeaturesConfig(), enabled=False, progress=False)
    assert run.table.empty and list(load_captions(prepared).columns) == ["item_id", "raw_id", "caption", "model"]
    assert (prepared / CAPTIONS).is_file()
    said = caplog.text
    assert "captions are off" in said and "--generate_caption" in said and "-S data.generate_caption=true" in said
    kept = pd.DataFrame({"item_id": [1], "raw_id": ["a"], "caption": ["a red box"], "model": ["m"]})
    kept.to_parquet(prepared / CAPTIONS)
    before = (prepared / CAPTIONS).read_bytes()
    make_captions(prepared, items_frame(["a"]), images, FeaturesConfig(), enabled=False, progress=False)
    assert (prepared / CAPTIONS).read_bytes() == before


def test_no_images_ends_at_once_without_the_model(tmp_path, no_model, caplog):
    prepared = tmp_path / "prepared"
    with caplog.at_level(logging.INFO):
        run = make_captions(prepared, items_frame(["1", "2"]), tmp_path / "no-images", FeaturesConfig(), enabled=True)
    assert run.table.empty and not run.loaded_model
    assert load_captions(prepared).empty and (prepared / CAPTIONS).is_file()
    assert "no item of" in caplog.text and "BLIP-2 not loaded" in caplog.text


def test_missing_model_offline_fails_fast_with_what_to_do(monkeypatch, tmp_path, connections):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    model_id = "Salesforce/blip2-opt-2.7b"
    for offline in (True, False):  # HF_HUB_OFFLINE set, or a hub that does not answer
        if offline:
            monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        else:
            monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
            monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
        connections.clear()
        with pytest.raises(MissingArtifactError) as err:
            load_blip2(model_id)
        assert len(connections) <= (0 if offline else 1), connections  # offline: none; a dead hub: one probe
        for part in (f"'{model_id}'", f"huggingface-cli download {model_id}", "HF_HOME", "--caption_model /path/to/dir",
                     "recsys tiny-model --arch blip2 --out DIR"):  # fmt: skip
            assert part in str(err.value)
    with pytest.raises(MissingArtifactError, match="no such model folder"):
        load_blip2(str(tmp_path / "nowhere"))


def test_stage_command(tmp_path, monkeypatch, tiny_blip2, capsys):
    from stages import captions as stage

    monkeypatch.chdir(tmp_path)
    prepared = tmp_path / "data/preprocessed" / prepared_dir_name(DataConfig())  # params.yaml defaults: ml-100k
    prepared.mkdir(parents=True)
    items = items_frame(["a", "b"])
    items.to_parquet(prepared / "items.parquet")
    for name in ("interactions.parquet", "users.parquet"):
        pd.DataFrame({"x": [0]}).to_parquet(prepared / name)
    (prepared / "stats.json").write_text(json.dumps({}))
    (tmp_path / "params.yaml").write_text("{}\n")
    assert stage.main([]) == 0 and load_captions(prepared).empty
    assert "captions are off" in capsys.readouterr().out
    write_manifest(tmp_path / "data/images/ml-100k", {"a": "ok"})
    flags = ["--generate_caption", "--caption_model", str(tiny_blip2), "--caption_max_new_tokens", "3"]
    assert stage.main(flags) == 0
    assert load_captions(prepared)["raw_id"].tolist() == ["a"] and "made now" in capsys.readouterr().out


# ---- item texts by mode ----------------------------------------------------------------------------------------------


def test_texts_for_each_mode(tmp_path, caplog):
    items = pd.DataFrame({"item_id": [1, 2, 3], "raw_id": ["a", "b", "c"], "title": ["Red box", "", "Blue pen"],
                          "text": ["", "Only a description", ""]})  # fmt: skip
    bare = attach_generated_texts(items, tmp_path)
    assert bare[["caption", "semantic_summary", "semantic_summary_small"]].isna().all().all()
    assert list(items.columns) == ["item_id", "raw_id", "title", "text"]  # a copy: the input is untouched
    titles = {1: "Red box", 2: "Only a description", 3: "Blue pen"}
    assert texts_for_mode(bare, "text_only") == titles == texts_for_mode(bare, "raw_image")
    with pytest.raises(MissingArtifactError) as err:
        texts_for_mode(bare, "caption")
    assert "dvc exp run -S data.generate_caption=true" in str(err.value) and "recsys captions --generate_caption" in str(err.value)  # fmt: skip
    with pytest.raises(MissingArtifactError, match="generate_semantic_summary"):
        texts_for_mode(bare, "semantic_summary_small")

    pd.DataFrame({"item_id": [1, 3], "raw_id": ["a", "other"], "caption": ["a red box on a table", "stale"],
                  "model": ["m", "m"]}).to_parquet(tmp_path / CAPTIONS)  # fmt: skip
    pd.DataFrame({"item_id": [1, 2, 3], "raw_id": ["a", "b", "c"], "semantic_summary": ["long 1", "long 2", "long 3"],
                  "semantic_summary_small": ["short 1", None, "short 3"], "model": "vl"}).to_parquet(tmp_path / SUMMARIES)  # fmt: skip
    full = attach_generated_texts(items, tmp_path)
    assert full["caption"].tolist() == ["a red box on a table", None, None]  # item 3's row is of another raw item
    with caplog.at_level(logging.WARNING):
        assert texts_for_mode(full, "caption") == {1: "Red box. a red box on a table", 2: "Only a description",
                                                   3: "Blue pen"}  # fmt: skip
    assert "2 of 3 items have no caption" in caplog.text
    assert texts_for_mode(full, "semantic_summary") == {1: "Red box. long 1", 2: "Only a description. long 2",
                                                        3: "Blue pen. long 3"}  # fmt: skip
    assert texts_for_mode(full, "semantic_summary_small")[2] == "Only a description"
