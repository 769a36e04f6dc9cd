"""train_retrieval end to end on a temporary MLflow store: outputs, the run's params/metrics/tags, the registry's
aliases and promotion decisions, and the champion served from a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import cyclic_rows

from recsys_core.candidates import read_retrieved
from recsys_core.retrieval.lrurec import LRURec
from recsys_core.tracking import dvc_md5
from stages import cli

pytestmark = pytest.mark.slow

FAST = ["--dataset_code", "custom", "--custom_interactions", "mine.csv", "--min_uc", "3", "--min_sc", "1",
        "--rerank_eval_candidates", "5", "--rerank_top_k", "10", "--retrieval_top_k", "20", "--lru_hidden_size", "16",
        "--lru_num_blocks", "1", "--lru_max_len", "16", "--batch_size_retrieval", "32", "--device", "cpu"]  # fmt: skip
EXP = "experiments/retrieval/lrurec/custom/seed42"
NAME = "custom_min_rating0-min_uc3-min_sc1-retriever"  # registered models are named after the prepared data


@pytest.fixture
def project(workdir, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workdir}/mlflow.db")
    monkeypatch.setenv("RECSYS_PROJECT_ROOT", str(workdir))
    pd.DataFrame(cyclic_rows(120, 40), columns=["user", "item", "rating", "timestamp"]).to_csv("mine.csv", index=False)
    assert cli.main(["data-prepare", *FAST]) == 0
    return workdir


def alias(c, name: str) -> int:
    return int(c.get_model_version_by_alias(NAME, name).version)


def client():
    import mlflow

    return mlflow.MlflowClient()


def test_train_register_promote_and_serve(project, capsys):
    assert cli.main(["train-retrieval", *FAST, "--retrieval_epochs", "6", "--retrieval_lr", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "full ranking over 40 items" in out and "Ndcg" in out

    exp = project / EXP
    for name in ("model.safetensors", "config.json", "retrieved.csv", "retrieved_metrics.json", "history.tsv",
                 "registered.json"):  # fmt: skip
        assert (exp / name).exists(), name
    metrics = json.loads((exp / "retrieved_metrics.json").read_text())
    assert metrics["test/recall_at_10"] > 0.6  # the cyclic pattern is learnable
    history = pd.read_csv(exp / "history.tsv", sep="\t")
    assert history["epoch"].tolist() == [1, 2, 3, 4, 5, 6] and "val_ndcg_at_10" in history

    retrieved = read_retrieved(exp / "retrieved.csv")
    users = metrics["users"]
    assert sorted(retrieved["split"].unique()) == ["test", "val"] and len(retrieved) == 2 * users
    for row in retrieved.itertuples():
        assert len(row.candidates) == len(row.scores) > 0 and np.all(np.diff(row.scores) <= 0)
        if row.target in row.candidates:
            assert int(row.target_rank) == list(row.candidates).index(row.target)
        else:
            assert row.target_rank >= len(row.candidates)

    # The MLflow run.
    c = client()
    experiment = c.get_experiment_by_name("custom")
    assert experiment.artifact_location.startswith((project / "mlartifacts").as_uri())
    (run,) = c.search_runs([experiment.experiment_id])
    assert run.info.run_name == "lrurec-custom-seed42"
    assert run.data.params["retrieval.retrieval_lr"] == "0.01" and run.data.params["model.hidden"] == "16"
    assert run.data.params["data.dataset_code"] == "custom"
    assert run.data.metrics["test/ndcg_at_10"] == pytest.approx(metrics["test/ndcg_at_10"])
    assert {"val/hit_at_20", "test/mrr", "best_epoch"} <= set(run.data.metrics)
    curve = c.get_metric_history(run.info.run_id, "epoch_val/ndcg_at_10")
    assert [m.step for m in curve] == [1, 2, 3, 4, 5, 6]
    tags = run.data.tags
    prepared = project / "data/preprocessed/custom_min_rating0-min_uc3-min_sc1"
    assert tags["dataset"] == "custom" and tags["method"] == "lrurec" and tags["stage"] == "retrieval"
    assert tags["data.interactions.md5"] == dvc_md5(prepared / "interactions.parquet") and "git_commit" in tags

    # The registry: version 1 is the candidate; promotion makes it the champion.
    v1 = c.get_model_version_by_alias(NAME, "candidate")
    assert int(v1.version) == 1 and v1.tags["method"] == "lrurec" and "metric.val/ndcg_at_10" in v1.tags
    assert cli.main(["promote", "retriever", *FAST]) == 0
    assert alias(c, "champion") == 1
    assert c.get_model_version(NAME, "1").tags["promotion.decision"] == "promoted"

    # The champion loads in a fresh process and gives the trained model's top-K.
    histories = [[1, 2, 3], [7]]
    script = (
        "import json, sys, mlflow, pandas as pd\n"
        f"m = mlflow.pyfunc.load_model('models:/{NAME}@champion')\n"
        f"out = m.predict(pd.DataFrame({{'history': {histories}, 'k': [5, 5]}}))\n"
        "print(json.dumps(out['items'].tolist()))\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project}/mlflow.db"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd="/",
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    served = json.loads(done.stdout.strip().splitlines()[-1])
    local = LRURec.load(exp)
    scores = local.score([np.array(h) for h in histories])
    for row, hist in enumerate(histories):
        scores[row, hist] = -np.inf
        scores[row, 0] = -np.inf
    assert served == scores.topk(5, dim=1).indices.tolist()

    # A worse model becomes the candidate but not the champion, unless forced.
    assert cli.main(["train-retrieval", *FAST, "--retrieval_epochs", "1", "--retrieval_lr", "0.00001"]) == 0
    assert cli.main(["promote", "retriever", *FAST]) == 0
    v2 = c.get_model_version(NAME, "2")
    assert alias(c, "candidate") == 2
    assert alias(c, "champion") == 1
    assert v2.tags["promotion.decision"] == "not promoted" and "does not beat version 1" in v2.tags["promotion.reason"]
    assert cli.main(["promote", "retriever", *FAST, "--version", "2", "--force"]) == 0
    assert alias(c, "champion") == 2


def test_promote_without_models_says_what_to_do(project, caplog):
    assert cli.main(["promote", "retriever", "--dataset", "custom"]) == 1
    assert "train a model first" in caplog.text
