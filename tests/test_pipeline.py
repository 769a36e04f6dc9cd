"""`recsys train-pipeline` end to end under one parent MLflow run, `recsys compare`, and the two-stage model served
over REST by `mlflow models serve` on 127.0.0.1: on the embedded store and on the team's tracking server (PostgreSQL)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import pandas as pd
import pytest
from conftest import cyclic_rows, free_port

from stages import cli

pytestmark = pytest.mark.slow

# BERT4Rec here (the default, ltr, runs through DVC in test_dvc_pipeline)
FAST = ["--dataset_code", "custom", "--custom_interactions", "mine.csv", "--min_uc", "3", "--min_sc", "1",
        "--rerank_eval_candidates", "10", "--retrieval_top_k", "20", "--rerank_top_k", "10", "--device", "cpu",
        "--lru_hidden_size", "16", "--lru_num_blocks", "1", "--lru_max_len", "16", "--batch_size_retrieval", "32",
        "--retrieval_lr", "0.01", "--retrieval_epochs", "4", "--bert_hidden_size", "16", "--bert_num_blocks", "1",
        "--bert_max_len", "16", "--rerank_lr", "0.01", "--rerank_epochs", "3", "--rerank_batch_size", "32",
        "--rerank_method", "bert4rec"]  # fmt: skip


PREFIX = "custom_min_rating0-min_uc3-min_sc1"  # registered models are named after the prepared data


@pytest.fixture(params=["embedded", "server"])
def store(request, workdir):
    """The embedded SQLite store, or the team setup: `mlflow server` on a real PostgreSQL, proxied artifacts."""
    if request.param == "embedded":
        return f"sqlite:///{workdir}/mlflow.db"
    url, _ = request.getfixturevalue("tracking_server")
    return url


def test_train_pipeline_compare_and_serve(workdir, store, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("RECSYS_PROJECT_ROOT", str(workdir))
    pd.DataFrame(cyclic_rows(100, 30), columns=["user", "item", "rating", "timestamp"]).to_csv("mine.csv", index=False)
    assert cli.main(["train-pipeline", *FAST, "--rerank_mode", "retrieval"]) == 0

    import mlflow

    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("custom")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("stage") == "train_pipeline"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["stage"] for r in children) == ["pipeline", "rerank", "retrieval"]
    pipeline = next(r for r in children if r.data.tags["stage"] == "pipeline")
    for kind in ("retriever", "reranker", "two-stage"):
        champion = client.get_model_version_by_alias(f"{PREFIX}-{kind}", "champion")
        assert int(champion.version) == 1
    assert pipeline.data.tags["retriever.version"] == "1" and pipeline.data.tags["reranker.version"] == "1"
    if store.startswith("http"):  # artifacts through the server into its folder, none beside the project
        assert pipeline.info.artifact_uri.startswith("mlflow-artifacts:/") and not (workdir / "mlartifacts").exists()
    assert "data.interactions.md5" in pipeline.data.tags
    assert {"test/ndcg_at_10", "test_retrieval_only/ndcg_at_10", "test_candidate_recall"} <= set(pipeline.data.metrics)
    rerank = next(r for r in children if r.data.tags["stage"] == "rerank")
    assert rerank.data.tags["rerank_mode"] == "retrieval" and rerank.data.tags["retriever.version"] == "1"

    capsys.readouterr()
    assert cli.main(["compare", "--dataset", "custom"]) == 0
    table = capsys.readouterr().out
    assert "retrieval" in table and "rerank (retrieval)" in table and "lrurec+bert4rec" in table and "yes" in table
    assert PREFIX in table  # each data setting's runs on their own rows

    # Any two evaluated runs pair per user: the two-stage model against the retriever's full ranking.
    assert cli.main(["compare", f"{PREFIX}-retriever@champion", f"models:/{PREFIX}-two-stage/1"]) == 0
    paired = capsys.readouterr().out
    assert "paired over the same 100 users" in paired and "10,000 resamples" in paired
    assert "ndcg_at_10" in paired and "recall_at_20" in paired and "95% CI" in paired
    records = mlflow.artifacts.download_artifacts(run_id=pipeline.info.run_id, artifact_path="per_user/test.csv")
    per_user = pd.read_csv(records)
    assert len(per_user) == 100 and {"user_id", "target", "rank", "ndcg_at_10", "mrr_at_10"} <= set(per_user)
    assert per_user["ndcg_at_10"].mean() == pytest.approx(pipeline.data.metrics["test/ndcg_at_10"], abs=1e-5)
    assert {"test_delta/ndcg_at_10", "test_delta_low/ndcg_at_10", "test_delta_p/recall_at_10"} <= set(
        pipeline.data.metrics)  # fmt: skip

    port = free_port()
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{PREFIX}-two-stage@champion",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                time.sleep(0.5)
        body = json.dumps({"dataframe_records": [{"history": [1, 2, 3], "k": 4}, {"history": [5], "k": 2}]}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body,
                                         {"Content-Type": "application/json"})  # fmt: skip
        answer = json.loads(urllib.request.urlopen(request, timeout=30).read())["predictions"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert [len(a["items"]) for a in answer] == [4, 2]
    assert not {1, 2, 3} & set(answer[0]["items"]) and 5 not in answer[1]["items"]  # history is never recommended
    assert answer[0]["scores"] == sorted(answer[0]["scores"], reverse=True) and len(answer[0]["titles"]) == 4
