"""VIP5 reranker on a tiny T5 built from config with the offline tokenizer (random weights): prompts (visual tokens
after each item id, no candidate ever cut), likelihood scores (-inf padding, one encoder and one decoder pass per
batch, equal to a plain teacher-forced forward), adapter training that learns from the visual features alone with the
backbone bit-for-bit frozen, save/load, the offline smoke model and fast failures."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TEST_DEVICE, tiny_config

from recsys_core.data.store import Sequences
from recsys_core.errors import ConfigError, MissingArtifactError
from recsys_core.features.store import FeatureSet, embedding_file, encoder_name, items_fingerprint, save_embeddings
from recsys_core.rerank.data import CandidateSet, target_index_of
from recsys_core.rerank.evaluate import evaluate_lists
from recsys_core.rerank.t5_tiny import build_t5_tokenizer, tiny_t5_config, write_tiny_t5
from recsys_core.rerank.vip5 import VIP5Reranker
from recsys_core.rerank.vip5_model import PromptBuilder, collate, load_t5
from recsys_core.training import LoopSettings, seed_everything

K, CLUSTERS, PER_CLUSTER, USERS, DIM = 5, 8, 5, 120, 16
N_ITEMS = CLUSTERS * PER_CLUSTER


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny T5 from config (no dropout, so training is quick to converge) and the offline T5-style tokenizer."""
    from transformers import T5ForConditionalGeneration

    folder = tmp_path_factory.mktemp("models") / "tiny-t5"
    tokenizer = build_t5_tokenizer()
    torch.manual_seed(0)
    T5ForConditionalGeneration(tiny_t5_config(len(tokenizer), dropout_rate=0.0)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make(tiny_dir, features=None, n_items: int = N_ITEMS, **overrides) -> VIP5Reranker:
    cfg = tiny_config(**{"vip5.vip5_model": str(tiny_dir), "vip5.vip5_max_history": 5, "rerank.rerank_batch_size": 64,
                         **overrides})  # fmt: skip
    hparams = VIP5Reranker.hyperparameters(cfg, "test")
    hparams["examples_per_user"] = None  # every prefix: the task is small
    seed_everything(0)
    if features is None:
        features = torch.randn(n_items + 1, DIM) * (torch.arange(n_items + 1) > 0)[:, None]
    return VIP5Reranker(n_items, hparams, TEST_DEVICE, features=features)


@pytest.fixture(scope="module")
def task():
    """Items come in clusters whose image features lie close together; each user's items all come from one cluster,
    the negatives from others. So the true item is the candidate whose feature is close to the history's, and the
    ids (random, each item as often true as negative) alone say nothing of it."""
    rng = np.random.default_rng(0)
    clusters = rng.permutation(np.arange(1, N_ITEMS + 1)).reshape(CLUSTERS, PER_CLUSTER)
    centers = rng.normal(size=(CLUSTERS, DIM))
    features = np.zeros((N_ITEMS + 1, DIM), np.float32)
    for c, members in enumerate(clusters):
        features[members] = centers[c] + 0.1 * rng.normal(size=(PER_CLUSTER, DIM))
    train, val, test = [np.zeros(0, np.int64)], [0], [0]
    for _ in range(USERS):
        seq = rng.permutation(clusters[rng.integers(CLUSTERS)])
        train.append(seq[:3])
        val.append(seq[3])
        test.append(seq[4])
    seqs = Sequences(train, np.array(val), np.array(test))
    users = np.arange(1, USERS + 1)

    def lists(split: str) -> CandidateSet:
        hist = [seqs.train[u] if split == "val" else np.append(seqs.train[u], seqs.val[u]) for u in users]
        targets = (seqs.val if split == "val" else seqs.test)[users]
        rows = []
        for u, t in zip(users, targets, strict=True):
            pool = np.setdiff1d(np.arange(1, N_ITEMS + 1), np.concatenate([seqs.train[u], [seqs.val[u], seqs.test[u]]]))
            rows.append(rng.permutation(np.append(rng.choice(pool, K - 1, replace=False), t)))
        cands = np.stack(rows)
        return CandidateSet(users, hist, cands, targets, target_index_of(cands, targets))

    return torch.from_numpy(features), seqs, lists("val"), lists("test")


# ---- prompts ----


def test_visual_tokens_sit_right_after_each_item_id(tiny_dir):
    reranker = make(tiny_dir, **{"vip5.image_feature_size_ratio": 3})
    prompt = reranker.prompts.build(np.array([11, 4, 27]), np.array([1, 0, 33, 7]))
    batch = collate([prompt], 3, "cpu")
    tokens = reranker.tokenizer.convert_ids_to_tokens(prompt.ids)
    assert prompt.history == [11, 4, 27] and list(prompt.items_at) == [11, 4, 27, 1, 33, 7]  # empty slot left out
    assert [item for _, item in prompt.visual] == [11, 4, 27, 1, 33, 7]
    for pos, item in prompt.visual:
        id_positions = prompt.items_at[item]
        assert id_positions[-1] + 1 == pos  # the visual tokens follow the id directly
        assert "".join(tokens[i] for i in id_positions) == f"▁item_{item}"
        assert batch.category_ids[0, pos : pos + 3].tolist() == [1, 1, 1]
        assert batch.category_ids[0, id_positions].sum() == 0
        words = batch.word_ids[0, id_positions[0] : pos + 3].tolist()  # one word for the id, one per visual token
        assert len(set(words[: len(id_positions)])) == 1 and words[len(id_positions) :] == list(range(words[0] + 1, words[0] + 4))  # fmt: skip
    assert int(batch.category_ids.sum()) == 6 * 3 and tokens[-1] == "</s>" and batch.word_ids[0, -1] == 0
    # the encoder input holds the visual MLP's output at those positions (word/category embeddings start at zero)
    net = reranker.model
    with torch.no_grad():
        embedded = net.embed(batch)[0]
        for pos, item in prompt.visual:
            assert torch.allclose(embedded[pos : pos + 3], net.visual(net.features[[item]])[0], atol=1e-6)
        text = [i for i in range(len(prompt.ids)) if batch.category_ids[0, i] == 0]
        assert torch.equal(embedded[text], net.backbone.get_input_embeddings()(batch.input_ids[0, text]))


def test_long_history_never_cuts_a_candidate(tiny_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    builder = PromptBuilder(tokenizer, N_ITEMS, 2, max_history=50, max_length=120)
    history, candidates = np.arange(1, 41), np.array([5, 12, 33, 40, 8, 19, 2, 27])
    prompt = builder.build(history, candidates)
    assert len(prompt.ids) <= 120 and prompt.ids[-1] == tokenizer.eos_token_id
    assert all(c in prompt.items_at for c in candidates)  # every candidate, id and visual tokens, is there
    assert 0 < len(prompt.history) < 40 and prompt.history == history[-len(prompt.history) :].tolist()  # newest kept
    wider = builder.build(history, candidates[:3])
    assert len(wider.history) > len(prompt.history)  # fewer candidates leave room for more history
    assert len(PromptBuilder(tokenizer, N_ITEMS, 2, 3, 400).build(history, candidates).history) == 3  # max_history
    with pytest.raises(ConfigError, match=r"8 candidates need \d+ prompt tokens, over VIP5's max_length 40"):
        PromptBuilder(tokenizer, N_ITEMS, 2, 10, 40).build(history, candidates)


# ---- scoring ----


def test_scores_are_id_likelihoods_from_one_batched_pass_with_inf_padding(tiny_dir):
    reranker = make(tiny_dir, n_items=300)  # ids of 1 to 3 digits: targets of different lengths share a pass
    net = reranker.model
    with torch.no_grad():  # give the adapters and embeddings some weight, so that they take part in the check
        for param in net.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn_like(param))
    calls = {"encoder": 0, "decoder": 0}
    hooks = [getattr(net.backbone, part).register_forward_hook(lambda *a, part=part: calls.__setitem__(part, calls[part] + 1))
             for part in calls]  # fmt: skip
    histories = [np.array([3, 4]), np.array([9]), np.array([1, 2, 3])]
    cands = np.array([[1, 2, 0, 4, 0], [5, 123, 7, 280, 9], [0, 0, 0, 0, 0]])
    assert not net.training
    net.train()  # scoring runs in eval mode and gives the caller's mode back
    scores = reranker.score(histories, cands)
    for hook in hooks:
        hook.remove()
    assert calls == {"encoder": 1, "decoder": 1} and scores.dtype == torch.float32 and scores.device.type == "cpu"
    assert torch.isinf(scores[cands == 0]).all() and (scores[cands == 0] < 0).all()
    assert torch.isfinite(scores[cands != 0]).all() and net.training
    net.eval()
    # each score is the teacher-forced log-likelihood of "item_<id></s>" from a plain forward of the backbone
    assert len({len(reranker.tokenizer(f"item_{i}").input_ids) for i in cands[1]}) == 2
    for row in (0, 1):
        batch = collate([reranker.prompts.build(histories[row], cands[row])], 2, "cpu")
        for slot in np.flatnonzero(cands[row]):
            labels = torch.tensor([reranker.tokenizer(f"item_{cands[row, slot]}").input_ids])
            with torch.no_grad():
                logits = net.backbone(inputs_embeds=net.embed(batch), attention_mask=batch.attention_mask,
                                      labels=labels).logits  # fmt: skip
            expected = torch.log_softmax(logits, -1).gather(-1, labels[..., None]).sum()
            assert torch.allclose(scores[row, slot], expected, atol=1e-4), (row, slot)


# ---- training ----


@pytest.fixture(scope="module")
def trained(tiny_dir, task):
    features, seqs, val, test = task
    reranker = make(tiny_dir, features, **{"vip5.vip5_reduction_factor": 1})
    frozen = {k: v.clone() for k, v in reranker.model.backbone.state_dict().items()}
    trainable = {k: v.detach().clone() for k, v in reranker.model.named_parameters() if v.requires_grad}
    before = evaluate_lists(reranker.score, test, (1, 5)).all_users
    began = time.perf_counter()
    history = reranker.fit(seqs, val, LoopSettings(epochs=20, lr=3e-3, patience=20, monitor="ndcg_at_5", batch_size=16,
                                                   seed=0), ks=(1, 5))  # fmt: skip
    seconds = time.perf_counter() - began
    after = evaluate_lists(reranker.score, test, (1, 5)).all_users
    print(f"\nVIP5 tiny: hit@1 {before['hit_at_1']:.3f} -> {after['hit_at_1']:.3f}, NDCG@5 {before['ndcg_at_5']:.3f} -> "
          f"{after['ndcg_at_5']:.3f} (chance hit@1 {1 / K:.2f}); {len(history.epochs)} epochs in {seconds:.1f} s")  # fmt: skip
    return reranker, frozen, trainable, before, after


def test_training_learns_from_the_visual_tokens(trained, task):
    reranker, _, _, before, after = trained
    assert before["hit_at_1"] < 0.35 and after["hit_at_1"] > 0.5 and after["ndcg_at_5"] > before["ndcg_at_5"] + 0.15
    # the ranking comes from the features: with the features shuffled among the items it falls back to chance
    features, _, _, test = task
    reranker.set_features(features[torch.cat([torch.zeros(1, dtype=torch.long), torch.randperm(N_ITEMS) + 1])])
    try:
        shuffled = evaluate_lists(reranker.score, test, (1, 5)).all_users
    finally:
        reranker.set_features(features)
    assert shuffled["hit_at_1"] < 0.4


def test_only_adapters_and_vip5_parts_train_the_backbone_stays_bit_identical(trained):
    reranker, frozen, trainable, _, _ = trained
    for name, value in reranker.model.backbone.state_dict().items():
        assert torch.equal(value, frozen[name]), name
    params = dict(reranker.model.named_parameters())
    assert {n.split(".")[0] for n in trainable} == {"adapters", "visual", "whole_word", "category"}
    assert all(not torch.equal(params[n], v) for n, v in trainable.items() if n.startswith(("adapters", "visual")))
    # the loop's copies and checkpoints hold the trained weights only
    assert len(reranker.trainable.state_dict()) == len(trainable) and not any("backbone" in k for k in trainable)


def test_unfrozen_layer_norms_train_too(tiny_dir, task):
    features, seqs, val, _ = task
    reranker = make(tiny_dir, features, **{"vip5.vip5_unfreeze_layer_norms": True})
    norms = {n: p.detach().clone() for n, p in reranker.model.backbone.named_parameters() if p.requires_grad}
    assert norms and all(n.endswith("layer_norm.weight") for n in norms)
    others = {n: p.detach().clone() for n, p in reranker.model.backbone.named_parameters() if not p.requires_grad}
    small = CandidateSet(val.users[:8], val.histories[:8], val.candidates[:8], val.targets[:8], val.target_index[:8])
    settings = LoopSettings(epochs=1, lr=1e-2, patience=1, monitor="ndcg_at_1", batch_size=64, seed=0)
    reranker.fit(seqs, small, settings, ks=(1,))
    current = dict(reranker.model.backbone.named_parameters())
    assert all(not torch.equal(current[n], v) for n, v in norms.items())
    assert all(torch.equal(current[n], v) for n, v in others.items())


def test_saved_model_reloads_to_identical_scores(trained, task, tmp_path):
    reranker = trained[0]
    _, _, _, test = task
    reranker.save(tmp_path / "vip5")
    names = {p.name for p in (tmp_path / "vip5").iterdir()}
    assert {"config.json", "model.safetensors", "features.safetensors", "tokenizer"} <= names
    assert not any(n.endswith((".pt", ".bin", ".pkl")) for n in names)
    loaded = VIP5Reranker.load(tmp_path / "vip5", TEST_DEVICE)
    assert torch.equal(loaded.score(test.histories, test.candidates), reranker.score(test.histories, test.candidates))


# ---- data, smoke model, errors ----


def test_from_data_reads_the_feature_set_and_zero_fills_items_without_one(tiny_dir, tmp_path):
    cfg = tiny_config(**{"vip5.vip5_model": str(tiny_dir), "vip5.vip5_feature": "text"})
    items = pd.DataFrame({"item_id": np.arange(1, N_ITEMS + 1), "raw_id": [f"r{i}" for i in range(N_ITEMS)]})
    vectors = np.random.default_rng(0).normal(size=(N_ITEMS + 1, DIM)).astype(np.float32)
    present = np.ones(N_ITEMS + 1, bool)
    present[[0, 3]] = False
    save_embeddings(embedding_file(tmp_path, "text", encoder_name("text", cfg.features)), "text", "minilm", vectors,
                    present, items_fingerprint(items))  # fmt: skip
    features = FeatureSet(tmp_path, cfg.features, items)
    hparams = VIP5Reranker.hyperparameters(cfg, "test")
    reranker = VIP5Reranker.from_data(N_ITEMS, hparams, "cpu", items, features)
    assert reranker.hparams["feature_dim"] == DIM and reranker.hparams["encoder"] == features.encoder("text")
    assert torch.equal(reranker.model.features[3], torch.zeros(DIM))
    assert torch.equal(reranker.model.features[5], torch.from_numpy(vectors[5]))
    with pytest.raises(MissingArtifactError, match="embeddings stage"):
        VIP5Reranker.from_data(N_ITEMS, {**hparams, "feature": "image"}, "cpu", items, features)
    with pytest.raises(MissingArtifactError, match=r"recsys embeddings.*--vip5_feature text"):
        VIP5Reranker.from_data(N_ITEMS, hparams, "cpu", items, None)


def test_hyperparameters_come_from_the_config(tiny_dir):
    cfg = tiny_config(**{"vip5.vip5_model": str(tiny_dir), "vip5.image_feature_size_ratio": 3,
                         "vip5.vip5_reduction_factor": 4, "vip5.vip5_max_history": 7})  # fmt: skip
    h = VIP5Reranker.hyperparameters(cfg, "test")
    assert h["model"] == str(tiny_dir.resolve()) and h["image_feature_size_ratio"] == 3
    assert h["reduction_factor"] == 4 and h["max_history"] == 7 and h["feature"] == "image"
    assert VIP5Reranker.hyperparameters(tiny_config(), "test")["model"] == "t5-small"


def test_smoke_model_folder_loads_offline(tmp_path):
    from transformers import AutoTokenizer

    folder = write_tiny_t5(tmp_path / "tiny", seed=0)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert (tokenizer.pad_token, tokenizer.pad_token_id, tokenizer.eos_token, tokenizer.eos_token_id) == ("<pad>", 0, "</s>", 1)  # fmt: skip
    assert tokenizer.unk_token_id == 2 and tokenizer.convert_tokens_to_ids("<extra_id_0>") == len(tokenizer) - 1
    assert tokenizer("item_123").input_ids[-1] == 1
    assert tokenizer.unk_token_id not in tokenizer("Given the next item_123 ?").input_ids
    model, _ = load_t5(str(folder))
    assert model.config.d_model == 64 and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert "random weights" in (folder / "smoke_model.json").read_text()


def test_missing_model_offline_fails_fast_with_what_to_do(monkeypatch, tmp_path, connections):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    connections.refuse = True
    with pytest.raises(MissingArtifactError) as err:
        load_t5("t5-small")
    assert connections == []
    for part in ("'t5-small'", "huggingface-cli download t5-small", "HF_HOME", "recsys tiny-model --arch t5"):
        assert part in str(err.value)
    with pytest.raises(MissingArtifactError, match="no such model folder"):
        load_t5(str(tmp_path / "nowhere"))
