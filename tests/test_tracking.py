"""train_retrieval end to end on a temporary MLflow store: outputs, the run's params/metrics/tags, the registry's
aliases and promotion decisions, and the champion served from a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
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


def test_train_register_promote_and_serve(project, capsys, tmp_path):
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
    # A unique name that says what the run is; params of the groups that concern it; the whole config beside.
    assert run.info.run_name.startswith("lrurec-custom-seed42-") and run.data.tags["run.key"] == "lrurec-custom-seed42"
    params = run.data.params
    assert params["retrieval.retrieval_lr"] == "0.01" and params["lrurec.lru_hidden_size"] == "16"
    assert params["data.dataset_code"] == "custom"
    assert {p.split(".")[0] for p in params} == {"seed", "data", "training", "retrieval", "lrurec"}, params
    config = yaml.safe_load(Path(c.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))).read_text())
    assert config["vip5"] and config["retrieval"]["retrieval_lr"] == 0.01
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
    assert int(v1.version) == 1 and v1.tags["method"] == "lrurec"
    headline = {"metric.val/ndcg_at_10", "metric.test/ndcg_at_10", "metric.test/recall_at_10"}
    assert {k for k in v1.tags if k.startswith("metric.")} == headline  # the rest stays on the run
    # Run and version describe themselves and link to each other.
    note = c.get_run(run.info.run_id).data.tags["mlflow.note.content"]
    assert note.startswith("**lrurec** retriever (stage 1) on `custom`") and "val NDCG@10 " in note
    assert f"[{NAME} v1](#/models/{NAME}/versions/1)" in note
    assert f"#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}" in v1.description
    assert cli.main(["promote", "retriever", *FAST]) == 0
    assert alias(c, "champion") == 1
    assert c.get_model_version(NAME, "1").tags["promotion.decision"] == "promoted"
    assert "Promotion: **promoted to champion** on " in c.get_model_version(NAME, "1").description
    assert "Promotion: **promoted to champion** on " in c.get_run(run.info.run_id).data.tags["mlflow.note.content"]

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


def test_run_params_are_the_runs_own_groups_and_model_params_only_what_the_section_does_not_say():
    from recsys_core.config import Config
    from stages.training_common import run_params

    cfg = Config()
    hparams = LRURec.hyperparameters(cfg, "ml-100k")
    params = run_params(cfg, hparams, "retrieval", "lrurec")
    assert params["model.max_len"] == 200 and params["lrurec.lru_max_len"] is None  # null resolved for MovieLens
    assert not {"model.hidden", "model.dropout", "model.blocks"} & set(params)  # the section says them
    assert {p.split(".")[0] for p in params} == {"seed", "data", "training", "retrieval", "lrurec", "model"}
    rerank = run_params(cfg, {"hidden": 64}, "rerank", "qwen3vl", uses_features=True)
    assert {p.split(".")[0] for p in rerank} == {"seed", "data", "training", "rerank", "candidates", "llm",
                                                 "features", "model"}  # fmt: skip


def test_runs_log_cpu_and_memory_but_not_host_disk_and_network(workdir, monkeypatch):
    """MLflow lists system metrics above the model's on a run's overview: only the ones about the training stay."""
    from recsys_core import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workdir}/mlflow.db")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.3")
    with tracking.training_run(workdir, "custom", "monitored", {"x": 1}, {"stage": "test"}) as run:
        import time

        time.sleep(1.5)
    logged = set(client().get_run(run.info.run_id).data.metrics)
    system = {k for k in logged if k.startswith("system/")}
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= system, logged
    assert not {k for k in system if k.startswith(("system/disk", "system/network"))}, system
