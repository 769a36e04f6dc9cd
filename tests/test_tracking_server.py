"""The team setup's tracking server, for real: PostgreSQL 15 and `mlflow server` on free 127.0.0.1 ports.

Stages started together against it all land (no lost run, no duplicate version); a server that stops in the middle
of a training fails the stage with a message naming the tracking URI, and after a restart the rerun resumes from its
checkpoint and finishes, with every metric logged before the stop still there.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import psutil
import pytest
from conftest import REPO, cyclic_rows

from recsys_core import tracking
from recsys_core import tracking_server as server
from stages import cli

pytestmark = pytest.mark.slow

WORKER = REPO / "tests" / "lifecycle_worker.py"
WAIT_S = 300
FAST = ["--dataset_code", "custom", "--custom_interactions", "mine.csv", "--min_uc", "3", "--min_sc", "1",
        "--rerank_eval_candidates", "5", "--rerank_top_k", "10", "--retrieval_top_k", "20", "--lru_hidden_size", "16",
        "--lru_num_blocks", "1", "--lru_max_len", "16", "--batch_size_retrieval", "32", "--device", "cpu"]  # fmt: skip


def child_env(root: Path, url: str) -> dict[str, str]:
    # one quick try per request: the default (7 retries with backoff) waits minutes before giving up
    return {**os.environ, "MLFLOW_TRACKING_URI": url, "RECSYS_PROJECT_ROOT": str(root), "PYTHONPATH": str(REPO),
            "OMP_NUM_THREADS": "1", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}  # fmt: skip


def client(url: str):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=url, registry_uri=url)


def test_start_binds_loopback_keeps_credentials_private_and_reports_status(tracking_server):
    url, settings = tracking_server
    listening = {c.laddr.port: c.laddr.ip for c in psutil.net_connections("tcp") if c.status == "LISTEN"}
    assert listening[settings.port] == "127.0.0.1" and listening[settings.pg_port] == "127.0.0.1"
    mode = stat.S_IMODE((settings.folder / "credentials.json").stat().st_mode)
    assert mode == 0o600, oct(mode)
    state = server.status(settings)
    assert state["postgres"] == "running" and state["mlflow_server"] == "running" and state["url"] == url
    assert server.start(settings) == url  # a second start finds both running and starts nothing
    argv = " ".join(psutil.Process(server.server_pid(settings)).cmdline())
    assert "postgresql://" not in argv  # the password travels in the environment, not on the command line


CONCURRENT = """
import sys, time
from pathlib import Path
import mlflow
from recsys_core import registry, tracking
root, worker = Path(sys.argv[1]), sys.argv[2]
(root / f"ready{worker}").touch()
while not (root / "go").exists():
    time.sleep(0.01)
tags = {"stage": "test", "data.version": "same-data"}  # every run logs the same dataset input: a race to insert it
with tracking.training_run(root, "custom", f"concurrent-{worker}", {"worker": worker}, tags, prepared=root) as run:
    mlflow.log_metric("m", 1.0)
    mlflow.log_text(worker, "worker.txt")
    info = mlflow.pyfunc.log_model(name="model", python_model=mlflow.pyfunc.PythonModel())
