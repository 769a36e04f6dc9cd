"""BERT4Rec reranker: its own [MASK] id, fresh masks each epoch, scores read at an appended [MASK], and it learns;
the list objective (softmax over a training list's candidates at the [MASK] after its prefix) and cloze unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import cyclic_rows, raw_dataset, tiny_config

from recsys_core.batching import BATCH_ORDERS, bucketed_batches, training_windows
from recsys_core.candidates import build_gt_candidates
from recsys_core.config import DataConfig
from recsys_core.data.preprocess import preprocess
from recsys_core.data.store import Sequences
from recsys_core.evaluation import split_inputs
from recsys_core.rerank import bert4rec as bert4rec_module
from recsys_core.rerank.bert4rec import BERT4Rec, cloze_mask, list_loss
from recsys_core.rerank.data import (
    CandidateSet,
    RetrievedExamples,
    TrainingExamples,
    from_ground_truth,
    shuffle_filled,
    target_index_of,
)
from recsys_core.rerank.evaluate import evaluate_lists
from recsys_core.training import LoopSettings, fit, seed_everything

CFG = {"bert4rec.bert_hidden_size": 16, "bert4rec.bert_num_blocks": 1, "bert4rec.bert_max_len": 16,
       "bert4rec.bert_dropout": 0.1}  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: these tiny models run several times faster so on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data():
    ds = preprocess(raw_dataset(cyclic_rows(150, 40)), DataConfig(min_uc=3, min_sc=1))
    seqs = Sequences.from_dataset(ds)
    gt = build_gt_candidates(ds, 10, 1, "uniform")
    return ds, seqs, from_ground_truth(gt, seqs, "val"), from_ground_truth(gt, seqs, "test")


def make(n_items, **hparams):
    seed_everything(3)
    return BERT4Rec(n_items, {**BERT4Rec.hyperparameters(tiny_config(**CFG), "ml-100k"), **hparams})


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


@pytest.mark.parametrize("order", BATCH_ORDERS)
def test_bert4rec_learns_the_pattern_and_reloads(data, tmp_path, order):
    ds, seqs, val, test = data
    reranker = make(ds.n_items, batch_order=order)
    before = evaluate_lists(reranker.score, test, (1, 5)).all_users["hit_at_1"]
    history = reranker.fit(seqs, val, LoopSettings(epochs=30, lr=0.01, patience=30, batch_size=32), ks=(1, 10))
    after = evaluate_lists(reranker.score, test, (1, 5)).all_users
    assert after["hit_at_1"] > 0.4 and after["hit_at_1"] > 3 * before, (before, after)  # random: 0.1
    assert history.epochs[-1]["train_loss"] < history.epochs[0]["train_loss"]
    reranker.save(tmp_path)
    again = BERT4Rec.load(tmp_path)
    torch.testing.assert_close(reranker.score(test.histories[:4], test.candidates[:4]),
                               again.score(test.histories[:4], test.candidates[:4]))  # fmt: skip


def test_batch_order_setting_chooses_the_cloze_batches(data, monkeypatch):
    """``bert_batch_order`` reaches the loop: random batches are the published loader's (any lengths mixed), length
    batches hold windows of similar length; each window once per epoch either way."""
    ds, seqs, val, _ = data
    assert tiny_config(**CFG, **{"bert4rec.bert_batch_order": "random"}).bert4rec.bert_batch_order == "random"
    seen = {}
    real = bert4rec_module.epoch_batches

    def spy(lengths, batch_size, rng, order):
        batches = real(lengths, batch_size, rng, order)
        seen[order] = (lengths, batches)
        return batches

    monkeypatch.setattr(bert4rec_module, "epoch_batches", spy)
    for order in BATCH_ORDERS:
        make(ds.n_items, batch_order=order).fit(seqs, val, LoopSettings(epochs=1, lr=0.01, patience=1, batch_size=8))
    spread = {}
    for order, (lengths, batches) in seen.items():
        assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
        spread[order] = np.mean([np.ptp(lengths[b]) for b in batches])
    assert len(np.unique(seen["random"][0])) > 3  # the windows differ in length, so the orders can differ
    assert spread["length"] < spread["random"] / 2, spread


# --- the list objective ------------------------------------------------------------------------------------------


def test_list_loss_is_a_softmax_over_the_candidates_only():
    logits = torch.tensor([[50.0, 1.0, -2.0, 0.5, 3.0, 7.0],  # id 0 (padding) scores highest: it must not count
                           [50.0, 0.0, 2.0, -1.0, 1.0, 4.0]], requires_grad=True)  # fmt: skip
    candidates = torch.tensor([[3, 1, 0, 0], [2, 5, 4, 0]])
    target_index = torch.tensor([1, 0])  # item 1 among {3, 1}; item 2 among {2, 5, 4}
    loss = list_loss(logits, candidates, target_index)
    row0 = -np.log(np.exp(1.0) / (np.exp(0.5) + np.exp(1.0)))
    row1 = -np.log(np.exp(2.0) / (np.exp(2.0) + np.exp(4.0) + np.exp(1.0)))
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    loss.backward()
    off_list = torch.ones_like(logits, dtype=torch.bool)
    off_list[0, [3, 1]] = off_list[1, [2, 5, 4]] = False
    assert (logits.grad[off_list] == 0).all()  # padding and items outside the list get no gradient
    assert logits.grad[0, 1] < 0 < logits.grad[0, 3]  # the true item is pushed up, its negatives down


def test_list_objective_reads_the_logits_at_the_mask_after_the_prefix(data):
    ds, seqs, _, _ = data
    reranker = make(ds.n_items)
    reranker.model.eval()  # no dropout: the training forward equals the scoring one
    histories = [np.concatenate(seqs.train[1:4]), seqs.train[2][:3], seqs.train[3][:1]]  # the first: over max_len
    assert len(histories[0]) > reranker.hparams["max_len"] - 1
    candidates = np.array([[5, 9, 2, 7], [11, 3, 0, 0], [4, 8, 6, 0]])
    target_index = np.array([2, 1, 0])
    loss = reranker.list_objective(reranker.list_inputs(histories, candidates, target_index))
    scores = reranker.score(histories, candidates).masked_fill(torch.as_tensor(candidates == 0), -torch.inf)
    torch.testing.assert_close(loss, F.cross_entropy(scores, torch.as_tensor(target_index)))


class Untouchable:
    """An example source that fails on any use."""

    def __getattr__(self, name):
        raise AssertionError(f"the cloze objective used the training lists ({name})")


def reference_cloze_fit(reranker, seqs, val, settings):
    """BERT4Rec's training as it was before the list objective (frozen copy of its Task), to compare weights."""
    max_len, model = reranker.hparams["max_len"], reranker.model
    windows = [w for w in training_windows(seqs.train[1:], max_len - 1, 1.0) if len(w) >= 2]
    lengths = np.array([len(w) for w in windows])
    decay = [p for n, p in model.named_parameters() if not ("bias" in n or "norm" in n)]
    no_decay = [p for n, p in model.named_parameters() if "bias" in n or "norm" in n]

    class Task:
        def __init__(self):
            self.model = model

        def optimizer(self, lr):
            groups = [{"params": decay, "weight_decay": reranker.hparams["weight_decay"]},
                      {"params": no_decay, "weight_decay": 0.0}]  # fmt: skip
            return torch.optim.AdamW(groups, lr=lr)

        def batches(self, epoch, rng):
            gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
            for ids in bucketed_batches(lengths, settings.batch_size, rng):
                chunk = [windows[i] for i in ids]
                tokens = reranker.left_pad(chunk, max(len(w) for w in chunk))
                yield cloze_mask(tokens, model.mask_id, reranker.hparams["mask_prob"], gen,
                                 reranker.hparams.get("last_item_prob", 0.0))  # fmt: skip

        def loss(self, batch):
            inputs, labels = batch
            hidden = model(inputs)
            chosen = labels > 0
            return F.cross_entropy(model.logits(hidden[chosen]).float(), labels[chosen])

        def validate(self):
            return evaluate_lists(reranker.score, val, (1, 10), desc="validate").all_users

    return fit(Task(), settings, reranker.device)


