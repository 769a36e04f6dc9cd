"""Qwen3-VL reranker on the offline tiny Qwen3-VL (Qwen's real tokenizer, Qwen3-VL processor, random weights): image
tokens in raw_image prompts, text modes through texts_for_mode, a LoRA step on the language model only, adapter
save/load with the item images, the missing-image policy, -inf padding and loading errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TEST_DEVICE, tiny_config

from recsys_core.data.store import Sequences
from recsys_core.errors import ConfigError, MissingArtifactError
from recsys_core.rerank.data import CandidateSet, target_index_of
from recsys_core.rerank.llm.tiny_vl import write_tiny_qwen3vl
from recsys_core.rerank.llm.vl_model import load_vl_model
from recsys_core.rerank.qwen3vl import NO_IMAGE, Qwen3VLReranker
from recsys_core.training import LoopSettings, seed_everything

K = 5
N_ITEMS = 24
NO_IMAGE_ITEM = 7
ANSWER_TAIL = "<|im_start|>assistant\n<think>\n\n</think>\n\n"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_qwen3vl(tmp_path_factory.mktemp("models") / "tiny-qwen3vl", seed=0)


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    """Items with 32x32 (1 image token) or 64x32 (2 tokens) solid-colour images; one item has none."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    rows = []
    for i in range(1, N_ITEMS + 1):
        path = folder / f"{i}.png"
        Image.new("RGB", (64 if i % 2 else 32, 32), (10 * i, 255 - 10 * i, 128)).save(path)
        rows.append({"item_id": i, "raw_id": f"r{i}", "title": f"item {i}",
                     "image_path": None if i == NO_IMAGE_ITEM else str(path)})  # fmt: skip
    return pd.DataFrame(rows)


def hparams(tiny_dir, **overrides):
    cfg = tiny_config(**{"llm.qwen3vl_model": str(tiny_dir), "llm.qwen_mode": "raw_image", "llm.qwen_max_candidates": K,
                         "llm.qwen_max_history": 3, "llm.qwen_max_seq_length": 256, "llm.lora_dropout": 0.0,
                         "rerank.rerank_batch_size": 8, **overrides})  # fmt: skip
    return Qwen3VLReranker.hyperparameters(cfg, "test")


@pytest.fixture(scope="module")
def raw(tiny_dir, items):
    seed_everything(0)
    return Qwen3VLReranker(N_ITEMS, hparams(tiny_dir), TEST_DEVICE, items=items)


def grid_tokens(reranker, path) -> int:
    from PIL import Image

    grid = reranker.processor.image_processor(images=[Image.open(path).convert("RGB")], return_tensors="pt")
    return int(grid["image_grid_thw"][0].prod()) // 4  # 2x2 spatial merge


# ---- the smoke model and loading ----


