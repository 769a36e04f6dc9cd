"""The learning-to-rank reranker: it learns what the retriever misses, its training lists never count their own
targets (the check catches a leaky feature, and a leaky feature is shown to fool validation), families switch off,
and a saved ranker scores (and serves) exactly what it evaluated."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import cyclic_rows, raw_dataset, tiny_config

from recsys_core.config import DataConfig
from recsys_core.data.preprocess import preprocess
from recsys_core.data.store import Sequences, save_prepared
from recsys_core.errors import ConfigError, LineageError, MissingArtifactError
from recsys_core.evaluation import split_inputs
from recsys_core.features.store import FeatureSet, embedding_file, encoder_name, items_fingerprint, save_embeddings
from recsys_core.model_base import method_of
from recsys_core.pipeline import TwoStage
from recsys_core.rerank import get_reranker_class
from recsys_core.rerank import ltr_features as lf
from recsys_core.rerank.bert4rec import BERT4Rec
from recsys_core.rerank.evaluate import evaluate_lists, list_order_result, result_from_scores
from recsys_core.rerank.ltr import LTRReranker, model_kind, newest_version
from recsys_core.retrieval.lrurec import LRURec
from recsys_core.serving import RERANKER_ARTIFACT, RerankerModel, rerank_lists
from recsys_core.training import LoopSettings, seed_everything

WIDTH = 20
KS = (1, 5, 10)
FAST = {
    "ltr.ltr_num_rounds": 60,
    "ltr.ltr_early_stopping": 10,
    "ltr.ltr_min_data_in_leaf": 5,
    "ltr.ltr_folds": 3,
    "ltr.ltr_models": [],
}
SETTINGS = LoopSettings(epochs=1, lr=0.1, patience=1, seed=5)


def random_rows(n_users: int = 240, n_items: int = 100, length: tuple[int, int] = (8, 16), seed: int = 1):
    """Users who pick items at random: no transition or popularity pattern for a ranker to find."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        items = rng.choice(n_items, size=int(rng.integers(*length)), replace=False)
        rows += [(f"u{u:04d}", f"i{i:03d}", 5.0, 1000 + t) for t, i in enumerate(items)]
    return rows


def retrieved(rows, seed: int = 1):
    """Prepared data, a (random, untrained) LRURec retriever and its top-WIDTH lists for validation and test."""
    ds = preprocess(raw_dataset(rows), DataConfig(min_uc=3, min_sc=1))
    seqs = Sequences.from_dataset(ds)
    seed_everything(seed)
    retriever = LRURec(ds.n_items, LRURec.hyperparameters(tiny_config(), "ml-100k"))
    stage1 = TwoStage(retriever, None, WIDTH, WIDTH)
    val = stage1.candidate_set(*split_inputs(seqs, "val"))
    test = stage1.candidate_set(*split_inputs(seqs, "test"))
    return SimpleNamespace(ds=ds, seqs=seqs, retriever=retriever, val=val, test=test)


def make(n_items: int, **overrides) -> LTRReranker:
    return LTRReranker(n_items, LTRReranker.hyperparameters(tiny_config(**{**FAST, **overrides}), "ml-100k"))


def ndcg(result) -> float:
    return result.all_users["ndcg_at_10"]


@pytest.fixture(scope="module")
def cyclic():
    return retrieved(cyclic_rows(240, 40))


@pytest.fixture(scope="module")
def trained(cyclic, tmp_path_factory):
    """Every family on: the retriever, a second model (an untrained BERT4Rec), counts with the prepared timestamps,
    text embeddings for most items and image embeddings for half of them."""
    ds = cyclic.ds
    prepared = tmp_path_factory.mktemp("prepared")
    save_prepared(ds, prepared)
    cfg = tiny_config(**FAST)
    rng = np.random.default_rng(0)
    for modality, share in (("text", 0.9), ("image", 0.5)):
        present = np.r_[False, rng.random(ds.n_items) < share]
        encoder = encoder_name(modality, cfg.features)
        save_embeddings(embedding_file(prepared, modality, encoder), modality, encoder,
                        rng.normal(size=(ds.n_items + 1, 8)), present, items_fingerprint(ds.items))  # fmt: skip
    features = FeatureSet(prepared, cfg.features, ds.items)
    seed_everything(2)
    bert = BERT4Rec(ds.n_items, BERT4Rec.hyperparameters(tiny_config(**{"bert4rec.bert_hidden_size": 16,
                    "bert4rec.bert_num_blocks": 1, "bert4rec.bert_max_len": 16}), "ml-100k"))  # fmt: skip
    hparams = LTRReranker.hyperparameters(tiny_config(**{**FAST, "ltr.ltr_models": ["bert4rec"]}), "ml-100k")
    ranker = LTRReranker.from_data(ds.n_items, hparams, "cpu", ds.items, features)
    ranker.attach(retriever=cyclic.retriever, models={"bert4rec": bert})
    history = ranker.fit(cyclic.seqs, cyclic.val, SETTINGS, ks=KS)
    return ranker, history