def test_cloze_objective_trains_exactly_as_before(data):
    ds, seqs, val, _ = data
    settings = LoopSettings(epochs=2, lr=0.01, patience=5, batch_size=32)
    old = make(ds.n_items)
    for key in ("objective", "list_weight", "examples_per_user", "batch_order"):  # saved before these keys existed
        del old.hparams[key]
    old_history = reference_cloze_fit(old, seqs, val, settings)
    assert make(ds.n_items).hparams["batch_order"] == "random"  # the default since; before it, length batches
    new = make(ds.n_items, batch_order="length")
    assert new.hparams["objective"] == "cloze"  # the default
    history = new.fit(seqs, val, settings, ks=(1, 10), examples=Untouchable())
    assert [e["train_loss"] for e in history.epochs] == [e["train_loss"] for e in old_history.epochs]
    new_state, old_state = new.model.state_dict(), old.model.state_dict()
    assert all(torch.equal(new_state[k], old_state[k]) for k in old_state)  # bit for bit


# A task where the list objective matters. 40 items, 8 of them popular: each step is, with probability 0.4, a popular
# item the user has not had yet, else a tail item, both drawn at random, so popular items are the likeliest next items
# and the cloze task (a softmax over all items) rightly favours them. The fake retriever's lists hold the true next item
# among popular items the user has not had (its hard negatives, up to 4, fewer once the user has had most: 0-padded):
# in these lists a tail item, when there is one, is always the answer, which only a model trained on the lists learns.
N_POPULAR, WIDTH = 8, 5