registry.register(info.model_uri, "concurrent-model", {}, {})  # all set the candidate alias: a race to insert it
"""


def test_stages_started_together_against_the_server_all_land(tracking_server, tmp_path):
    url, _ = tracking_server
    n = 4
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT, str(tmp_path), str(i)], cwd=tmp_path,
                              env={**child_env(tmp_path, url), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3"},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(n)]  # fmt: skip
    for i, proc in enumerate(procs):
        while not (tmp_path / f"ready{i}").exists():
            assert proc.poll() is None, proc.stdout.read()[-4000:]
    (tmp_path / "go").touch()
    for proc in procs:
        out = proc.communicate(timeout=WAIT_S)[0]
        assert proc.returncode == 0 and "Traceback" not in out, out[-4000:]
    c = client(url)
    runs = c.search_runs([c.get_experiment_by_name("custom").experiment_id])
    assert sorted(r.data.params["worker"] for r in runs) == [str(i) for i in range(n)]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert {(d.dataset.name, d.dataset.digest) for r in runs for d in r.inputs.dataset_inputs} == {
        (tmp_path.name, "same-data")
    }
    assert all(len(r.inputs.dataset_inputs) == 1 for r in runs)
    versions = c.search_model_versions("name = 'concurrent-model'")
    assert sorted(int(v.version) for v in versions) == list(range(1, n + 1))
    assert sorted(v.run_id for v in versions) == sorted(r.info.run_id for r in runs)  # one version per run
    assert int(c.get_model_version_by_alias("concurrent-model", "candidate").version) in range(1, n + 1)
    for run in runs:
        text = c.download_artifacts(run.info.run_id, "worker.txt", str(tmp_path / run.info.run_id))
        assert Path(text).read_text() == run.data.params["worker"]


def test_a_server_stopped_mid_training_fails_the_stage_clearly_and_the_rerun_resumes(
    tracking_server, workdir, monkeypatch
):
    url, settings = tracking_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("RECSYS_PROJECT_ROOT", str(workdir))
    pd.DataFrame(cyclic_rows(60, 30), columns=["user", "item", "rating", "timestamp"]).to_csv("mine.csv", index=False)
    assert cli.main(["data-prepare", *FAST]) == 0
    epochs = ["--retrieval_epochs", "6", "--retrieval_patience", "1000"]
    marker = workdir / "paused"
    proc = subprocess.Popen([sys.executable, str(WORKER), "epoch:2", str(marker), "train-retrieval", *FAST, *epochs],
                            cwd=workdir, env=child_env(workdir, url), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        while not marker.exists():
            assert proc.poll() is None, proc.stdout.read()[-4000:]
        server.stop_server(settings)  # PostgreSQL keeps running: the server process is what vanished
        marker.with_name("paused.go").touch()
        out = proc.communicate(timeout=WAIT_S)[0]
    finally:
        proc.kill()
    assert proc.returncode == 1, out[-4000:]
    assert f"the MLflow tracking server {url} cannot be reached" in out and "make tracking-server" in out, out[-4000:]
    assert "Traceback" not in out, out[-4000:]

    assert server.start(settings) == url
    c = client(url)
    (orphan,) = c.search_runs([c.get_experiment_by_name("custom").experiment_id], "tags.stage = 'retrieval'")
    assert orphan.info.status == "RUNNING"  # nobody could end it
    assert [m.step for m in c.get_metric_history(orphan.info.run_id, "train/train_loss")] == [1, 2]
    rerun = subprocess.run([sys.executable, "-m", "stages.cli", "train-retrieval", *FAST, *epochs], cwd=workdir,
                           env=child_env(workdir, url), capture_output=True, text=True, timeout=WAIT_S)  # fmt: skip
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-4000:]
    assert "resumed from" in rerun.stdout + rerun.stderr
    runs = {r.info.run_id: r for r in c.search_runs([orphan.info.experiment_id], "tags.stage = 'retrieval'")}
    closed = runs.pop(orphan.info.run_id)
    (finished,) = runs.values()
    assert closed.info.status == "KILLED" and closed.data.tags[tracking.RESUMED_BY_TAG] == finished.info.run_id
    assert finished.info.status == "FINISHED"
    assert [m.step for m in c.get_metric_history(finished.info.run_id, "train/train_loss")] == [1, 2, 3, 4, 5, 6]
    assert [m.step for m in c.get_metric_history(orphan.info.run_id, "train/train_loss")] == [1, 2]  # kept
    (version,) = c.search_model_versions("name = 'custom_min_rating0-min_uc3-min_sc1-retriever'")
    assert version.run_id == finished.info.run_id  # the stopped run registered nothing