# --- it learns ------------------------------------------------------------------------------------------------------


def test_the_ranker_learns_the_transitions_the_retriever_order_misses(cyclic, trained):
    ranker, history = trained
    baseline, reranked = list_order_result(cyclic.test, KS), evaluate_lists(ranker.score, cyclic.test, KS)
    hit = cyclic.test.hit_mask
    assert 0.4 < hit.mean() < 0.9  # the lists hold the true item often, not always
    assert ndcg(baseline) < 0.3 * hit.mean() and ndcg(reranked) > 0.95 * hit.mean(), (baseline, reranked)
    assert reranked.hit_users["hit_at_1"] > 0.95
    cross_fitted = result_from_scores(ranker.cross_fitted_scores(cyclic.val), cyclic.val, KS)
    assert ndcg(cross_fitted) > 0.95 * cyclic.val.hit_mask.mean()  # an honest validation estimate, as good as test
    assert history.best_score == pytest.approx(cross_fitted.all_users["ndcg_at_10"])
    importance = ranker.feature_importance()
    assert list(importance.columns) == ["feature", "gain", "split"]
    assert set(importance["feature"]) == set(ranker.feature_names)
    assert importance["feature"].iloc[0].startswith("trans_")  # what it learned from


def test_every_family_feeds_the_ranker(trained):
    ranker, _ = trained
    names = ranker.feature_names
    for expected in ("retriever_score", "retriever_rank", "model_bert4rec", "model_bert4rec_rank", "pop_share",
                     "pop_recent_share", "trans_last", "trans_sum", "trans_max", "content_image_cos",
                     "content_text_cos", "history_length"):  # fmt: skip
        assert expected in names
    assert ranker.hparams["modalities"] == ["image", "text"]


def test_the_retriever_rank_is_the_candidates_place_in_the_retrieved_list(cyclic, trained):
    """Computed from the history alone, so it is the same whatever order the candidates arrive in (serving)."""
    ranker, _ = trained
    X = ranker.features(cyclic.test.histories[:30], cyclic.test.candidates[:30])
    rank = X[..., ranker.feature_names.index("retriever_rank")]
    assert np.array_equal(rank, np.tile(np.arange(WIDTH, dtype=np.float64), (30, 1)))
    shuffled = cyclic.test.candidates[:30, ::-1]
    again = ranker.features(cyclic.test.histories[:30], shuffled)
    np.testing.assert_array_equal(again, X[:, ::-1])


def test_the_history_records_the_cross_fitted_curve(trained, tmp_path):
    from stages.training_common import write_curves

    ranker, history = trained
    assert history.epochs and all("val_ndcg_at_10" in r and "train_ndcg_at_10" in r for r in history.epochs)
    assert history.best_epoch == ranker.hparams["rounds"] >= 1
    assert history.best_epoch in [int(r["epoch"]) for r in history.epochs]
    write_curves(history, tmp_path / "history.tsv")
    assert pd.read_csv(tmp_path / "history.tsv", sep="\t")["epoch"].tolist() == [int(r["epoch"]) for r in
                                                                                   history.epochs]  # fmt: skip


# --- families -------------------------------------------------------------------------------------------------------