@pytest.fixture(scope="module")
def popular_decoys():
    rng = np.random.default_rng(0)
    rows = []
    for u in range(150):
        popular, tail = list(rng.permutation(np.arange(1, N_POPULAR + 1))), list(rng.permutation(np.arange(9, 41)))
        for t in range(int(rng.integers(8, 14))):
            item = popular.pop() if rng.random() < 0.4 and popular else tail.pop()
            rows.append((f"u{u:04d}", str(item), 5.0, 1000 + t))
    ds = preprocess(raw_dataset(rows), DataConfig(min_uc=3, min_sc=1))
    assert ds.n_items == 40 and (ds.items["raw_id"].astype(int) == ds.items["item_id"]).all()  # ids = raw ids
    seqs = Sequences.from_dataset(ds)

    def held_out(split):
        histories, targets, users = split_inputs(seqs, split)
        rng = np.random.default_rng(1)
        lists = shuffle_filled(np.stack([decoy_list(h, t, rng) for h, t in zip(histories, targets, strict=True)]), rng)
        return CandidateSet(users, histories, lists, targets, target_index_of(lists, targets))

    return seqs, held_out("val"), held_out("test")


def decoy_list(history, target, rng):
    decoys = [i for i in range(1, N_POPULAR + 1) if i not in set(history.tolist()) and i != target]
    items = [target, *rng.permutation(decoys)[: WIDTH - 1].tolist()]
    return np.array(items + [0] * (WIDTH - len(items)))


class DecoyLists:
    """The fake retriever's training lists for train prefixes (the per_user most recent per user), fresh decoys and
    order at every draw; records how it was asked."""

    def __init__(self, seqs):
        self.seqs, self.calls = seqs, []

    def draw(self, width, rng, per_user=None):
        self.calls.append((width, per_user))
        users, histories, lists, targets = [], [], [], []
        for user in range(1, len(self.seqs.train)):
            train = self.seqs.train[user]
            for t in range(1 if per_user is None else max(1, len(train) - per_user), len(train)):
                users.append(user)
                histories.append(train[:t])
                targets.append(train[t])
                lists.append(decoy_list(train[:t], train[t], rng))
        lists = shuffle_filled(np.stack(lists), rng)
        return TrainingExamples(np.array(users), histories, lists, target_index_of(lists, np.array(targets)))


