"""Shifted training lists for the learning-to-rank reranker: the split moved earlier by hand, each shifted list
scored by its shadow retriever and counted over its own earlier train split (a count that holds a shifted target is
refused), lists the validation users alone are too few to learn from are learned from with them, and the stage
trains the shadows only with the champion's settings."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import cyclic_rows, tiny_config
from test_ltr import FAST, KS, SETTINGS, make, ndcg, retrieved

from recsys_core.data.store import Sequences
from recsys_core.errors import ConfigError
from recsys_core.rerank import ltr_features as lf
from recsys_core.rerank.bert4rec import BERT4Rec
from recsys_core.rerank.evaluate import evaluate_lists
from recsys_core.retrieval.lrurec import LRURec
from recsys_core.training import seed_everything


def shadow(n_items: int, seed: int) -> LRURec:
    """An untrained retriever: it never saw any target, as one trained on the shifted split never saw its own."""
    seed_everything(seed)
    return LRURec(n_items, LRURec.hyperparameters(tiny_config(), "ml-100k"))


def test_the_split_moves_earlier_by_hand():
    seqs = Sequences([np.zeros(0, np.int64), np.array([1, 2, 3, 4]), np.array([5, 6])], np.array([0, 7, 8]),
                     np.array([0, 9, 10]))  # fmt: skip
    one = seqs.shifted(1)
    assert [s.tolist() for s in one.train] == [[], [1, 2, 3], [5]]
    assert one.val.tolist() == [0, 4, 6] and one.test.tolist() == [0, 7, 8]
    two = seqs.shifted(2)
    assert [s.tolist() for s in two.train] == [[], [1, 2], []]  # user 2 has no earlier history: no list
    assert two.val.tolist() == [0, 3, 0] and two.test.tolist() == [0, 4, 0]
    times = lf.InteractionTimes([np.zeros(0), np.array([10.0, 20, 30, 40]), np.array([50.0, 60])],
                                np.array([0.0, 70, 80]))  # fmt: skip
    moved = times.shifted(1)
    assert [t.tolist() for t in moved.train] == [[], [10, 20, 30], [50]] and moved.val.tolist() == [0, 40, 60]
    with pytest.raises(ValueError, match="1 or more"):
        seqs.shifted(0)


def test_shifted_lists_come_from_their_shadow_and_are_counted_over_their_own_train_split(monkeypatch):
    data = retrieved(cyclic_rows(120, 40))
    n = data.ds.n_items
    shadows = {1: shadow(n, 3), 2: shadow(n, 4)}
    scored: dict[int, list[int]] = {1: [], 2: []}
    for shift, model in shadows.items():
        original = model.score
        monkeypatch.setattr(model, "score", lambda h, users=None, s=shift, f=original: scored[s].extend(
            len(x) for x in h) or f(h, users))  # fmt: skip
    checked = []
    check = lf.check_no_target_leak
    monkeypatch.setattr(lf, "check_no_target_leak", lambda t, visible, users, histories, targets: checked.append(
        (visible, np.asarray(targets))) or check(t, visible, users, histories, targets))  # fmt: skip
    ranker = make(n, **{"ltr.ltr_shifts": 2}).attach(retriever=data.retriever, shadows=shadows)
    ranker.fit(data.seqs, data.val, SETTINGS, ks=KS)

    lengths = np.array([len(s) for s in data.seqs.train[1:]])
    users = [(lengths > s).sum() for s in (1, 2)]
    assert ranker.hparams["shifts"] == [1, 2] and ranker.hparams["training_lists"] == [len(data.val), *users]
    for shift in (1, 2):  # each shadow retrieved and described the lists of its own split, nothing else
        assert sorted(set(scored[shift])) == sorted(set((lengths - shift)[lengths > shift].tolist()))
    moved = data.seqs.shifted(1)
    visible, targets = checked[1]  # validation lists, shift 1, shift 2, then the shipped tables
    assert visible.label == "train" and targets.tolist() == moved.val[1:][lengths > 1].tolist()
    assert all(np.array_equal(a, b) for a, b in zip(visible.sequences, moved.train, strict=True))
    assert len(checked) == 4


def test_a_shifted_list_counted_with_its_own_target_is_refused(monkeypatch):
    """Counting the shifted lists over the real train split (which holds every shifted target) is caught."""
    data = retrieved(cyclic_rows(120, 40))
    honest = lf.training_visible
    monkeypatch.setattr(lf, "training_visible", lambda seqs, times=None: honest(data.seqs, times))
    ranker = make(data.ds.n_items, **{"ltr.ltr_features": ["retriever", "transitions"], "ltr.ltr_shifts": 1})
    ranker.attach(retriever=data.retriever, shadows={1: shadow(data.ds.n_items, 3)})
    with pytest.raises(lf.TargetLeakError, match="among the user's counted"):
        ranker.fit(data.seqs, data.val, SETTINGS, ks=KS)


def test_the_shadows_must_be_the_shifts_asked_for():
    data = retrieved(cyclic_rows(60, 40))
    n = data.ds.n_items
    one = {1: shadow(n, 3)}
    with pytest.raises(ConfigError, match=r"shifts \[1, 2\], but the shadow retrievers attached are of shifts \[1\]"):
        make(n, **{"ltr.ltr_shifts": 2}).attach(retriever=data.retriever, shadows=one).fit(
            data.seqs, data.val, SETTINGS
        )
    with pytest.raises(ConfigError, match=r"shifts \[\], but the shadow retrievers attached are of shifts \[1\]"):
        make(n).attach(retriever=data.retriever, shadows=one).fit(data.seqs, data.val, SETTINGS)


def test_other_models_scores_are_refused_on_shifted_lists():
    data = retrieved(cyclic_rows(60, 40))
    n = data.ds.n_items
    bert = BERT4Rec(n, BERT4Rec.hyperparameters(tiny_config(**{"bert4rec.bert_hidden_size": 16,
                    "bert4rec.bert_num_blocks": 1, "bert4rec.bert_max_len": 16}), "ml-100k"))  # fmt: skip
    ranker = make(n, **{"ltr.ltr_models": ["bert4rec"], "ltr.ltr_shifts": 1})
    ranker.attach(retriever=data.retriever, models={"bert4rec": bert}, shadows={1: shadow(n, 3)})
    with pytest.raises(ConfigError, match="shifted training lists take no `models`"):
        ranker.fit(data.seqs, data.val, SETTINGS, ks=KS)


def test_too_few_validation_lists_are_learned_from_with_the_shifted_ones():
    """30 users: their validation lists alone hold too few true items for a leaf of 60 rows to find the cycle;
    with the lists of four earlier steps the ranker finds it."""
    data = retrieved(cyclic_rows(30, 40, length=(12, 18)))
    n = data.ds.n_items
    settings = {**FAST, "ltr.ltr_features": ["retriever", "transitions"], "ltr.ltr_min_data_in_leaf": 60}
    alone = make(n, **settings).attach(retriever=data.retriever)
    alone.fit(data.seqs, data.val, SETTINGS, ks=KS)
    shadows = {s: shadow(n, 10 + s) for s in (1, 2, 3, 4)}
    shifted = make(n, **settings, **{"ltr.ltr_shifts": 4}).attach(retriever=data.retriever, shadows=shadows)
    shifted.fit(data.seqs, data.val, SETTINGS, ks=KS)
    hit = data.test.hit_mask.mean()
    alone_ndcg, shifted_ndcg = (ndcg(evaluate_lists(r.score, data.test, KS)) for r in (alone, shifted))
    print(f"true item in the list {hit:.2f}; validation lists alone {alone_ndcg:.3f}; with shifted {shifted_ndcg:.3f}")
    assert shifted_ndcg > 0.9 * hit and shifted_ndcg > alone_ndcg + 0.15, (alone_ndcg, shifted_ndcg, hit)


def test_shadows_of_other_settings_than_the_champions_are_refused(tmp_path):
    """The stage trains the shadows with params.yaml's `retrieval` settings: a champion of other settings is refused,
    one of the same settings gets a shadow of its method per shift, trained on the earlier split."""
    from stages.train_rerank import shadow_retrievers

    data = retrieved(cyclic_rows(60, 40))
    champion = data.retriever  # built with tiny_config()'s LRURec settings
    with pytest.raises(ConfigError, match="hidden"):
        shadow_retrievers(tiny_config(**{"lrurec.lru_hidden_size": 48}), champion, data.seqs, None, "cpu", tmp_path,
                          "id")  # fmt: skip
    cfg = tiny_config(**{"ltr.ltr_shifts": 2, "retrieval.retrieval_epochs": 1})
    shadows, metrics = shadow_retrievers(cfg, champion, data.seqs, None, "cpu", tmp_path, "id")
    assert sorted(shadows) == [1, 2] and all(type(s) is type(champion) for s in shadows.values())
    assert set(metrics) == {"shadow1_best_epoch", "shadow2_best_epoch", f"shadow1_val_{cfg.training.monitor}",
                            f"shadow2_val_{cfg.training.monitor}"}  # fmt: skip