def test_families_switch_off(cyclic):
    """Without transitions the ranker sees the cycle only through fingerprints (a deterministic random retriever's
    exact score values, item popularity); transitions alone see it whole and need neither retriever nor registry."""
    blind = make(cyclic.ds.n_items, **{"ltr.ltr_features": ["retriever", "popularity", "history"]})
    blind.attach(retriever=cyclic.retriever).fit(cyclic.seqs, cyclic.val, SETTINGS, ks=KS)
    assert not any(n.startswith(("trans_", "content_", "model_")) for n in blind.feature_names)
    alone = make(cyclic.ds.n_items, **{"ltr.ltr_features": ["transitions"]})
    alone.fit(cyclic.seqs, cyclic.val, SETTINGS, ks=KS)
    assert alone.feature_names == list(lf.TRANSITIONS) and alone.retriever is None
    hit = cyclic.test.hit_mask.mean()
    blind_ndcg, alone_ndcg = (ndcg(evaluate_lists(r.score, cyclic.test, KS)) for r in (blind, alone))
    assert alone_ndcg > 0.95 * hit and blind_ndcg < alone_ndcg - 0.1, (blind_ndcg, alone_ndcg, hit)


def test_the_retriever_family_needs_its_retriever(cyclic):
    with pytest.raises(MissingArtifactError, match="attach"):
        make(cyclic.ds.n_items).fit(cyclic.seqs, cyclic.val, SETTINGS, ks=KS)


def test_other_models_are_retrievers_or_rerankers_trained_on_the_train_split():
    assert model_kind("vbpr") == "retriever" and model_kind("bert4rec") == "reranker"
    with pytest.raises(ConfigError, match="in-sample"):
        model_kind("ltr")
    with pytest.raises(ConfigError, match="unknown method"):
        model_kind("sasrec")


def test_other_models_resolve_to_the_newest_version_of_this_data(tmp_path, monkeypatch):
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = mlflow.MlflowClient()
    client.create_registered_model("d-retriever")
    for method, data in (("vbpr", "aaaaaaaaaaaa"), ("vbpr", "aaaaaaaaaaaa"), ("lrurec", "aaaaaaaaaaaa"),
                         ("vbpr", "bbbbbbbbbbbb")):  # fmt: skip
        client.create_model_version("d-retriever", "file:///nowhere", tags={"method": method, "data.version": data})
    assert int(newest_version("d", "retriever", "vbpr", "aaaaaaaaaaaa").version) == 2
    with pytest.raises(MissingArtifactError, match="no mmgcn version.*recsys train-ltr-models"):
        newest_version("d", "retriever", "mmgcn", "aaaaaaaaaaaa")


def test_attach_registered_takes_the_champion_retriever_and_the_newest_models_of_this_data(tmp_path, monkeypatch):
    import mlflow

    from recsys_core import lineage, registry

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = mlflow.MlflowClient()
    client.create_registered_model("d-reranker")
    for data in ("aaaaaaaaaaaa", "aaaaaaaaaaaa", "bbbbbbbbbbbb"):
        client.create_model_version("d-reranker", "file:///nowhere", tags={"method": "bert4rec", "data.version": data})
    loaded = []

    def load_version(prefix, kind, version, prepared=None):
        loaded.append((prefix, kind, version, prepared))
        record = SimpleNamespace(name=f"{prefix}-{kind}", version=version or 7, tags={"method": "m"}, run_id="r")
        return SimpleNamespace(n_items=30), record

    monkeypatch.setattr(registry, "load_version", load_version)
    monkeypatch.setattr(lineage, "data_version", lambda prepared: "aaaaaaaaaaaa")
    ranker = make(30, **{"ltr.ltr_models": ["bert4rec"]})
    ranker.hparams["prefix"] = "d"
    ranker.attach_registered("d", tmp_path, retriever_version=3)
    assert loaded == [("d", "retriever", 3, tmp_path), ("d", "reranker", 2, tmp_path)]  # pinned; newest of this data
    assert ranker.sources["retriever"]["version"] == 3 and ranker.sources["models"]["bert4rec"]["version"] == 2
    assert ranker.model_kinds == {"bert4rec": "reranker"}
    champion = make(30, **{"ltr.ltr_features": ["retriever", "history"]})
    champion.feature_set = SimpleNamespace(prepared=tmp_path)
    champion.hparams["prefix"] = "d"
    champion._resolve()  # what fit does when nothing was attached: the champion (version None)
    assert loaded[-1] == ("d", "retriever", None, tmp_path) and champion.sources["retriever"]["version"] == 7


def test_the_importance_figure_draws_every_feature(trained, tmp_path):
    ranker, _ = trained
    figure = ranker.importance_figure()
    assert len(figure.axes[0].patches) == len(ranker.feature_names)
    figure.savefig(tmp_path / "importance.png")
    assert (tmp_path / "importance.png").stat().st_size > 0


