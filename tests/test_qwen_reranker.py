"""Qwen reranker on the offline tiny Qwen3 (Qwen's real tokenizer, random weights): model names and loading errors,
label-logit scores (-inf padding, one forward per batch), LoRA training that learns, adapter save/load."""

from __future__ import annotations

import socket

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TEST_DEVICE, tiny_config

from recsys_core.data.store import Sequences
from recsys_core.errors import ConfigError, MissingArtifactError
from recsys_core.rerank.data import CandidateSet, target_index_of
from recsys_core.rerank.evaluate import evaluate_lists
from recsys_core.rerank.llm.model import load_causal_lm, resolve_model_id
from recsys_core.rerank.llm.tiny import write_tiny_qwen3
from recsys_core.rerank.qwen import QwenReranker, check_mode
from recsys_core.training import LoopSettings, fit, seed_everything

K = 5  # candidates per list
GOLDEN, PLAIN, USERS = 20, 200, 60
WORDS = (
    "apple river stone cloud maple tiger piano lemon violet harbor candle meadow rocket silver garden falcon".split()
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_qwen3(tmp_path_factory.mktemp("models") / "tiny-qwen3", seed=0, vocab="qwen")


def make(tiny_dir, items=None, **overrides):
    cfg = tiny_config(**{"llm.qwen_model": str(tiny_dir), "llm.qwen_max_candidates": K, "llm.qwen_max_history": 3,
                         "llm.qwen_max_seq_length": 512, "llm.lora_dropout": 0.0, "rerank.rerank_batch_size": 64,
                         **overrides})  # fmt: skip
    hparams = QwenReranker.hyperparameters(cfg, "test")
    hparams["examples_per_user"] = None  # every prefix: the task is small
    seed_everything(0)
    return QwenReranker(GOLDEN + PLAIN, hparams, TEST_DEVICE, items=items)


@pytest.fixture(scope="module")
def task():
    """Users only ever pick "golden" items (titles ending in "golden"); the lists' negatives are "plain" items, so
    the true item is the candidate whose title shares the word "golden" with every history title."""
    rng = np.random.default_rng(0)
    titles = {}
    for i in range(1, GOLDEN + PLAIN + 1):
        words = " ".join(rng.choice(WORDS, 2))
        titles[i] = f"{words} golden" if i <= GOLDEN else f"{words} plain"
    train, val, test = [np.zeros(0, np.int64)], [0], [0]
    for _ in range(USERS):
        picks = rng.permutation(np.arange(1, GOLDEN + 1))[:6]
        train.append(picks[:4])
        val.append(picks[4])
        test.append(picks[5])
    seqs = Sequences(train, np.array(val), np.array(test))
    users = np.arange(1, USERS + 1)

    def lists(split: str) -> CandidateSet:
        hist = [seqs.train[u] if split == "val" else np.append(seqs.train[u], seqs.val[u]) for u in users]
        targets = (seqs.val if split == "val" else seqs.test)[users]
        plain = np.arange(GOLDEN + 1, GOLDEN + PLAIN + 1)
        cands = np.stack([rng.permutation(np.append(rng.choice(plain, K - 1, replace=False), t)) for t in targets])
        return CandidateSet(users, hist, cands, targets, target_index_of(cands, targets))

    return titles, seqs, lists("val"), lists("test")


# ---- model names and loading errors ----


def test_model_names_map_to_hub_ids_and_folders(tiny_dir, tmp_path):
    assert resolve_model_id("qwen3-0.6b") == "Qwen/Qwen3-0.6B"
    assert resolve_model_id("qwen3-1.6b") == "Qwen/Qwen3-1.7B"  # no 1.6B was published
    assert resolve_model_id("Qwen/Qwen3-4B") == "Qwen/Qwen3-4B"
    assert resolve_model_id(str(tiny_dir)) == str(tiny_dir.resolve())
    with pytest.raises(MissingArtifactError, match="no such model folder"):
        resolve_model_id(str(tmp_path / "nowhere" / "model.gguf"))


def test_quantization_on_cpu_is_a_config_error(tiny_dir):
    with pytest.raises(ConfigError, match=r"needs a CUDA device.*--use_quantization"):
        load_causal_lm(str(tiny_dir), "cpu", use_quantization=True)


def test_missing_model_offline_fails_fast_with_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    tried = []  # fail fast = no connection attempted (a timing bound flaked under parallel test workers)

    def refuse(sock, address):
        tried.append(address)
        raise OSError("the test forbids the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    with pytest.raises(MissingArtifactError) as err:
        load_causal_lm("qwen3-0.6b", "cpu")
    assert tried == []
    message = str(err.value)
    for part in ("Qwen/Qwen3-0.6B", "huggingface-cli download Qwen/Qwen3-0.6B", "HF_HOME", "--qwen_model /path/to/dir"):
        assert part in message


def test_gguf_file_without_the_gguf_package_says_how_to_install(tmp_path):
    try:
        import gguf  # noqa: F401

        pytest.skip("the gguf package is installed")
    except ImportError:
        pass
    path = tmp_path / "model-q4.gguf"
    path.write_bytes(b"GGUF")
    with pytest.raises(ConfigError, match="pip install gguf"):
        load_causal_lm(str(path), "cpu")


def test_text_modes_read_generated_texts_and_raw_image_is_the_vl_rerankers(tiny_dir):
    check_mode("text_only")
    with pytest.raises(ConfigError, match="qwen3vl"):
        check_mode("raw_image")
    items = pd.DataFrame({"item_id": [1, 2], "raw_id": ["a", "b"], "title": ["Red shoe", "Blue hat"],
                          "caption": ["a red shoe on white", None], "semantic_summary": [None, None],
                          "semantic_summary_small": [None, None]})  # fmt: skip
    reranker = make(tiny_dir, items=items, **{"llm.qwen_mode": "caption"})
    assert reranker.item_texts == {1: "Red shoe. a red shoe on white", 2: "Blue hat"}  # no caption: the title
    with pytest.raises(MissingArtifactError, match="generate_semantic_summary"):
        reranker.hparams["mode"] = "semantic_summary"
        reranker.set_items(items)


def test_hyperparameters_come_from_the_config(tiny_dir):
    cfg = tiny_config(**{"llm.qwen_model": str(tiny_dir), "llm.lora_r": 4, "llm.lora_target_modules": ["q_proj"]})
    h = QwenReranker.hyperparameters(cfg, "test")
    assert h["model"] == str(tiny_dir.resolve()) and h["lora_r"] == 4 and h["lora_target_modules"] == ["q_proj"]
    assert h["max_candidates"] == 50 and h["mode"] == "text_only"


# ---- scoring ----


def test_scores_are_label_logits_with_inf_padding_in_one_forward(tiny_dir):
    reranker = make(tiny_dir, items={i: f"item {i}" for i in range(1, 31)})
    assert [label.text for label in reranker.labels] == ["A", "B", "C", "D", "E"]
    calls = []
    hook = reranker.model.get_base_model().register_forward_hook(lambda *args: calls.append(1))
    histories = [np.array([3, 4]), np.array([9]), np.array([1, 2, 3])]
    cands = np.array([[1, 2, 0, 4, 0], [5, 6, 7, 8, 9], [0, 0, 0, 0, 0]])
    scores = reranker.score(histories, cands)
    hook.remove()
    assert scores.shape == (3, 5) and len(calls) == 1
    assert torch.isinf(scores[cands == 0]).all() and (scores[cands == 0] < 0).all()
    assert torch.isfinite(scores[cands != 0]).all()
    # row 0: its three real candidates are A, B, C in the prompt; scores are those labels' logits at position -1
    prompt = reranker.prompts([histories[0]], [np.array([1, 2, 4])])[0]
    assert "A. item 1\nB. item 2\nC. item 4\n" in prompt.text
    with torch.no_grad():
        alone = reranker.answer_logits([prompt])[0, [label.token_id for label in reranker.labels[:3]]]
    torch.testing.assert_close(scores[0, [0, 1, 3]], alone, rtol=1e-4, atol=1e-4)
    with pytest.raises(ConfigError, match="qwen_max_candidates"):
        reranker.score(histories[:1], np.arange(1, K + 2)[None])


def test_compiled_layers_score_like_the_eager_model(tiny_dir):
    items = {i: f"item {i}" for i in range(1, 31)}
    eager = make(tiny_dir, items=items)
    compiled = make(tiny_dir, items=items, **{"llm.use_torch_compile": True})
    assert compiled._pad_multiple == 64 and eager._pad_multiple == 1
    histories = [np.array([3, 4]), np.array([9, 10, 11])]
    cands = np.array([[1, 2, 5, 4, 7], [5, 6, 0, 8, 9]])
    torch.testing.assert_close(compiled.score(histories, cands), eager.score(histories, cands), rtol=1e-3, atol=1e-3)


def test_scoring_needs_item_texts(tiny_dir):
    reranker = make(tiny_dir)
    with pytest.raises(MissingArtifactError, match="set_items"):
        reranker.score([np.array([1])], np.array([[1, 2]]))


# ---- training ----


def test_lora_learns_the_task_only_adapters_change_and_the_adapter_reloads(tiny_dir, task, tmp_path):
    titles, seqs, val, test = task
    reranker = make(tiny_dir, items=titles)
    base = {n: p.detach().clone() for n, p in reranker.model.named_parameters() if "lora_" not in n}
    before = evaluate_lists(reranker.score, test, (1, 10)).all_users
    history = reranker.fit(seqs, val, LoopSettings(epochs=8, lr=5e-3, patience=8, batch_size=16), ks=(1, 10))
    after = evaluate_lists(reranker.score, test, (1, 10)).all_users
    print(f"test hit@1 {before['hit_at_1']:.3f} -> {after['hit_at_1']:.3f}, ndcg@10 {before['ndcg_at_10']:.3f} -> "
          f"{after['ndcg_at_10']:.3f}; val hit@1 by epoch {[round(e['val_hit_at_1'], 3) for e in history.epochs]}")  # fmt: skip
    assert before["hit_at_1"] < 0.4  # random: 1/5
    assert after["hit_at_1"] >= 0.6 and after["hit_at_1"] >= before["hit_at_1"] + 0.3, (before, after)
    assert after["ndcg_at_10"] >= before["ndcg_at_10"] + 0.15, (before, after)
    assert history.best_score >= 0.6 and history.epochs[-1]["train_loss"] < history.epochs[0]["train_loss"]
    # only the LoRA weights trained
    trainable = {n for n, p in reranker.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    for name, value in reranker.model.named_parameters():
        if name in base:
            assert torch.equal(value, base[name]), name
    # the saved folder holds the adapter, the tokenizer and the item texts; reloading gives the same scores
    reranker.save(tmp_path / "saved")
    for name in ("config.json", "items.json", "adapter/adapter_model.safetensors", "adapter/adapter_config.json",
                 "tokenizer/tokenizer.json"):  # fmt: skip
        assert (tmp_path / "saved" / name).is_file(), name
    assert not list((tmp_path / "saved").glob("model.safetensors"))
    again = QwenReranker.load(tmp_path / "saved", TEST_DEVICE)
    assert again.hparams["labels"] == ["A", "B", "C", "D", "E"] and again.hparams["model"] == str(tiny_dir.resolve())
    torch.testing.assert_close(reranker.score(test.histories[:8], test.candidates[:8]),
                               again.score(test.histories[:8], test.candidates[:8]), rtol=0, atol=0)  # fmt: skip


def test_gradient_accumulation_matches_one_big_batch():
    """Two half batches accumulated give the same SGD step as the whole batch (mean losses, no clipping)."""
    x, y = torch.randn(8, 3, generator=torch.Generator().manual_seed(0)), torch.randn(8, 1)

    def run(batches, accumulate):
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 1)

        class Task:
            def __init__(self):
                self.model = model

            def optimizer(self, lr):
                return torch.optim.SGD(model.parameters(), lr=lr)

            def batches(self, epoch, rng):
                return batches

            def loss(self, batch):
                return torch.nn.functional.mse_loss(model(batch[0]), batch[1])

            def validate(self):
                return {"ndcg_at_10": 0.0}

        settings = LoopSettings(epochs=1, lr=0.1, patience=5, grad_clip=0.0, gradient_accumulation_steps=accumulate)
        fit(Task(), settings, torch.device("cpu"))
        return model.weight.detach().clone()

    whole = run([(x, y)], 1)
    halves = run([(x[:4], y[:4]), (x[4:], y[4:])], 2)
    separate = run([(x[:4], y[:4]), (x[4:], y[4:])], 1)
    torch.testing.assert_close(whole, halves)
    assert not torch.allclose(whole, separate)