def test_list_objective_learns_what_the_cloze_task_cannot(popular_decoys):
    seqs, val, test = popular_decoys
    tail = test.targets > N_POPULAR
    assert 0.5 < tail.mean() < 0.75 and (test.candidates == 0).any()  # lists with a tail answer; some padded
    settings = LoopSettings(epochs=8, lr=0.01, patience=8, batch_size=32)
    results, sources = {}, {}
    for objective in ("cloze", "list", "cloze_list"):
        reranker = make(40, objective=objective, examples_per_user=3)
        sources[objective] = DecoyLists(seqs)
        history = reranker.fit(seqs, val, settings, ks=(1, 10), examples=sources[objective])
        assert all(np.isfinite(e["train_loss"]) for e in history.epochs)  # padded slots never make it inf / nan
        ranks = evaluate_lists(reranker.score, test, (1,)).ranks
        results[objective] = {"all": np.mean(ranks == 0), "tail": np.mean(ranks[tail] == 0)}
    assert sources["cloze"].calls == []
    assert sources["list"].calls == sources["cloze_list"].calls == [(WIDTH, 3)] * 8  # once per epoch
    # hit@1 on held-out lists (random: about 0.3). Cloze puts the popular decoys first; list training learns that a
    # tail item in these lists is the answer. Seen: list 0.69, cloze_list 0.68 (tail answers: 1.0 both) against
    # cloze 0.14 (tail answers: 0.0); over five seeds list 0.68-0.71, cloze_list 0.66-0.70, cloze 0.11-0.14.
    assert results["cloze"]["tail"] < 0.3, results
    for objective in ("list", "cloze_list"):
        assert results[objective]["tail"] > 0.9, results
        assert results[objective]["all"] > results["cloze"]["all"] + 0.3, results


def test_list_objective_trains_on_retrieved_lists(data):
    """Retrieval mode's source: the retriever's top for each user's last train prefix (its items and the user's
    held-out items masked by RetrievedExamples), computed once and reshuffled every epoch, as wide as the validation
    lists; the loss stays finite with lists shorter than that width."""
    ds, seqs, val, _ = data
    asked, draws = [], []

    def retriever(histories):  # a fixed random scorer: the true next item is retrieved only sometimes
        asked.extend(len(h) for h in histories)
        return torch.rand(len(histories), ds.n_items + 1, generator=torch.Generator().manual_seed(len(asked)))

    class Spy(RetrievedExamples):
        def draw(self, width, rng, max_per_user=None):
            draws.append((width, max_per_user))
            return super().draw(width, rng, max_per_user)

    reranker = make(ds.n_items, objective="cloze_list", list_weight=0.5)
    history = reranker.fit(seqs, val, LoopSettings(epochs=2, lr=0.01, patience=5, batch_size=32), ks=(1, 10),
                           examples=Spy(seqs, retriever))  # fmt: skip
    assert all(np.isfinite(e["train_loss"]) for e in history.epochs)
    assert draws == [(val.candidates.shape[1], 1)] * 2
    assert asked == [len(t) - 1 for t in seqs.train[1:]]  # each user's last prefix, scored once


@pytest.mark.parametrize("per_user", [3, None])
def test_lists_per_user_setting_reaches_the_list_draws(data, per_user):
    """``bert_examples_per_user`` is how many of each user's most recent train prefixes the list objectives draw
    an epoch (null: every prefix), and only they: the cloze objective never draws a list."""
    ds, seqs, val, _ = data
    cfg = tiny_config(**CFG, **{"bert4rec.bert_examples_per_user": per_user})
    hparams = BERT4Rec.hyperparameters(cfg, "ml-100k")
    assert hparams["examples_per_user"] == per_user
    asked, draws = [], []

    def retriever(histories):
        asked.extend(len(h) for h in histories)
        return torch.rand(len(histories), ds.n_items + 1, generator=torch.Generator().manual_seed(len(asked)))

    class Spy(RetrievedExamples):
        def draw(self, width, rng, max_per_user=None):
            draws.append(max_per_user)
            return super().draw(width, rng, max_per_user)

    settings = LoopSettings(epochs=1, lr=0.01, patience=5, batch_size=32)
    for objective in ("cloze", "list"):
        seed_everything(3)
        BERT4Rec(ds.n_items, {**hparams, "objective": objective}).fit(seqs, val, settings, ks=(10,),
                                                                      examples=Spy(seqs, retriever))  # fmt: skip
    assert draws == [per_user]  # the list model's one epoch; the cloze model drew nothing
    last = [len(t) for t in seqs.train[1:]]
    expected = [n for t in last for n in range(max(1, t - (per_user or t)), t)]
    assert sorted(asked) == sorted(expected)  # each user's most recent prefixes (at least one item), scored once
