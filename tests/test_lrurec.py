"""LRURec: the scan is the recurrence, the ring initialisation holds, and the model learns a sequence."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import cyclic_rows, raw_dataset, tiny_config

from recsys_core.batching import BATCH_ORDERS, bucketed_batches, epoch_batches, training_windows
from recsys_core.config import DataConfig
from recsys_core.data.preprocess import preprocess
from recsys_core.data.store import Sequences
from recsys_core.evaluation import evaluate_full_ranking, split_inputs
from recsys_core.retrieval.lrurec import LRULayer, LRURec, recurrent_scan, sequential_scan
from recsys_core.training import LoopSettings, seed_everything


def left_padded_mask(lengths: list[int], length: int) -> torch.Tensor:
    return torch.arange(length) >= length - torch.tensor(lengths).unsqueeze(1)


@pytest.mark.parametrize("length", [1, 2, 7, 64, 200])
def test_recurrent_scan_equals_the_step_by_step_recurrence(length):
    """Values and gradients (of u and λ) against plain autograd, on left-padded rows, with |λ| up to 0.999."""
    torch.manual_seed(length)
    dim = 6
    u = torch.complex(torch.randn(4, length, dim), torch.randn(4, length, dim)).requires_grad_()
    modulus = torch.tensor([0.5, 0.8, 0.95, 0.99, 0.995, 0.999])
    lam = (modulus * torch.exp(1j * 2 * math.pi * torch.rand(dim))).requires_grad_()
    mask = left_padded_mask([length, length // 2, 1, max(length - 3, 0)], length)
    weights = torch.complex(torch.randn(4, length, dim), torch.randn(4, length, dim))
    results = []
    for scan in (recurrent_scan, sequential_scan):
        h = scan(u, lam, mask)
        grads = torch.autograd.grad((h * weights).real.sum(), (u, lam), allow_unused=True, materialize_grads=True)
        results.append((h, *grads))
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * want.abs().max().item())


def test_recurrent_scan_gradients_with_any_mask():
    """gradcheck in float64, with a hole in the middle of a row besides left padding."""
    torch.manual_seed(0)
    u = torch.complex(torch.randn(3, 9, 4), torch.randn(3, 9, 4)).cdouble().requires_grad_()
    lam = (torch.tensor([0.3, 0.9, 0.99, 0.999]) * torch.exp(1j * torch.rand(4))).cdouble().requires_grad_()
    mask = left_padded_mask([9, 5, 2], 9)
    mask[0, 3:5] = False
    assert torch.autograd.gradcheck(lambda u, lam: recurrent_scan(u, lam, mask), (u, lam))
    torch.testing.assert_close(recurrent_scan(u, lam, mask), sequential_scan(u, lam, mask))


def test_lru_layer_is_its_definition():
    """LayerNorm(Re(C h) + x), h the recurrence over u = γ ⊙ (B x + b), with B, C as real/imaginary pairs; the
    complex arithmetic stays float32 under autocast."""
    torch.manual_seed(0)
    layer = LRULayer(8, 0.0, r_min=0.9, r_max=0.999)
    x = torch.randn(3, 11, 8)
    mask = left_padded_mask([11, 6, 1], 11)
    nu, theta, gamma = torch.exp(layer.params_log)
    u = torch.complex(layer.in_re(x), layer.in_im(x)) * gamma
    h = sequential_scan(u, torch.exp(torch.complex(-nu, theta)), mask)
    expected = layer.layer_norm(layer.out_re(h.real) - layer.out_im(h.imag) + x)
    torch.testing.assert_close(layer(x, mask), expected, rtol=1e-4, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x, mask)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    names = {name for name, _ in layer.named_parameters()}  # what saved checkpoints hold
    assert names == {"params_log", "in_re.weight", "in_re.bias", "in_im.weight", "in_im.bias", "out_re.weight",
                     "out_re.bias", "out_im.weight", "layer_norm.weight", "layer_norm.bias"}  # fmt: skip


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


@pytest.mark.parametrize("order", BATCH_ORDERS)
def test_every_batch_order_covers_every_sequence_once(order):
    lengths = np.random.default_rng(0).integers(2, 50, 300)
    batches = epoch_batches(lengths, 32, np.random.default_rng(1), order)
    assert sorted(np.concatenate(batches).tolist()) == list(range(300))
    assert max(len(b) for b in batches) == 32
    with pytest.raises(ValueError, match="'sorted' is not one of random, length"):
        epoch_batches(lengths, 32, np.random.default_rng(1), "sorted")


@pytest.mark.parametrize("order", BATCH_ORDERS)
def test_length_batches_weigh_every_target_the_same(order):
    """Over an epoch, the losses the loop gets from batches of similar length add up to the number of batches times
    the mean loss of all the epoch's targets: a target in a short batch counts as much as one in a long batch. With
    random batches the loss is each batch's mean, as published."""
    ds = cyclic_dataset()
    retriever = LRURec(ds.n_items, LRURec.hyperparameters(tiny_config(), "ml-100k"))
    retriever.model.eval()  # no dropout: the same batch gives the same loss
    settings = LoopSettings(epochs=1, lr=0.01, patience=1, batch_size=8, batch_order=order)
    task = retriever.training_task(Sequences.from_dataset(ds), settings)
    batches = list(task.batches(0, np.random.default_rng(0)))
    targets = [int((labels > 0).sum()) for _, labels in batches]
    assert len(set(targets)) > 3  # batches hold different numbers of targets
    with torch.no_grad():
        means = torch.stack([retriever.loss(b) for b in batches])
        given = torch.stack([task.loss(b) for b in batches])
    per_target = float((means * torch.tensor(targets)).sum() / sum(targets))
    if order == "length":
        assert float(given.sum()) == pytest.approx(len(batches) * per_target, rel=1e-5)
        share = torch.tensor(targets) / (sum(targets) / len(batches))
        assert torch.allclose(given, means * share, rtol=1e-5)  # each batch weighs by its share of the targets
    else:
        assert torch.equal(given, means)


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