def test_tiny_model_loads_offline_with_its_processor(tiny_dir):
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_dir)
    tok = processor.tokenizer
    assert type(model).__name__ == "Qwen3VLForConditionalGeneration"
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert model.config.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert model.config.vision_config.patch_size == 16 and model.config.vision_config.spatial_merge_size == 2
    messages = [{"role": "user", "content": [{"type": "text", "text": "Red:"}, {"type": "image"}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert text.endswith("Red:<|vision_start|><|image_pad|><|vision_end|><|im_end|>\n" + ANSWER_TAIL)
    enc = processor(text=[text], images=[Image.new("RGB", (64, 64), "red")], return_tensors="pt")
    assert (enc["input_ids"] == model.config.image_token_id).sum() == 4  # 64x64 px = 2x2 merged tokens
    assert sum(p.numel() for n, p in model.named_parameters() if "visual" in n) < 1_000_000


def test_quantization_on_cpu_and_offline_hub_id_fail_fast(tiny_dir, monkeypatch, tmp_path, connections):
    with pytest.raises(ConfigError, match=r"needs a CUDA device.*--use_quantization"):
        load_vl_model(str(tiny_dir), "cpu", use_quantization=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    connections.refuse = True  # fail fast = no connection attempted
    with pytest.raises(MissingArtifactError) as err:
        Qwen3VLReranker(N_ITEMS, hparams("Qwen/Qwen3-VL-2B-Instruct"), "cpu")
    assert connections == []
    for part in ("Qwen/Qwen3-VL-2B-Instruct", "huggingface-cli download Qwen/Qwen3-VL-2B-Instruct", "HF_HOME",
                 "local folder", "recsys tiny-model --arch qwen3vl --out DIR"):  # fmt: skip
        assert part in str(err.value)


# ---- prompts ----


def test_raw_image_prompt_holds_each_images_tokens_every_label_and_ends_at_the_answer(raw, items):
    assert raw.hparams["max_seq_length"] == 512  # twice qwen_max_seq_length in raw_image mode
    tok = raw.tokenizer
    history, cands = np.array([3, NO_IMAGE_ITEM, 4]), np.array([1, 2, 5, 8, 9])
    prompt = raw.prompts([history], [cands])[0]
    assert prompt.images == (3, 4, 1, 2, 5, 8, 9)  # the item without an image shows the placeholder
    paths = dict(zip(items["item_id"], items["image_path"], strict=True))
    expected = sum(grid_tokens(raw, paths[i]) for i in prompt.images)
    assert expected == sum(2 if i % 2 else 1 for i in prompt.images)
    ids = np.asarray(prompt.input_ids)
    assert (ids == raw._image_token_id).sum() == expected
    assert (ids == tok.convert_tokens_to_ids("<|vision_start|>")).sum() == len(prompt.images)
    assert f"- item {NO_IMAGE_ITEM} {NO_IMAGE}\n" in prompt.text
    assert "A. item 1<|vision_start|><|image_pad|><|image_pad|><|vision_end|>\nB. item 2<|vision_start|>" in prompt.text
    for label, position in zip(prompt.labels, prompt.label_positions, strict=True):
        assert prompt.input_ids[position] == label.token_id
    assert [label.text for label in prompt.labels] == ["A", "B", "C", "D", "E"]
    tail = tok.encode(ANSWER_TAIL, add_special_tokens=False)
    assert prompt.input_ids[-len(tail) :] == tail and prompt.text.endswith(ANSWER_TAIL)


def test_budget_drops_whole_history_items_before_cutting_texts(raw):
    history, cands = np.array([3, 5, 9]), np.array([1, 2, 4])
    full = raw.prompts([history], [cands])[0]
    raw.hparams["max_seq_length"] = len(full) - 1
    try:
        short = raw.prompts([history], [cands])[0]
    finally:
        raw.hparams["max_seq_length"] = 512
    assert len(short) <= len(full) - 1 and short.shortened.history_dropped >= 1
    assert short.shortened.texts_truncated == 0
    assert short.images == (5, 9, 1, 2, 4)[short.shortened.history_dropped - 1 :]  # text and image gone together
    assert "- item 3" not in short.text and "A. item 1" in short.text and "C. item 4" in short.text
    assert (np.asarray(short.input_ids) == raw._image_token_id).sum() == sum(raw.image_tokens(i) for i in short.images)


def test_text_modes_show_texts_for_mode(tiny_dir, items, monkeypatch):
    import recsys_core.features.texts as texts

    frame = items.assign(semantic_summary=[f"a summary of {i}" for i in items["item_id"]])
    calls = []
    real = texts.texts_for_mode
    monkeypatch.setattr(texts, "texts_for_mode", lambda f, mode: calls.append(mode) or real(f, mode))
    reranker = Qwen3VLReranker(N_ITEMS, hparams(tiny_dir, **{"llm.qwen_mode": "semantic_summary"}), TEST_DEVICE,
                               items=frame)  # fmt: skip
    assert calls == ["semantic_summary"] and reranker.hparams["max_seq_length"] == 256
    prompt = reranker.prompts([np.array([3])], [np.array([1, 2])])[0]
    assert "- item 3. a summary of 3\n" in prompt.text and "A. item 1. a summary of 1\n" in prompt.text
    assert "<|image_pad|>" not in prompt.text and not getattr(prompt, "images", ())
    scores = reranker.score([np.array([3])], np.array([[1, 2, 0]]))
    assert torch.isfinite(scores[0, :2]).all() and torch.isinf(scores[0, 2])


# ---- scoring and missing images ----


def test_scores_are_label_logits_with_inf_padding_in_one_forward(raw):
    calls = []
    hook = raw.model.get_base_model().register_forward_hook(lambda *args: calls.append(1))
    histories = [np.array([3, 4]), np.array([9]), np.array([1, 2, 3])]
    cands = np.array([[1, 2, 0, 4, 0], [5, 6, 7, 8, 9], [0, 0, 0, 0, 0]])
    scores = raw.score(histories, cands)
    hook.remove()
    assert scores.shape == (3, 5) and len(calls) == 1
    assert torch.isinf(scores[cands == 0]).all() and (scores[cands == 0] < 0).all()
    assert torch.isfinite(scores[cands != 0]).all()
    with torch.no_grad():
        alone = raw.answer_logits(raw.prompts([histories[0]], [np.array([1, 2, 4])]))[0, raw._label_tokens[:3]]
    torch.testing.assert_close(scores[0, [0, 1, 3]], alone, rtol=1e-4, atol=1e-4)


def test_missing_image_is_a_counted_placeholder_or_an_error(raw, items):
    assert raw.missing_images == [NO_IMAGE_ITEM]
    before = raw.placeholders_shown
    raw.prompts([np.array([NO_IMAGE_ITEM])], [np.array([1, NO_IMAGE_ITEM])])
    assert raw.placeholders_shown == before + 2
    raw.hparams["missing_image"] = "error"
    try:
        with pytest.raises(MissingArtifactError, match=rf"item {NO_IMAGE_ITEM} has no image.*images stage"):
            raw.set_items(items)
    finally:
        raw.hparams["missing_image"] = "placeholder"
        raw.set_items(items)
    with pytest.raises(MissingArtifactError, match="image_path"):
        raw.set_items(items.drop(columns="image_path"))
    raw.set_items(items)


# ---- training, saving ----


def test_lora_step_on_the_language_model_only_and_the_adapter_reloads(raw, tiny_dir, tmp_path):
    rng = np.random.default_rng(0)
    train = [np.zeros(0, np.int64)] + [rng.choice(np.arange(1, N_ITEMS + 1), 4, replace=False) for _ in range(6)]
    seqs = Sequences(train, np.array([0] + [int(t[0]) for t in train[1:]]), np.array([0] + [int(t[1]) for t in train[1:]]))  # fmt: skip
    users = np.arange(1, 7)
    targets = seqs.test[users]
    cands = np.stack([rng.permutation(np.append(np.setdiff1d(np.arange(1, 9), [t])[: K - 1], t)) for t in targets])
    val = CandidateSet(users, [seqs.train[u] for u in users], cands, targets, target_index_of(cands, targets))
    trainable = {n for n, p in raw.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n and ".language_model." in n for n in trainable)
    frozen = {n: p.detach().clone() for n, p in raw.model.named_parameters() if n not in trainable}
    lora = {n: p.detach().clone() for n, p in raw.model.named_parameters() if n in trainable}
    history = raw.fit(seqs, val, LoopSettings(epochs=1, lr=1e-2, patience=1, batch_size=4), ks=(1, 10))
    assert np.isfinite(history.epochs[0]["train_loss"])
    for name, value in raw.model.named_parameters():
        if name in frozen:
            assert torch.equal(value, frozen[name]), name  # the vision tower and the base weights: bit-identical
    assert any(not torch.equal(p, lora[n]) for n, p in raw.model.named_parameters() if n in lora)
    raw.save(tmp_path / "saved")
    for name in ("config.json", "items.json", "adapter/adapter_model.safetensors", "tokenizer/tokenizer.json",
                 "tokenizer/processor_config.json", "images/1.png"):  # fmt: skip
        assert (tmp_path / "saved" / name).is_file(), name
    assert not (tmp_path / "saved" / "images" / f"{NO_IMAGE_ITEM}.png").exists()
    again = Qwen3VLReranker.load(tmp_path / "saved", TEST_DEVICE)
    assert again.hparams["mode"] == "raw_image" and again.missing_images == [NO_IMAGE_ITEM]
    assert all(str(p).startswith(str(tmp_path / "saved")) for p in again.item_images.values())
    torch.testing.assert_close(raw.score(val.histories, val.candidates), again.score(val.histories, val.candidates),
                               rtol=0, atol=0)  # fmt: skip
