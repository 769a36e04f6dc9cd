"""LRURec: the parallel scan is the recurrence, the ring initialisation holds, and the model learns a sequence."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import cyclic_rows, raw_dataset, tiny_config

from recsys_core.batching import bucketed_batches, training_windows
from recsys_core.config import DataConfig
from recsys_core.data.preprocess import preprocess
from recsys_core.data.store import Sequences
from recsys_core.evaluation import evaluate_full_ranking, split_inputs
from recsys_core.retrieval.lrurec import LRULayer, LRURec, parallel_scan, sequential_scan
from recsys_core.training import LoopSettings, seed_everything


@pytest.mark.parametrize("length", [1, 2, 8, 64])
def test_parallel_scan_equals_the_step_by_step_recurrence(length):
    torch.manual_seed(length)
    u = torch.complex(torch.randn(3, length, 5), torch.randn(3, length, 5))
    lam = torch.exp(torch.complex(-torch.rand(5), 2 * math.pi * torch.rand(5)))
    mask = torch.ones(3, length, dtype=torch.bool)
    mask[1, : length // 2] = False  # left padding
    mask[2, : length - 1] = False
    torch.testing.assert_close(parallel_scan(u, lam, mask), sequential_scan(u, lam, mask), rtol=1e-4, atol=1e-5)


def test_padding_never_reaches_real_positions():
    model = LRURec(30, LRURec.hyperparameters(tiny_config(), "ml-100k")).model.eval()
    seq = torch.tensor([[5, 6, 7]])
    padded = torch.tensor([[0, 0, 0, 0, 0, 5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(model(seq)[:, -1], model(padded)[:, -1], rtol=1e-4, atol=1e-5)


def test_ring_initialisation_is_kept():
    torch.manual_seed(0)
    layer = LRULayer(32, 0.0, r_min=0.8, r_max=0.99)
    nu, theta, gamma = torch.exp(layer.params_log)
    modulus = torch.exp(-nu)
    assert modulus.min() >= 0.8 - 1e-6 and modulus.max() <= 0.99 + 1e-6
    assert torch.allclose(gamma, torch.sqrt(1 - modulus**2))
    assert (theta >= 0).all() and (theta <= 2 * math.pi).all()
    model = LRURec(50, LRURec.hyperparameters(tiny_config(), "beauty")).model  # the truncated-normal init skips it
    modulus = torch.exp(-torch.exp(model.lru[0].params_log[0]))
    assert modulus.min() >= 0.8 - 1e-6


def test_embeddings_are_tied_and_scores_have_a_bias():
    retriever = LRURec(30, LRURec.hyperparameters(tiny_config(), "ml-100k"))
    names = dict(retriever.model.named_parameters())
    assert "bias" in names and names["token.weight"].shape == (31, 16)
    assert not any("out_proj" in n or "head" in n for n in names)  # no separate output embedding


def test_training_windows():
    seq = np.arange(1, 12)  # 11 items
    assert [w.tolist() for w in training_windows([seq], max_len=20, step_share=1.0)] == [seq.tolist()]
    windows = training_windows([np.arange(1, 31)], max_len=10, step_share=0.5)
    assert windows[0].tolist() == list(range(20, 31))  # the last window ends at the last item
    assert all(len(w) == 11 for w in windows) and windows[1].tolist() == list(range(15, 26))
    assert training_windows([np.array([3])], 5, 1.0) == []


def test_bucketed_batches_cover_every_sequence_once():
    lengths = np.random.default_rng(0).integers(2, 50, 300)
    batches = bucketed_batches(lengths, 32, np.random.default_rng(1), pool=4)
    assert sorted(np.concatenate(batches).tolist()) == list(range(300))
    assert bucketed_batches(lengths, 32, np.random.default_rng(1), pool=4)[0].tolist() == batches[0].tolist()


def cyclic_dataset():
    return preprocess(raw_dataset(cyclic_rows()), DataConfig(min_uc=3, min_sc=1))


def test_lrurec_learns_a_sequential_pattern():
    ds = cyclic_dataset()
    seqs = Sequences.from_dataset(ds)
    cfg = tiny_config()
    seed_everything(cfg.seed)
    retriever = LRURec(ds.n_items, LRURec.hyperparameters(cfg, "ml-100k"))
    before = evaluate_full_ranking(retriever.score, *split_inputs(seqs, "test"), ks=(10,)).metrics["recall_at_10"]
    settings = LoopSettings(epochs=15, lr=0.01, patience=15, batch_size=32, seed=cfg.seed)
    history = retriever.fit(seqs, settings, ks=(10,))
    after = evaluate_full_ranking(retriever.score, *split_inputs(seqs, "test"), ks=(10,)).metrics["recall_at_10"]
    chance = 10 / (ds.n_items - 12)  # about 10 of the ~28 unseen items
    assert after > 0.9 and after > 2.5 * chance, (before, after, history.epochs[-1])
    assert history.epochs[-1]["train_loss"] < history.epochs[0]["train_loss"]


def test_save_and_load_give_identical_scores(tmp_path):
    ds = cyclic_dataset()
    seqs = Sequences.from_dataset(ds)
    retriever = LRURec(ds.n_items, LRURec.hyperparameters(tiny_config(), "ml-100k"))
    retriever.fit(seqs, LoopSettings(epochs=1, lr=0.01, patience=3, batch_size=32), ks=(10,))
    retriever.save(tmp_path)
    again = LRURec.load(tmp_path)
    histories = [seqs.train[u] for u in range(1, 6)]
    torch.testing.assert_close(retriever.score(histories), again.score(histories))
    assert {p.name for p in tmp_path.iterdir()} == {"model.safetensors", "config.json"}
