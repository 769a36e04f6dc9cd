"""Lineage end to end on a temporary MLflow store: two filter settings of one dataset keep their own champions, a
champion of other prepared data is refused by the stages that would use it (naming both data versions) and gives
way at the next promotion, and a rerun that trains nothing registers no duplicate."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import cyclic_rows

from recsys_core import lineage
from stages import cli

pytestmark = pytest.mark.slow

FAST = ["--dataset_code", "custom", "--custom_interactions", "mine.csv", "--min_sc", "1",
        "--rerank_eval_candidates", "5", "--rerank_top_k", "10", "--retrieval_top_k", "20", "--lru_hidden_size", "16",
        "--lru_num_blocks", "1", "--lru_max_len", "16", "--batch_size_retrieval", "32", "--device", "cpu",
        "--retrieval_epochs", "2", "--retrieval_lr", "0.01", "--bert_hidden_size", "16", "--bert_num_blocks", "1",
        "--bert_max_len", "16", "--rerank_epochs", "1", "--rerank_batch_size", "32",
        # ltr without other models' scores: these tests are about the retriever's lineage
        "--ltr_features", "retriever", "popularity", "transitions", "content", "history"]  # fmt: skip
A, B = ["--min_uc", "3"], ["--min_uc", "4"]
NAME_A, NAME_B = "custom_min_rating0-min_uc3-min_sc1", "custom_min_rating0-min_uc4-min_sc1"
EXP = "experiments/retrieval/lrurec/custom/seed42"


@pytest.fixture
def store(workdir, monkeypatch):
    uri = f"sqlite:///{workdir}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("RECSYS_PROJECT_ROOT", str(workdir))
    import mlflow

    # This test's store by name: an earlier test's `mlflow.set_tracking_uri` would otherwise win over the variable.
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def write_log(n_users: int) -> None:
    rows = cyclic_rows(n_users, 30, (3, 9))
    pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"]).to_csv("mine.csv", index=False)


def train_and_promote(setting: list[str]) -> None:
    assert cli.main(["data-prepare", *FAST, *setting]) == 0
    assert cli.main(["train-retrieval", *FAST, *setting]) == 0
    assert cli.main(["promote", "retriever", *FAST, *setting]) == 0


def champion(store, name: str):
    return store.get_model_version_by_alias(name, "champion")


def test_two_filter_settings_keep_their_own_champions(store, workdir, caplog):
    write_log(80)
    train_and_promote(A)
    train_and_promote(B)
    a, b = champion(store, f"{NAME_A}-retriever"), champion(store, f"{NAME_B}-retriever")
    assert str(a.version) == str(b.version) == "1"  # two registered models, one version each, each its own champion
    assert a.tags[lineage.PREPARED_TAG] == NAME_A and b.tags[lineage.PREPARED_TAG] == NAME_B
    assert a.tags[lineage.DATA_VERSION_TAG] == lineage.data_version(workdir / "data/preprocessed" / NAME_A)
    assert a.tags[lineage.DATA_VERSION_TAG] != b.tags[lineage.DATA_VERSION_TAG]
    assert a.tags[lineage.PROTOCOL_TAG] == "full ranking" and a.tags[lineage.FINGERPRINT_TAG]
    # Their numbers do not pair: other data, other users.
    caplog.clear()
    assert cli.main(["compare", f"{NAME_A}-retriever@champion", f"{NAME_B}-retriever/1"]) == 1
    assert "numbers of different data do not pair" in caplog.text
    # Each setting's reranker trains on its own champion's lists.
    assert cli.main(["train-rerank", *FAST, *A]) == 0
    rerank = store.get_model_version(f"{NAME_A}-reranker", "1")
    assert rerank.tags["retriever.name"] == f"{NAME_A}-retriever"
    assert rerank.tags[lineage.PROTOCOL_TAG] == f"retrieval: top 10 of {NAME_A}-retriever v1"


def test_a_champion_of_other_data_is_refused_then_replaced(store, workdir, caplog):
    write_log(80)
    train_and_promote(A)
    old = champion(store, f"{NAME_A}-retriever").tags[lineage.DATA_VERSION_TAG]
    write_log(70)  # the same setting on other raw data: other users, another split
    assert cli.main(["data-prepare", *FAST, *A]) == 0
    new = lineage.data_version(workdir / "data/preprocessed" / NAME_A)
    assert new != old
    caplog.clear()
    assert cli.main(["train-rerank", *FAST, *A]) == 1
    assert "belongs to other data" in caplog.text and old in caplog.text and new in caplog.text
    assert "dvc repro train_retrieval" in caplog.text

    # A retriever of the new data replaces the stale champion whatever its metric.
    assert cli.main(["train-retrieval", *FAST, *A]) == 0
    assert cli.main(["promote", "retriever", *FAST, *A]) == 0
    promotion = json.loads((workdir / EXP / "promotion.json").read_text())
    assert promotion["promoted"] and "belongs to other data" in promotion["reason"]
    assert cli.main(["train-rerank", *FAST, *A]) == 0


def test_a_rerun_that_trains_nothing_registers_no_duplicate(store, workdir, capsys):
    write_log(80)
    train_and_promote(A)
    first = json.loads((workdir / EXP / "registered.json").read_text())
    capsys.readouterr()
    assert cli.main(["train-retrieval", *FAST, *A]) == 0  # the checkpoint has finished: nothing to train
    assert "no new version registered" in capsys.readouterr().out
    again = json.loads((workdir / EXP / "registered.json").read_text())
    assert again["version"] == first["version"] == 1 and again["reused"] is True
    assert [str(v.version) for v in store.search_model_versions(f"name = '{NAME_A}-retriever'")] == ["1"]
    assert cli.main(["promote", "retriever", *FAST, *A]) == 0
    # Training anew (no resume) is a new model, registered as such.
    assert cli.main(["train-retrieval", *FAST, *A, "--no-resume"]) == 0
    assert json.loads((workdir / EXP / "registered.json").read_text())["version"] == 2
