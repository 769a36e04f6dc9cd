"""VBPR, MMGCN, BM3: the graph they share, learning from item features where ids cannot tell, save/load, scoring
without a user, and what happens when a modality is missing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_config

from recsys_core.data.store import Sequences
from recsys_core.errors import MissingArtifactError
from recsys_core.evaluation import evaluate_full_ranking, mask_history, split_inputs
from recsys_core.features.store import (
    FeatureSet,
    FeatureTable,
    embedding_file,
    encoder_name,
    items_fingerprint,
    save_embeddings,
)
from recsys_core.retrieval import RETRIEVERS
from recsys_core.retrieval.base import RetrievalData
from recsys_core.retrieval.collaborative import GraphCache, bipartite_edges, normalised_adjacency
from recsys_core.training import LoopSettings, seed_everything

CLUSTERS, HEAD, TAIL, USERS, DIM = 4, 8, 12, 160, 16
N_ITEMS = CLUSTERS * (HEAD + TAIL)
# MMGCN with one layer: with two, the id embeddings dominate on this small graph (measured: real features ahead of
# pure noise by 0.03-0.24 Recall@10 over three data seeds, against about 0.5 with one layer).
OVERRIDES = {"vbpr": {}, "mmgcn": {"mmgcn.mmgcn_layers": 1}, "bm3": {}}


# ---- data -----------------------------------------------------------------------------------------------------------
def clustered_task(seed: int = 0):
    """Items in 4 hidden clusters of 8 head items (what users mostly have) and 12 tail items (in 10% of the users'
    train sequences, else never); each user keeps to one cluster, and the validation and test items are tail items of
    it. Features = cluster centroid + noise, so only the features say which tail items belong to a user."""
    rng = np.random.default_rng(seed)
    per = HEAD + TAIL
    n_items = CLUSTERS * per
    cluster = np.r_[-1, np.repeat(np.arange(CLUSTERS), per)]
    tail = np.r_[False, np.tile(np.r_[np.zeros(HEAD, bool), np.ones(TAIL, bool)], CLUSTERS)]
    train, val, test = [np.zeros(0, np.int64)], [0], [0]
    for u in range(USERS):
        c = u % CLUSTERS
        seq = list(rng.choice(np.flatnonzero((cluster == c) & ~tail), int(rng.integers(5, 9)), replace=False))
        tails = np.flatnonzero((cluster == c) & tail)
        if rng.random() < 0.1:
            seq.append(int(rng.choice(tails)))
        v, t = rng.choice(np.setdiff1d(tails, seq), 2, replace=False)
        train.append(np.array(seq, np.int64))
        val.append(v)
        test.append(t)
    centroids = rng.normal(size=(CLUSTERS, DIM))

    def view() -> np.ndarray:
        vectors = centroids[cluster.clip(min=0)] + 0.5 * rng.normal(size=(n_items + 1, DIM))
        vectors[0] = 0
        return vectors.astype(np.float32)

    return Sequences(train, np.array(val), np.array(test)), {"image": view(), "text": view()}, cluster


def write_features(folder: Path, n_items: int, vectors: dict[str, np.ndarray]) -> FeatureSet:
    """Embedding files as the embeddings stage writes them; every 10th item has no text."""
    items = pd.DataFrame({"item_id": np.arange(1, n_items + 1), "raw_id": [f"i{i}" for i in range(1, n_items + 1)]})
    cfg = tiny_config().features
    for modality, v in vectors.items():
        present = np.arange(n_items + 1) > 0
        if modality == "text":
            present &= np.arange(n_items + 1) % 10 != 0
        name = encoder_name(modality, cfg)
        save_embeddings(embedding_file(folder, modality, name), modality, name, v, present, items_fingerprint(items))
    return FeatureSet(folder, cfg, items)


def noise_like(vectors: dict[str, np.ndarray], seed: int = 99) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {m: rng.normal(size=v.shape).astype(np.float32) for m, v in vectors.items()}


def build(method: str, seqs: Sequences, features: FeatureSet | None, **overrides):
    cls = RETRIEVERS[method]
    seed_everything(7)
    hparams = cls.hyperparameters(tiny_config(**{**OVERRIDES[method], **overrides}), "beauty")
    return cls.from_data(N_ITEMS, hparams, "cpu", RetrievalData(seqs, features))


def train(retriever, seqs: Sequences, epochs: int = 30):
    settings = LoopSettings(epochs=epochs, lr=0.01, patience=10, batch_size=256, seed=7)
    return retriever.fit(seqs, settings, ks=(10,))


def held_out_metrics(score, seqs: Sequences) -> dict[str, float]:
    return evaluate_full_ranking(score, *split_inputs(seqs, "test"), ks=(10,)).metrics


@pytest.fixture(scope="module")
def task():
    return clustered_task()


@pytest.fixture(scope="module")
def trained(task, tmp_path_factory):
    """One model per method trained on the clustered task with its real features (shared by several tests)."""
    seqs, vectors, _ = task
    models = {}

    def get(method: str):
        if method not in models:
            features = write_features(tmp_path_factory.mktemp(method), N_ITEMS, vectors)
            models[method] = build(method, seqs, features)
            train(models[method], seqs)
        return models[method]

    return get


# ---- the graph ----------------------------------------------------------------------------------------------------
def test_normalised_adjacency_on_a_hand_made_graph():
    # user 1 has items 1, 2; user 2 has items 2, 3; item 4 is never in train. Nodes: u1 u2 i1 i2 i3 i4.
    seqs = Sequences([np.zeros(0, np.int64), np.array([1, 2]), np.array([2, 3])], np.zeros(3), np.zeros(3))
    edges = bipartite_edges(seqs)
    assert edges.shape == (2, 8)
    a = 2**-0.5
    sym = [[0, 0, a, 0.5, 0, 0],
           [0, 0, 0, 0.5, a, 0],
           [a, 0, 0, 0, 0, 0],
           [0.5, 0.5, 0, 0, 0, 0],
           [0, a, 0, 0, 0, 0],
           [0, 0, 0, 0, 0, 0]]  # fmt: skip
    mean = [[0, 0, 0.5, 0.5, 0, 0],
            [0, 0, 0, 0.5, 0.5, 0],
            [1, 0, 0, 0, 0, 0],
            [0.5, 0.5, 0, 0, 0, 0],
            [0, 1, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0]]  # fmt: skip
    add = [[0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 0], [1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0],
           [0, 0, 0, 0, 0, 0]]  # fmt: skip
    for kind, expected in (("sym", sym), ("mean", mean), ("add", add)):
        dense = normalised_adjacency(edges, 6, kind).to_dense()
        torch.testing.assert_close(dense, torch.tensor(expected, dtype=torch.float32), msg=kind)
    with pytest.raises(ValueError, match="sym, mean or add"):
        normalised_adjacency(edges, 6, "rw")


def test_graph_cache_rebuilds_when_the_edges_change():
    edges = torch.tensor([[0, 2], [2, 0]])
    cache = GraphCache("mean", 3)
    first = cache(edges)
    assert cache(edges) is first
    edges.copy_(torch.tensor([[1, 2], [2, 1]]))  # what load_state_dict and bind do
    assert cache(edges).to_dense()[1, 2] == 1 and cache(edges) is not first


# ---- learning -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["vbpr", "mmgcn"])
def test_learns_from_the_features_where_ids_cannot_tell(method, task, trained, tmp_path):
    """The held-out items are cold or rare: the same model fed pure-noise features is far behind."""
    seqs, vectors, _ = task
    real = held_out_metrics(trained(method).score, seqs)
    blind = build(method, seqs, write_features(tmp_path, N_ITEMS, noise_like(vectors)))
    train(blind, seqs)
    base = held_out_metrics(blind.score, seqs)
    # measured Recall@10 / NDCG@10: VBPR 0.80 / 0.33 vs 0.10 / 0.04; MMGCN 0.75 / 0.30 vs 0.21 / 0.11
    for metric in ("recall_at_10", "ndcg_at_10"):
        assert real[metric] > 1.5 * base[metric] + 0.05, (metric, real, base)
    assert real["recall_at_10"] > 0.5, real


def test_bm3_beats_popularity(task, trained):
    """BM3 scores from its graph and id embeddings (the features shape its predictor through the alignment losses),
    so the features-blind baseline here is popularity, which cannot place the rare tail items at all."""
    seqs, vectors, _ = task
    model = trained("bm3")
    real = held_out_metrics(model.score, seqs)
    popularity = torch.as_tensor(np.bincount(np.concatenate(seqs.train), minlength=N_ITEMS + 1), dtype=torch.float32)
    base = held_out_metrics(lambda histories, users: popularity.expand(len(histories), -1).clone(), seqs)
    for metric in ("recall_at_10", "ndcg_at_10"):  # measured: 0.37 / 0.17 vs 0.0 / 0.0
        assert real[metric] - base[metric] > 0.1, (metric, real, base)
    histories = split_inputs(seqs, "test")[0]
    chance = np.mean([10 / (N_ITEMS - len(h)) for h in histories])  # about 0.14
    assert real["recall_at_10"] > 2 * chance, (real, chance)


# ---- save, load, scoring without a user -------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["vbpr", "mmgcn", "bm3"])
def test_save_and_load_give_identical_scores(method, task, trained, tmp_path):
    seqs, _, _ = task
    model = trained(method)
    model.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"model.safetensors", "config.json"}
    again = RETRIEVERS[method].load(tmp_path)
    users = np.arange(1, 21)
    histories = [seqs.train[u] for u in users]
    torch.testing.assert_close(model.score(histories, users), again.score(histories, users), rtol=0, atol=0)
    torch.testing.assert_close(model.score(histories), again.score(histories), rtol=0, atol=0)
    assert again.hparams == model.hparams


@pytest.mark.parametrize("method", ["vbpr", "mmgcn", "bm3"])
def test_a_history_without_a_user_ranks_its_cluster_first(method, task, trained):
    _, _, cluster = task
    model = trained(method)
    histories = [np.flatnonzero(cluster == c)[:4] for c in range(CLUSTERS)]
    scores = mask_history(model.score(histories), histories)
    assert scores.shape == (CLUSTERS, len(cluster))
    top = scores.topk(5, dim=1).indices.numpy()
    share = np.mean([(cluster[items] == c).mean() for c, items in enumerate(top)])
    assert (cluster[top[:, 0]] == np.arange(CLUSTERS)).all() and share >= 0.8, top
    empty = model.score([np.zeros(0, np.int64)])  # no history: only what the item biases say
    assert torch.isfinite(empty[:, 1:]).all()


# ---- serving = evaluation ---------------------------------------------------------------------------------------
def served_models(retriever, folder: Path, fusion_weight=1.0):
    """The retriever and two-stage pyfuncs, loaded as MLflow loads them (load_context on saved artifacts), around
    ``retriever`` and a tiny untrained BERT4Rec storing ``fusion_weight``."""
    import json
    from types import SimpleNamespace

    from recsys_core.rerank.bert4rec import BERT4Rec
    from recsys_core.serving import RetrieverModel, TwoStageModel

    seed_everything(3)
    cfg = tiny_config(**{"bert4rec.bert_hidden_size": 16, "bert4rec.bert_num_blocks": 1, "bert4rec.bert_max_len": 16})
    reranker = BERT4Rec(N_ITEMS, {**BERT4Rec.hyperparameters(cfg, "beauty"), "fusion_weight": fusion_weight})
    retriever.save(folder / "retriever")
    reranker.save(folder / "reranker")
    pd.DataFrame({"item_id": np.arange(1, N_ITEMS + 1), "title": [f"t{i}" for i in range(1, N_ITEMS + 1)]}).to_parquet(
        folder / "items.parquet"
    )
    (folder / "settings.json").write_text(json.dumps({"retrieval_top_k": 20, "rerank_top_k": 10}))
    context = SimpleNamespace(artifacts={"retriever": str(folder / "retriever"), "reranker": str(folder / "reranker"),
                                         "items": str(folder / "items.parquet"),
                                         "settings": str(folder / "settings.json")})  # fmt: skip
    served_retriever, two_stage = RetrieverModel(), TwoStageModel()
    served_retriever.load_context(context)
    two_stage.load_context(context)
    return served_retriever, two_stage


@pytest.mark.parametrize("method", ["vbpr", "mmgcn"])
def test_a_request_with_user_id_gets_what_evaluation_computed(method, task, trained, tmp_path):
    """evaluate_pipeline's path (TwoStage.candidate_set with every test user's id, then the fused reranking) and the
    served two-stage model asked with a user's test history and user_id give the same lists and scores; without the
    user_id the served model folds the history in, which gives other lists."""
    from recsys_core.pipeline import TwoStage
    from recsys_core.rerank.evaluate import evaluate_lists

    seqs, _, _ = task
    retriever, two_stage = served_models(trained(method), tmp_path)
    pipeline = two_stage.pipeline
    assert isinstance(pipeline, TwoStage) and pipeline.reranker.hparams["fusion_weight"] == 1.0
    histories, targets, users = split_inputs(seqs, "test")
    cset = pipeline.candidate_set(histories, targets, users)
    evaluated = evaluate_lists(pipeline.reranker.score, cset, ks=(10,), fusion_weight=1.0)
    full = evaluate_full_ranking(pipeline.retriever.score, histories, targets, users, ks=(10,), keep_top=10)

    rows = np.arange(0, len(users), 7)  # a spread of users
    request = pd.DataFrame({"history": [histories[r].tolist() for r in rows], "k": 10,
                            "user_id": [int(users[r]) for r in rows]})  # fmt: skip
    answer = two_stage.predict(None, request)
    for row, items, scores in zip(rows, answer["items"], answer["scores"], strict=True):
        assert items == evaluated.order[row, :10].tolist()
        np.testing.assert_allclose(scores, evaluated.scores[row, :10], rtol=1e-5, atol=1e-5)
    ranked = retriever.predict(None, request)
    assert [list(i) for i in ranked["items"]] == full.top_items[rows].tolist()

    folded = two_stage.predict(None, request.drop(columns="user_id"))
    differ = sum(a != b for a, b in zip(folded["items"], answer["items"], strict=True))
    assert differ >= len(rows) // 2, (differ, len(rows))  # fold-in is another query vector: other lists
    mixed = request.astype({"user_id": object})
    mixed.loc[1, "user_id"] = None  # one row without a user: that row alone folds in
    both = two_stage.predict(None, mixed)
    assert both["items"][1] == folded["items"][1] and both["items"][0] == answer["items"][0]


def test_the_logged_two_stage_model_takes_user_ids_with_nulls(task, trained, tmp_path, monkeypatch):
    """Through MLflow's own schema check: a user_id column with a null (pandas makes it float with NaN, which a
    ``long`` column would reject) is accepted, and each row gets what the unlogged model gives."""
    import mlflow

    from recsys_core.serving import log_two_stage

    seqs, _, _ = task
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    _, direct = served_models(trained("vbpr"), tmp_path)
    # Artifacts in tmp_path too (the default experiment would write them to ./mlruns of the repository).
    experiment = mlflow.create_experiment("nulls", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        info = log_two_stage(tmp_path / "retriever", tmp_path / "reranker", tmp_path / "items.parquet",
                             tmp_path / "settings.json", seqs.train[1].tolist(), [])  # fmt: skip
    logged = mlflow.pyfunc.load_model(info.model_uri)
    request = pd.DataFrame.from_records([{"history": seqs.train[u].tolist(), "k": 5, "user_id": u} for u in (1, 2)]
                                        + [{"history": seqs.train[3].tolist(), "k": 5}])  # fmt: skip
    assert request["user_id"].isna().tolist() == [False, False, True]
    answer = logged.predict(request)
    assert answer["items"].tolist() == direct.predict(None, request)["items"].tolist()


def test_an_unknown_user_id_is_an_error_naming_the_range(task, trained, tmp_path):
    seqs, _, _ = task
    retriever, two_stage = served_models(trained("vbpr"), tmp_path)
    n_users = len(seqs.train) - 1
    for model in (retriever, two_stage):
        for bad in (n_users + 1, 0):
            request = pd.DataFrame({"history": [[1, 2]], "user_id": [bad]})
            with pytest.raises(ValueError, match=rf"user_id.*{bad}.*" if bad else r"integer >= 1"):
                model.predict(None, request)
    with pytest.raises(ValueError, match=rf"{n_users + 1}.*1\.\.{n_users}"):
        two_stage.predict(None, pd.DataFrame({"history": [[1, 2]], "user_id": [n_users + 1]}))
    with pytest.raises(ValueError, match="integer >= 1"):
        two_stage.predict(None, pd.DataFrame({"history": [[1, 2]], "user_id": ["u1"]}))


# ---- modalities ---------------------------------------------------------------------------------------------------
def test_vbpr_asks_for_text_when_the_images_are_missing(task, tmp_path):
    seqs, vectors, _ = task
    text_only = write_features(tmp_path, N_ITEMS, {"text": vectors["text"]})
    with pytest.raises(MissingArtifactError, match=r"embeddings stage.*use text"):
        build("vbpr", seqs, text_only, **{"vbpr.vbpr_feature": "image"})
    assert build("vbpr", seqs, text_only).hparams["modalities"] == ["text"]  # auto
    both = write_features(tmp_path / "both", N_ITEMS, vectors)
    assert build("vbpr", seqs, both).hparams["modalities"] == ["image"]  # auto prefers the paper's feature
    with pytest.raises(MissingArtifactError, match="embeddings"):
        build("vbpr", seqs, None)


@pytest.mark.parametrize("method", ["mmgcn", "bm3"])
def test_graph_models_run_with_text_only(method, task, tmp_path):
    seqs, vectors, _ = task
    model = build(method, seqs, write_features(tmp_path, N_ITEMS, {"text": vectors["text"]}))
    assert model.hparams["modalities"] == ["text"] and model.hparams["feature_dims"] == {"text": DIM}
    history = train(model, seqs, epochs=2)
    assert len(history.epochs) == 2 and np.isfinite(history.epochs[-1]["train_loss"])
    scores = model.score([seqs.train[1]], np.array([1]))
    assert scores.shape == (1, N_ITEMS + 1) and torch.isfinite(scores).all()
    both = build(method, seqs, write_features(tmp_path / "both", N_ITEMS, vectors))
    assert both.hparams["modalities"] == ["image", "text"]


def test_items_without_a_feature_get_zeros(task, tmp_path):
    seqs, vectors, _ = task
    model = build("vbpr", seqs, write_features(tmp_path, N_ITEMS, {"text": vectors["text"]}))
    present = torch.ones(N_ITEMS + 1, dtype=torch.bool)
    present[[0, 3, 7]] = False
    model.bind(seqs, {"text": FeatureTable("text", "x", torch.ones(len(present), DIM), present)})
    f = model.model.features_text
    assert (f[[0, 3, 7]] == 0).all() and (f[present] == 1).all()


# ---- model details ------------------------------------------------------------------------------------------------
def test_vbpr_score_is_the_papers_formula(task, tmp_path):
    seqs, vectors, _ = task
    model = build("vbpr", seqs, write_features(tmp_path, N_ITEMS, vectors))
    m = model.model
    with torch.no_grad():
        m.item_bias.normal_()
        m.visual_bias.normal_()
    u, i = 5, 17
    f = m.features_image[i]
    expected = (m.item_bias[i] + m.gamma_user[u] @ m.gamma_item[i] + m.theta_user[u] @ (m.embed.weight @ f)
                + m.visual_bias @ f)  # fmt: skip
    got = model.score([seqs.train[u]], np.array([u]))[0, i]
    torch.testing.assert_close(got, expected.detach(), rtol=1e-5, atol=1e-5)


def test_mmgcn_preferences_and_id_embeddings_are_learned(task, tmp_path):
    seqs, vectors, _ = task
    model = build("mmgcn", seqs, write_features(tmp_path, N_ITEMS, vectors))
    m = model.model
    learned = [m.id_embedding] + [gcn.preference for gcn in m.gcns.values()]
    assert len(learned) == 3
    params = {id(p) for p in m.parameters()}
    assert all(id(p) in params and p.requires_grad for p in learned)
    batch = (
        torch.tensor([1, 2, 3]),
        torch.tensor([int(seqs.train[u][0]) for u in (1, 2, 3)]),
        torch.tensor([9, 29, 49]),
    )
    model.loss(batch).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in learned)
    assert not any(k.startswith("graph") or "adj" in k for k in m.state_dict())  # the adjacency is rebuilt, not saved


def test_bm3_feature_tables_start_from_the_features_and_train(task, tmp_path):
    seqs, vectors, _ = task
    model = build("bm3", seqs, write_features(tmp_path, N_ITEMS, vectors))
    table = model.model.feature_tables["image"]
    torch.testing.assert_close(table.detach(), torch.as_tensor(vectors["image"][1:]))
    assert table.requires_grad and not model.uses_negatives
    before = table.detach().clone()
    train(model, seqs, epochs=1)
    assert not torch.equal(before, model.model.feature_tables["image"].detach())
