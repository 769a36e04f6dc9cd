"""BERT4Rec reranker: its own [MASK] id, fresh masks each epoch, scores read at an appended [MASK], and it learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import cyclic_rows, raw_dataset, tiny_config

from recsys_core.candidates import build_gt_candidates
from recsys_core.config import DataConfig
from recsys_core.data.preprocess import preprocess
from recsys_core.data.store import Sequences
from recsys_core.rerank.bert4rec import BERT4Rec, cloze_mask
from recsys_core.rerank.data import from_ground_truth
from recsys_core.rerank.evaluate import evaluate_lists
from recsys_core.training import LoopSettings, seed_everything

CFG = {"bert4rec.bert_hidden_size": 16, "bert4rec.bert_num_blocks": 1, "bert4rec.bert_max_len": 16,
       "bert4rec.bert_dropout": 0.1}  # fmt: skip


@pytest.fixture(scope="module")
def data():
    ds = preprocess(raw_dataset(cyclic_rows(150, 40)), DataConfig(min_uc=3, min_sc=1))
    seqs = Sequences.from_dataset(ds)
    gt = build_gt_candidates(ds, 10, 1, "uniform")
    return ds, seqs, from_ground_truth(gt, seqs, "val"), from_ground_truth(gt, seqs, "test")


def make(n_items):
    seed_everything(3)
    return BERT4Rec(n_items, BERT4Rec.hyperparameters(tiny_config(**CFG), "ml-100k"))


def test_mask_id_is_its_own_token(data):
    ds = data[0]
    model = make(ds.n_items).model
    assert model.mask_id == ds.n_items + 1 and model.item.num_embeddings == ds.n_items + 2
    assert model.logits(torch.zeros(1, 16)).shape == (1, ds.n_items + 1)  # [MASK] is never a prediction


def test_cloze_masks_change_every_draw_and_keep_padding():
    tokens = torch.tensor([[0, 0, 3, 4, 5, 6, 7, 8], [0, 0, 0, 0, 0, 0, 9, 10]])
    gen = torch.Generator().manual_seed(0)
    first = cloze_mask(tokens, 99, 0.4, gen)
    second = cloze_mask(tokens, 99, 0.4, gen)
    for inputs, labels in (first, second):
        masked = inputs == 99
        assert masked.any(dim=1).all()  # at least one per row
        assert (inputs[tokens == 0] == 0).all() and (labels[~masked] == 0).all()
        assert torch.equal(labels[masked], tokens[masked])
    assert not torch.equal(first[0], second[0])


def test_scores_are_read_at_an_appended_mask(data):
    ds, seqs, _, _ = data
    reranker = make(ds.n_items)
    history = seqs.train[1]
    tokens = torch.tensor([[*history[-15:], reranker.model.mask_id]])
    reranker.model.eval()
    with torch.no_grad():
        expected = reranker.model.logits(reranker.model(tokens)[:, -1])
    cands = np.array([[1, 2, 3]])
    torch.testing.assert_close(reranker.score([history], cands), expected[:, [1, 2, 3]])


def test_bert4rec_learns_the_pattern_and_reloads(data, tmp_path):
    ds, seqs, val, test = data
    reranker = make(ds.n_items)
    before = evaluate_lists(reranker.score, test, (1, 5)).all_users["hit_at_1"]
    history = reranker.fit(seqs, val, LoopSettings(epochs=30, lr=0.01, patience=30, batch_size=32), ks=(1, 10))
    after = evaluate_lists(reranker.score, test, (1, 5)).all_users
    assert after["hit_at_1"] > 0.4 and after["hit_at_1"] > 3 * before, (before, after)  # random: 0.1
    assert history.epochs[-1]["train_loss"] < history.epochs[0]["train_loss"]
    reranker.save(tmp_path)
    again = BERT4Rec.load(tmp_path)
    torch.testing.assert_close(reranker.score(test.histories[:4], test.candidates[:4]),
                               again.score(test.histories[:4], test.candidates[:4]))  # fmt: skip