# --- no own-target leakage ------------------------------------------------------------------------------------------


def test_the_leak_check_catches_counts_that_include_the_targets(cyclic):
    seqs, val = cyclic.seqs, cyclic.val
    n = cyclic.ds.n_items
    honest = lf.training_visible(seqs)
    lf.check_no_target_leak(lf.CountTables.build(honest, n, 0.1), honest, val.users, val.histories, val.targets)
    everything = lf.serving_visible(seqs)  # train + validation: holds every validation target
    leaky = lf.CountTables.build(everything, n, 0.1)
    with pytest.raises(lf.TargetLeakError, match="transition"):  # tables counting more than they declare
        lf.check_no_target_leak(leaky, honest, val.users, val.histories, val.targets)
    with pytest.raises(lf.TargetLeakError, match="among the user's counted"):  # declared, and still the target's own
        lf.check_no_target_leak(leaky, everything, val.users, val.histories, val.targets)
    inside = [np.append(h, t) for h, t in zip(val.histories, val.targets, strict=True)]
    with pytest.raises(lf.TargetLeakError, match="in its own history"):
        lf.check_no_target_leak(lf.CountTables.build(honest, n, 0.1), honest, val.users, inside, val.targets)


def test_fit_refuses_training_counts_that_hold_the_validation_targets(cyclic, monkeypatch):
    monkeypatch.setattr(lf, "training_visible", lf.serving_visible)
    with pytest.raises(lf.TargetLeakError):
        make(cyclic.ds.n_items, **{"ltr.ltr_features": ["transitions"]}).fit(cyclic.seqs, cyclic.val, SETTINGS)


def test_a_leaky_count_is_trusted_on_validation_and_fails_on_test(monkeypatch, tmp_path):
    """Random data: nothing to learn. Counted honestly, validation and test agree (near the list order). With the
    validation targets' own interactions and transitions in the training counts (the check switched off), the ranker
    learns to trust them: its cross-fitted validation number soars, and test, where the target is never counted,
    gets nothing of it."""
    data = retrieved(random_rows())
    features = {"ltr.ltr_features": ["popularity", "transitions"]}

    def run():  # NDCG@10 over the users whose list holds the true item (the lists' recall is the same for all)
        ranker = make(data.ds.n_items, **features)
        ranker.fit(data.seqs, data.val, SETTINGS, ks=KS)
        val = result_from_scores(ranker.cross_fitted_scores(data.val), data.val, KS).hit_users["ndcg_at_10"]
        return ranker, val, evaluate_lists(ranker.score, data.test, KS).hit_users["ndcg_at_10"]

    honest, honest_val, honest_test = run()
    honest.save(tmp_path)  # a ranker of several rounds (the cyclic one needs one) comes back tree for tree
    assert honest.hparams["rounds"] > 1
    assert torch.equal(LTRReranker.load(tmp_path).score(data.test.histories, data.test.candidates),
                       honest.score(data.test.histories, data.test.candidates))  # fmt: skip
    monkeypatch.setattr(lf, "training_visible", lf.serving_visible)
    monkeypatch.setattr(lf, "check_no_target_leak", lambda *args: None)
    leaky, leaky_val, leaky_test = run()
    order = list_order_result(data.test, KS).hit_users["ndcg_at_10"]
    print(
        f"list order {order:.3f}; honest: val {honest_val:.3f} test {honest_test:.3f}; leaky: val {leaky_val:.3f} "
        f"test {leaky_test:.3f}"
    )
    assert abs(honest_val - honest_test) < 0.08 and abs(honest_test - order) < 0.08, (honest_val, honest_test, order)
    assert leaky_val > honest_val + 0.2 and leaky_test < honest_test - 0.05, (leaky_val, leaky_test, honest_val)
    assert leaky.feature_importance()["feature"].iloc[0] in ("trans_last", "trans_last_count", "trans_sum",
                                                              "trans_max", "pop_share", "pop_recent_share")  # fmt: skip


