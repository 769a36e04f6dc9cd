"""`recsys train-pipeline` end to end under one parent MLflow run, `recsys compare`, and the two-stage model served
over REST by `mlflow models serve` on 127.0.0.1: on the embedded store and on the team's tracking server (PostgreSQL)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

import pandas as pd
import pytest
from conftest import cyclic_rows

from recsys_core.net import free_port, wait_until_answers
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


def test_train_pipeline_compare_and_serve(workdir, store, monkeypatch, capsys, request):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("RECSYS_PROJECT_ROOT", str(workdir))
    pd.DataFrame(cyclic_rows(100, 30), columns=["user", "item", "rating", "timestamp"]).to_csv("mine.csv", index=False)
    assert cli.main(["train-pipeline", *FAST, "--rerank_mode", "retrieval"]) == 0

    import mlflow

    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("custom")
    # the UI opens it on the training runs, with a description; each logged model is named after its method
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "retriever" in experiment.tags["mlflow.note.content"]
    logged = client.search_logged_models([experiment.experiment_id])
    assert sorted(m.name for m in logged) == ["bert4rec", "lrurec", "lrurec+bert4rec"]
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("stage") == "train_pipeline"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["stage"] for r in children) == ["pipeline", "rerank", "retrieval"]
    for child in children:  # the prepared data is each stage's dataset input (the UI's Dataset column)
        (used,) = client.get_run(child.info.run_id).inputs.dataset_inputs
        assert used.dataset.name == PREFIX and used.dataset.digest == child.data.tags["data.version"]
    pipeline = next(r for r in children if r.data.tags["stage"] == "pipeline")
    # Runs that explain themselves: unique names, descriptions with links, the params that concern each.
    assert len({r.info.run_name for r in runs}) == len(runs) == 4
    assert "child runs" in parent.data.tags["mlflow.note.content"]
    note = {r.data.tags["stage"]: r.data.tags["mlflow.note.content"] for r in children}
    assert note["retrieval"].startswith("**lrurec** retriever") and note["rerank"].startswith("**bert4rec** reranker")
    assert f"[{PREFIX}-retriever v1](#/models/{PREFIX}-retriever/versions/1)" in note["rerank"]
    assert f"[{PREFIX}-reranker v1](#/models/{PREFIX}-reranker/versions/1)" in note["pipeline"]
    assert "paired 95% interval" in note["pipeline"] and "Promotion: **promoted to champion**" in note["pipeline"]
    two_stage = client.get_model_version(f"{PREFIX}-two-stage", "1")
    assert "Made by run" in two_stage.description and pipeline.info.run_id in two_stage.description
    groups = {r.data.tags["stage"]: {p.split(".")[0] for p in r.data.params} for r in children}
    assert groups["rerank"] >= {"rerank", "candidates", "bert4rec"} and not groups["rerank"] & {"lrurec", "vip5"}
    assert groups["pipeline"] == {"seed", "data", "serving", "retrieval", "rerank", "training"}
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
    assert cli.main(["compare", "--dataset", "custom", "--with", f"{PREFIX}-reranker/1"]) == 0
    table = capsys.readouterr().out
    assert "champion retriever: lrurec" in table and "champion two-stage: lrurec+bert4rec" in table
    assert "rerank (retrieval) bert4rec" in table
    assert "v1 champion" in table and f"Data {PREFIX}" in table  # each data setting's runs in their own block
    assert "NDCG@5" in table and "Recall@20" in table and " val " in table and "Chosen runs" in table
    assert f"{PREFIX}-reranker v1 (rerank bert4rec)" in table
    assert "n/a" in table and "K is above the length of the ranked list" in table  # @20 of 10-item lists

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
        assert wait_until_answers(f"http://127.0.0.1:{port}/ping", server, 120), server.stderr.read().decode()[-2000:]
        body = json.dumps({"dataframe_records": [{"history": [1, 2, 3], "k": 4}, {"history": [5], "k": 2}]}).encode()
        invocation = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body,
                                         {"Content-Type": "application/json"})  # fmt: skip
        answer = json.loads(urllib.request.urlopen(invocation, timeout=30).read())["predictions"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert [len(a["items"]) for a in answer] == [4, 2]
    assert not {1, 2, 3} & set(answer[0]["items"]) and 5 not in answer[1]["items"]  # history is never recommended
    assert answer[0]["scores"] == sorted(answer[0]["scores"], reverse=True) and len(answer[0]["titles"]) == 4
    check_ui_opens_on_the_runs(store, workdir, parent)
    if store.startswith("sqlite"):
        check_report_renders(workdir, pipeline.info.run_id, capsys)
        check_migration_to_server(store, request.getfixturevalue("tracking_server")[0], monkeypatch, capsys)


def check_ui_opens_on_the_runs(store: str, workdir, parent) -> None:
    """The MLflow UI (`make ui` on the embedded store, the tracking server's own) opens an experiment on its training
    runs, headline metric columns shown, in headless Chromium with a fresh profile (nothing chosen yet)."""
    import signal

    from browser import page_dom

    ui = None
    if store.startswith("sqlite"):
        port = free_port()
        ui = subprocess.Popen([sys.executable, "-m", "stages.cli", "ui", "--port", str(port)], cwd=workdir,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        assert wait_until_answers(f"{base}/health", ui, 120), ui.stdout.read().decode()[-2000:]
    else:
        base = store
    try:
        dom = page_dom(f"{base}/#/experiments/{parent.info.experiment_id}")
    finally:
        if ui is not None:
            os.killpg(ui.pid, signal.SIGTERM)  # mlflow server and its uvicorn: the session started for them
            ui.wait(timeout=30)
    assert parent.info.run_name in dom, "the experiment page does not list the training runs"
    assert ">test/ndcg_at_10<" in dom and ">val/ndcg_at_10<" in dom, "no headline metric columns in the runs table"


def check_report_renders(workdir, run_id: str, capsys) -> None:
    """`recsys report` after the pipeline: Chromium draws its plots (not blank) and the run holds the page."""
    import mlflow
    from browser import pixels_near, screenshot

    assert cli.main(["report", *FAST]) == 0
    page = workdir / "reports/custom/seed42/report.html"
    assert "opens offline" in capsys.readouterr().out
    image = screenshot(page.as_uri(), workdir / "report.png")
    # matplotlib's first colour draws the candidate-recall curve and the training curves
    assert pixels_near(image, (31, 119, 180)) > 500, "the report's plots are blank"
    assert image.std() > 20  # a page of text and plots, not one colour
    client = mlflow.MlflowClient()
    assert [a.path for a in client.list_artifacts(run_id, "report")] == ["report/report.html"]


def check_migration_to_server(embedded: str, url: str, monkeypatch, capsys) -> None:
    """`recsys tracking migrate`: the embedded store's runs, models and registry on the server, ids rewritten, the
    champion answering the same; a second migration copies nothing."""
    import mlflow

    source = mlflow.MlflowClient(embedded, embedded)
    old_runs = {r.info.run_id: r for r in source.search_runs([source.get_experiment_by_name("custom").experiment_id])}
    assert cli.main(["tracking", "migrate", "--dest", url]) == 0
    printed = capsys.readouterr().out
    assert f"runs: {len(old_runs)} copied, 0 already there" in printed and "model versions: 3 copied" in printed

    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    server = mlflow.MlflowClient(url, url)
    new_runs = server.search_runs([server.get_experiment_by_name("custom").experiment_id])
    by_source = {r.data.tags["migration.source_run_id"]: r for r in new_runs}
    assert set(by_source) == set(old_runs)
    new_id = {old: run.info.run_id for old, run in by_source.items()}
    for old, run in by_source.items():
        before = old_runs[old]
        assert run.data.params == before.data.params and run.data.metrics == before.data.metrics
        assert run.info.status == before.info.status and run.info.end_time == before.info.end_time
        inputs = [i.dataset.name for i in server.get_run(run.info.run_id).inputs.dataset_inputs]
        assert inputs == [i.dataset.name for i in source.get_run(old).inputs.dataset_inputs]
        for key, value in before.data.tags.items():  # ids of the source store become the server's ids
            assert run.data.tags[key] == new_id.get(value, value), key
    (retrieval,) = [r for r in old_runs.values() if r.data.tags.get("stage") == "retrieval"]
    epochs = [(m.step, m.value) for m in source.get_metric_history(retrieval.info.run_id, "train/train_loss")]
    assert len(epochs) > 1
    assert epochs == [
        (m.step, m.value) for m in server.get_metric_history(new_id[retrieval.info.run_id], "train/train_loss")
    ]
    for kind in ("retriever", "reranker", "two-stage"):
        old, new = (c.get_model_version_by_alias(f"{PREFIX}-{kind}", "champion") for c in (source, server))
        assert int(new.version) == int(old.version) and new.run_id == new_id[old.run_id] and new.source != old.source
    history = pd.DataFrame({"history": [[1, 2, 3], [5], [7, 8, 9, 10]]})
    uri = f"models:/{PREFIX}-two-stage@champion"
    served = mlflow.pyfunc.load_model(uri).predict(history)  # from the server
    mlflow.set_tracking_uri(embedded)
    assert served.equals(mlflow.pyfunc.load_model(uri).predict(history))
    mlflow.set_tracking_uri(url)
    capsys.readouterr()
    assert cli.main(["compare", f"{PREFIX}-retriever@champion", f"{PREFIX}-two-stage@champion"]) == 0
    assert "paired over the same 100 users" in capsys.readouterr().out  # per-user artifacts came along

    assert cli.main(["tracking", "migrate", "--dest", url]) == 0
    again = capsys.readouterr().out
    assert f"runs: 0 copied, {len(old_runs)} already there" in again and "model versions: 0 copied, 3 already" in again
