"""EASE: the closed form against column-by-column ridge regressions, it learns which items go together, the history
decay by hand, save/load, scoring without a user, its one-"epoch" history, the catalogue limit, and its scores as an
ltr feature."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_config

from recsys_core.data.store import Sequences
from recsys_core.errors import ConfigError
from recsys_core.evaluation import evaluate_full_ranking, split_inputs
from recsys_core.rerank import ltr_features as lf
from recsys_core.rerank.ltr import LTRReranker, model_kind
from recsys_core.retrieval import RETRIEVERS
from recsys_core.retrieval.ease import EASE, MAX_ITEMS, interaction_matrix, solve
from recsys_core.training import LoopSettings

CLUSTERS, PER_CLUSTER, USERS = 3, 10, 90
N_ITEMS = CLUSTERS * PER_CLUSTER
SETTINGS = LoopSettings(epochs=1, lr=0.0, patience=1)


def clustered(seed: int = 0) -> Sequences:
    """Each user takes 8 items of one cluster in random order: the last two are validation and test."""
    rng = np.random.default_rng(seed)
    train, val, test = [np.zeros(0, np.int64)], [0], [0]
    for u in range(USERS):
        items = 1 + (u % CLUSTERS) * PER_CLUSTER + rng.permutation(PER_CLUSTER)[:8]
        train.append(items[:-2].astype(np.int64))
        val.append(items[-2])
        test.append(items[-1])
    return Sequences(train, np.array(val), np.array(test))


def make(n_items: int = N_ITEMS, **overrides) -> EASE:
    return EASE(n_items, EASE.hyperparameters(tiny_config(**overrides), "ml-100k"))


def test_the_solution_is_each_items_ridge_regression_on_the_others():
    """Column j of B minimises ||X_j - X_{-j} b||² + λ||b||² (Steck's constrained problem, diag(B) = 0): solved
    here one column at a time with the other items as regressors, independently of the closed form."""
    rng = np.random.default_rng(3)
    train = [np.zeros(0, np.int64)] + [1 + rng.choice(7, size=int(rng.integers(1, 6)), replace=False)
                                       for _ in range(25)]  # fmt: skip
    X = interaction_matrix(train, 7).toarray()
    assert X.shape == (26, 8) and X[:, 0].sum() == 0 and X.sum() == sum(len(h) for h in train)
    reg = 2.5
    B = solve(interaction_matrix(train, 7), reg)
    for j in range(1, 8):
        others = [i for i in range(1, 8) if i != j]
        A = X[:, others]
        expected = np.linalg.solve(A.T @ A + reg * np.eye(len(others)), A.T @ X[:, j])
        np.testing.assert_allclose(B[others, j], expected, rtol=1e-4, atol=1e-6)
    assert np.all(np.diag(B) == 0) and np.all(B[0] == 0) and np.all(B[:, 0] == 0)


def test_a_repeated_item_counts_once():
    X = interaction_matrix([np.zeros(0, np.int64), np.array([2, 2, 3])], 3).toarray()
    np.testing.assert_array_equal(X, [[0, 0, 0, 0], [0, 0, 1, 1]])


def test_it_learns_which_items_go_together():
    seqs = clustered()
    model = make()
    calls = []
    history = model.fit(seqs, SETTINGS, callbacks=[lambda epoch, record: calls.append(epoch)], ks=(10,))
    assert history.best_epoch == 1 and len(history.epochs) == 1 and calls == [1]
    record = history.epochs[0]
    assert history.best_score == record["val_ndcg_at_10"]
    learned = evaluate_full_ranking(model.score, *split_inputs(seqs, "test"), ks=(10,)).metrics
    untrained = evaluate_full_ranking(make().score, *split_inputs(seqs, "test"), ks=(10,)).metrics
    # At test time 3 items of the user's cluster are unseen, the true one among them: the top 10 holds all 3.
    assert learned["recall_at_10"] == 1.0 and untrained["ndcg_at_10"] < 0.5 * learned["ndcg_at_10"], (
        learned,
        untrained,
    )


def test_the_history_decay_weighs_the_item_k_steps_before_the_last_by_decay_to_the_k():
    seqs = clustered()
    flat, decayed = make(), make(**{"ease.ease_history_decay": 0.5})
    flat.fit(seqs, SETTINGS, ks=(10,))
    decayed.fit(seqs, SETTINGS, ks=(10,))
    B = flat.model.weights
    torch.testing.assert_close(decayed.model.weights, B)
    history = np.array([4, 12, 7])
    torch.testing.assert_close(flat.score([history])[0], B[4] + B[12] + B[7])
    torch.testing.assert_close(decayed.score([history])[0], 0.25 * B[4] + 0.5 * B[12] + B[7])


def test_save_and_load_give_identical_scores_with_or_without_users(tmp_path):
    seqs = clustered()
    model = make(**{"ease.ease_lambda": 50.0})
    model.fit(seqs, SETTINGS, ks=(10,))
    model.save(tmp_path)
    again = RETRIEVERS["ease"].load(tmp_path)
    histories = [seqs.train[u] for u in range(1, 11)] + [np.zeros(0, np.int64)]
    torch.testing.assert_close(model.score(histories), again.score(histories), rtol=0, atol=0)
    torch.testing.assert_close(model.score(histories, np.arange(1, 12)), again.score(histories), rtol=0, atol=0)
    assert again.hparams == {"reg": 50.0, "history_decay": 1.0}
    assert torch.all(again.score([np.zeros(0, np.int64)]) == 0)  # no history, no evidence


def test_a_catalogue_too_large_to_solve_is_refused_with_the_memory_it_needs():
    with pytest.raises(ConfigError, match=r"40,001 items .* GB"):
        make(MAX_ITEMS + 1)


def test_its_scores_are_an_ltr_feature():
    seqs = clustered()
    ease = make()
    ease.fit(seqs, SETTINGS, ks=(10,))
    assert model_kind("ease") == "retriever"
    cfg = tiny_config(**{"ltr.ltr_features": ["models"], "ltr.ltr_models": ["ease"]})
    ranker = LTRReranker(N_ITEMS, LTRReranker.hyperparameters(cfg, "ml-100k")).attach(models={"ease": ease})
    ranker.feature_names = lf.feature_names(ranker.families, ["ease"], [])  # what fit sets
    histories = [seqs.train[1], seqs.train[2]]
    candidates = np.array([[1, 2, 3, 0], [11, 12, 13, 14]])
    features = ranker.features(histories, candidates)
    column = ranker.feature_names.index("model_ease")
    expected = ease.score(histories).gather(1, torch.as_tensor(candidates)).double().numpy()
    np.testing.assert_allclose(features[:, :3, column], expected[:, :3], rtol=1e-6)
    assert np.isnan(features[0, 3]).all()  # an empty slot


# --- the train_ltr_models stage: EASE registered, then read by the ltr reranker through the registry --------------------

STAGE_FLAGS = ["--dataset_code", "custom", "--custom_interactions", "mine.csv", "--min_uc", "3", "--min_sc", "1",
               "--rerank_eval_candidates", "5", "--rerank_top_k", "10", "--retrieval_top_k", "20", "--lru_hidden_size", "16",
               "--lru_num_blocks", "1", "--lru_max_len", "16", "--batch_size_retrieval", "32", "--retrieval_epochs", "2",
               "--device", "cpu", "--ltr_num_rounds", "20", "--ltr_folds", "2", "--ltr_min_data_in_leaf", "5"]  # fmt: skip
LTR_MODELS = "experiments/ltr_models/custom/seed42"


@pytest.mark.slow
def test_the_stage_registers_the_ltr_models_and_the_ranker_reads_them(workdir, monkeypatch):
    import json

    import pandas as pd
    from conftest import cyclic_rows

    from stages import cli

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workdir}/mlflow.db")
    monkeypatch.setenv("RECSYS_PROJECT_ROOT", str(workdir))
    pd.DataFrame(cyclic_rows(80, 30), columns=["user", "item", "rating", "timestamp"]).to_csv("mine.csv", index=False)
    assert cli.main(["data-prepare", *STAGE_FLAGS]) == 0
    assert cli.main(["train-retrieval", *STAGE_FLAGS]) == 0
    assert cli.main(["promote", "retriever", *STAGE_FLAGS]) == 0

    # Not the ltr reranker: nothing is trained, and the stage still leaves its (empty) record for DVC.
    assert cli.main(["train-ltr-models", *STAGE_FLAGS, "--rerank_method", "bert4rec"]) == 0
    assert json.loads((workdir / LTR_MODELS / "registered.json").read_text()) == {"models": {}}

    # ltr with EASE and BERT4Rec as feature models: EASE is trained and registered, the reranker is left to its stage.
    flags = [*STAGE_FLAGS, "--rerank_method", "ltr", "--ltr_models", "ease", "bert4rec"]
    assert cli.main(["train-ltr-models", *flags]) == 0
    registered = json.loads((workdir / LTR_MODELS / "registered.json").read_text())["models"]
    assert list(registered) == ["ease"] and registered["ease"]["version"] == 2  # after the champion LRURec
    import mlflow

    client = mlflow.MlflowClient()
    name = registered["ease"]["name"]
    assert int(client.get_model_version_by_alias(name, "candidate").version) == 1  # not up for stage 1's promotion
    assert client.get_model_version(name, "2").tags["method"] == "ease"
    ease = workdir / LTR_MODELS / "ease"
    assert json.loads((ease / "config.json").read_text())["method"] == "ease" and not (ease / "checkpoint").exists()

    assert cli.main(["train-rerank", *STAGE_FLAGS, "--rerank_method", "ltr", "--ltr_models", "ease"]) == 0
    saved = json.loads((workdir / "experiments/rerank/ltr/custom/seed42/model/config.json").read_text())
    assert saved["sources"]["models"]["ease"]["version"] == 2 and saved["model_kinds"] == {"ease": "retriever"}
    assert {"model_ease", "model_ease_rank"} <= set(saved["feature_names"])
    assert (workdir / "experiments/rerank/ltr/custom/seed42/model/models/ease/model.safetensors").exists()