def test_cross_fitted_scores_describe_only_the_lists_trained_on(cyclic, trained):
    ranker, _ = trained
    scores = ranker.cross_fitted_scores(cyclic.val)
    assert torch.isfinite(scores[torch.as_tensor(cyclic.val.candidates != 0)]).all()
    other = SimpleNamespace(**{**vars(cyclic.val), "candidates": cyclic.val.candidates.copy()})
    other.candidates[3, 0] = next(i for i in range(1, cyclic.ds.n_items + 1) if i not in other.candidates[3])
    with pytest.raises(LineageError, match="user"):
        ranker.cross_fitted_scores(other)


# --- counts and features on hand-made data --------------------------------------------------------------------------


def test_counts_and_transition_features_by_hand():
    seqs = [np.array([], np.int64), np.array([1, 2, 3]), np.array([1, 2, 4]), np.array([2, 3])]
    visible = lf.Visible(seqs, [np.array([1.0, 2, 3]) * 0, np.array([1.0, 2, 3]), np.array([4.0, 5, 6]),
                                np.array([7.0, 8])], "train")  # fmt: skip
    tables = lf.CountTables.build(visible, 4, 0.25)  # the newest 2 of 8 interactions: times 7 and 8 (items 2, 3)
    assert tables.popularity.tolist() == [0, 2, 3, 2, 1] and tables.recent.tolist() == [0, 0, 1, 1, 0]
    assert tables.transitions(np.array([1, 2, 2, 3]), np.array([2, 3, 4, 1])).tolist() == [2, 2, 1, 0]
    assert tables.out_count.tolist() == [0, 2, 3, 0, 0]
    cands = np.array([[3, 4, 0]])
    feats = lf.transition_features(tables, [np.array([1, 2])], cands, window=2)
    np.testing.assert_allclose(feats["trans_last"][0, :2], [2 / 3, 1 / 3])  # from 2: 2 of its 3 pairs go to 3
    np.testing.assert_allclose(feats["trans_sum"][0, :2], [2 / 3 + 0, 1 / 3 + 0])  # from 1: only to 2
    np.testing.assert_allclose(feats["trans_max"][0, :2], [2 / 3, 1 / 3])
    assert np.isnan(feats["trans_last"][0, 2])  # empty slot
    assert np.isnan(lf.transition_features(tables, [np.array([], np.int64)], cands, 2)["trans_sum"]).all()
    pop = lf.popularity_features(tables, cands)
    np.testing.assert_allclose(pop["pop_share"][0, :2], [2 / 8, 1 / 8])
    np.testing.assert_allclose(pop["pop_list_rank"][0, :2], [0, 1])


def test_content_features_by_hand():
    vectors = np.array([[0, 0], [1, 0], [0, 1], [1, 1], [5, 5]], dtype=np.float32)
    table = lf.ContentTable.from_vectors(vectors, np.array([False, True, True, True, False]))
    cos = lf.content_features({"text": table}, [np.array([1, 2]), np.array([4])], np.array([[3, 4], [1, 0]]), 10)
    np.testing.assert_allclose(cos["content_text_cos"][0], [1.0, np.nan], atol=1e-6)  # item 4 has no vector
    assert np.isnan(cos["content_text_cos"][1]).all()  # a history without vectors


def test_the_prepared_timestamps_order_recent_popularity(cyclic, tmp_path):
    save_prepared(cyclic.ds, tmp_path)
    times = lf.interaction_times(tmp_path, cyclic.seqs)
    u = 5
    inter = cyclic.ds.interactions
    mine = inter[(inter["user_id"] == u) & (inter["split"] == "train")]["timestamp"].to_numpy(np.float64)
    np.testing.assert_array_equal(times.train[u], mine)
    assert lf.interaction_times(tmp_path / "absent", cyclic.seqs) is None


# --- save, load, serve ----------------------------------------------------------------------------------------------


def test_a_saved_ranker_scores_identically_and_serves_what_was_evaluated(cyclic, trained, tmp_path):
    ranker, _ = trained
    ranker.save(tmp_path / "model")
    files = {p.relative_to(tmp_path / "model").as_posix() for p in (tmp_path / "model").rglob("*") if p.is_file()}
    assert {"config.json", "ranker.txt", "counts.safetensors", "content.safetensors", "validation.safetensors",
            "retriever/config.json", "models/bert4rec/config.json"} <= files  # fmt: skip
    assert not any(f.endswith((".pkl", ".pickle", ".pt")) for f in files)
    assert method_of(tmp_path / "model") == "ltr"
    again = get_reranker_class("ltr").load(tmp_path / "model")
    cands = cyclic.test.candidates.copy()
    cands[:, -3:] = 0  # some empty slots
    before, after = ranker.score(cyclic.test.histories, cands), again.score(cyclic.test.histories, cands)
    assert torch.equal(before, after) and torch.isneginf(after[:, -3:]).all()
    # everything behind the scores came back: every feature (NaN where missing) and every tree
    np.testing.assert_array_equal(
        ranker.features(cyclic.test.histories, cands), again.features(cyclic.test.histories, cands)
    )
    assert again.booster.model_to_string() == ranker.booster.model_to_string()
    pd.testing.assert_frame_equal(ranker.feature_importance(), again.feature_importance())
    torch.testing.assert_close(ranker.cross_fitted_scores(cyclic.val), again.cross_fitted_scores(cyclic.val))

    # The reranker's pyfunc and the two-stage pipeline answer what evaluation ranked.
    served = RerankerModel()
    served.load_context(SimpleNamespace(artifacts={RERANKER_ARTIFACT: str(tmp_path / "model")}))
    rows = list(range(8))
    request = pd.DataFrame({"history": [cyclic.test.histories[r].tolist() for r in rows],
                            "candidates": [cyclic.test.candidates[r].tolist() for r in rows]})  # fmt: skip
    answer = served.predict(None, request)
    evaluated = evaluate_lists(ranker.score, cyclic.test, KS)
    for i, r in enumerate(rows):
        assert answer["items"][i] == [int(c) for c in evaluated.order[r] if c]
    pipeline = TwoStage(cyclic.retriever, again, WIDTH, WIDTH)
    items, _ = pipeline.recommend(cyclic.test.histories[:8], WIDTH)
    assert items.tolist() == evaluated.order[:8].tolist()
    direct = rerank_lists(again, cyclic.test.histories[:2], [cyclic.test.candidates[0], cyclic.test.candidates[1]])
    assert direct["items"][0] == answer["items"][0]


def test_boosting_starts_from_the_retrievers_score_z_scored_per_list(cyclic, trained):
    """Round 0 ranks as the retriever does; the trees add corrections; switched off, boosting starts from zero."""
    ranker, _ = trained
    hist, cands = cyclic.test.histories[:40], np.array(cyclic.test.candidates[:40])
    cands[0, WIDTH // 2 :] = 0  # a short list: empty slots take no part
    X = ranker.features(hist, cands)
    margin, filled = ranker._margin(X, cands), cands != 0
    score = X[..., ranker.feature_names.index("retriever_score")]
    for row in range(len(cands)):
        z = margin[row][filled[row]]
        assert z.mean() == pytest.approx(0, abs=1e-9) and z.std() == pytest.approx(1, abs=1e-6)
        assert np.array_equal(np.argsort(-z, kind="stable"), np.argsort(-score[row][filled[row]], kind="stable"))
    assert not margin[~filled].any()
    expected = margin[filled] + ranker.booster.predict(X[filled])
    assert np.allclose(ranker.score(hist, cands).numpy()[filled], expected, atol=1e-5)
    off = make(cyclic.ds.n_items, **{"ltr.ltr_start_from_retriever": False})
    off.feature_names = ranker.feature_names
    assert not off._margin(X, cands).any()


def test_fusion_is_tuned_on_the_cross_fitted_scores_and_its_retriever_end_is_the_retrieval_order(cyclic, trained):
    from recsys_core.rerank.fusion import RETRIEVER_ORDER, fused_validation, tune_weight, validation_scores

    ranker, _ = trained
    assert torch.equal(validation_scores(ranker, cyclic.val), ranker.cross_fitted_scores(cyclic.val))
    weight, curve = tune_weight(ranker, cyclic.val, "ndcg_at_10", KS)
    cross_fitted = result_from_scores(ranker.cross_fitted_scores(cyclic.val), cyclic.val, KS)
    assert curve[0.0] == pytest.approx(ndcg(cross_fitted))  # weight 0: the ranker's own out-of-fold order
    assert curve[weight] == max(curve.values())
    at_retrieval = result_from_scores(fused_validation(ranker, cyclic.val, RETRIEVER_ORDER), cyclic.val, KS)
    assert ndcg(at_retrieval) == pytest.approx(ndcg(list_order_result(cyclic.val, KS)))
