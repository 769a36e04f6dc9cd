"""Run lifecycle and concurrent starts, on real processes: a training stopped by SIGTERM/SIGINT ends its MLflow run
as KILLED with the reason and leaves no PENDING logged model; a run orphaned by `kill -9` is closed by the next start
of the same training; `recsys doctor` lists and closes orphans; stages started together on an empty store all work.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, cyclic_rows

from recsys_core import tracking
from stages import cli

pytestmark = pytest.mark.slow

FAST = ["--dataset_code", "custom", "--custom_interactions", "mine.csv", "--min_uc", "3", "--min_sc", "1",
        "--rerank_eval_candidates", "5", "--rerank_top_k", "10", "--retrieval_top_k", "20", "--lru_hidden_size", "16",
        "--lru_num_blocks", "1", "--lru_max_len", "16", "--batch_size_retrieval", "32", "--device", "cpu",
        "--retrieval_patience", "1000"]  # fmt: skip
WORKER = REPO / "tests" / "lifecycle_worker.py"
WAIT_S = 240  # a stage's start-up (torch, mlflow) on a loaded 2-core machine


@pytest.fixture
def store(workdir, monkeypatch):
    """A scratch project whose MLflow store is ``workdir/mlflow.db`` (not yet created)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workdir}/mlflow.db")
    monkeypatch.setenv("RECSYS_PROJECT_ROOT", str(workdir))
    return workdir


@pytest.fixture
def project(store):
    """The store plus tiny prepared data (60 users walking a 30-item cycle)."""
    pd.DataFrame(cyclic_rows(60, 30), columns=["user", "item", "rating", "timestamp"]).to_csv("mine.csv", index=False)
    assert cli.main(["data-prepare", *FAST]) == 0
    return store


def child_env(root: Path) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db", "RECSYS_PROJECT_ROOT": str(root),
            "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}  # fmt: skip


def as_from_a_terminal() -> None:
    """Ctrl-C as a terminal delivers it: the stages keep an ignored SIGINT ignored (nohup, a background job of a
    script: `cmd &` in a non-interactive shell), so a suite started that way must not pass that on to them."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(root: Path, argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *argv], cwd=root, env=child_env(root), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, preexec_fn=as_from_a_terminal)  # fmt: skip


def wait_for(check, proc: subprocess.Popen, what: str):
    """Poll ``check`` until it gives something; fail with the process's output if it exits first."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        if proc.poll() is not None:
            pytest.fail(f"the process exited ({proc.returncode}) before {what}:\n{proc.stdout.read()[-4000:]}")
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"no {what} after {WAIT_S} s:\n{proc.communicate()[0][-4000:]}")


def client():
    """A client of the test's store, named explicitly: mlflow keeps the URI an earlier test in this process set."""
    import mlflow

    from recsys_core.tracking import prepare_store

    uri = os.environ["MLFLOW_TRACKING_URI"]
    prepare_store(uri)  # under the store's lock: a bare client racing the stage on a new mlflow.db both create tables
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def runs(status: str | None = None) -> list:
    c = client()
    experiment = c.get_experiment_by_name("custom")
    if experiment is None:
        return []
    found = c.search_runs([experiment.experiment_id])
    return [r for r in found if status is None or r.info.status == status]


def models_of(run) -> list:
    return list(client().search_logged_models([run.info.experiment_id],
                                              filter_string=f"source_run_id = '{run.info.run_id}'"))  # fmt: skip


def in_training(proc: subprocess.Popen):
    """The process's RUNNING run once it has logged a training epoch."""
    for run in runs("RUNNING"):
        if run.data.tags.get(tracking.PID_TAG) == str(proc.pid) and "train/train_loss" in run.data.metrics:
            return run
    return None


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_during_training_ends_the_run_killed(project, signum):
    # Epochs of this tiny model take milliseconds: a ceiling and a patience it cannot reach before the signal.
    endless = ["--retrieval_epochs", "10000000", "--retrieval_patience", "10000000"]
    proc = start(project, ["-m", "stages.cli", "train-retrieval", *FAST, *endless])
    run = wait_for(lambda: in_training(proc), proc, "a RUNNING run with a training epoch")
    proc.send_signal(signum)
    out = proc.communicate(timeout=WAIT_S)[0]
    assert proc.returncode == 128 + signum, out[-4000:]
    name = signal.Signals(signum).name
    assert f"stopped by {name}" in out and f"MLflow run {run.info.run_id} ended as KILLED" in out, out[-4000:]
    assert "Traceback" not in out, out[-4000:]

    ended = client().get_run(run.info.run_id)
    assert ended.info.status == "KILLED" and ended.info.end_time is not None
    assert ended.data.tags[tracking.END_REASON_TAG].startswith(f"stopped by {name}")
    assert ended.data.tags[tracking.HOST_TAG] == socket.gethostname()
    assert not [m for m in models_of(ended) if str(m.status) == "PENDING"]
    assert cli.main(["doctor"]) == 0  # nothing left for the doctor


def test_sigterm_while_logging_the_model_fails_it_instead_of_leaving_it_pending(project):
    marker = project / "paused"
    proc = start(project, [str(WORKER), "log_model", str(marker), "train-retrieval", *FAST, "--retrieval_epochs", "1"])
    wait_for(marker.exists, proc, "the model upload")
    (run,) = runs("RUNNING")
    assert [str(m.status) for m in models_of(run)] == ["PENDING"]  # where MLflow alone would leave it
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=WAIT_S)[0]
    assert proc.returncode == 128 + signal.SIGTERM, out[-4000:]

    ended = client().get_run(run.info.run_id)
    assert ended.info.status == "KILLED" and "SIGTERM" in ended.data.tags[tracking.END_REASON_TAG]
    assert [str(m.status) for m in models_of(ended)] == ["FAILED"]
    assert not (project / "experiments/retrieval/lrurec/custom/seed42/registered.json").exists()


def test_kill9_orphan_is_closed_by_the_rerun_that_resumes_it(project, capsys):
    marker = project / "paused"
    argv = ["train-retrieval", *FAST, "--retrieval_epochs", "4"]
    proc = start(project, [str(WORKER), "epoch:2", str(marker), *argv])
    wait_for(marker.exists, proc, "epoch 2")
    proc.kill()  # SIGKILL: no handler runs
    proc.communicate(timeout=60)
    (orphan,) = runs("RUNNING")
    assert tracking.owner_state(orphan.data.tags) == "gone"

    assert cli.main(argv) == 0  # the same training, in this process: resumes from the epoch-2 checkpoint
    (rerun,) = runs("FINISHED")
    assert rerun.data.metrics["epochs_run"] == 4 and rerun.data.tags[tracking.CLOSED_ORPHANS_TAG] == orphan.info.run_id
    closed = client().get_run(orphan.info.run_id)
    assert closed.info.status == "KILLED" and closed.info.end_time is not None
    assert closed.data.tags[tracking.RESUMED_BY_TAG] == rerun.info.run_id
    assert f"process {proc.pid} on {socket.gethostname()}" in closed.data.tags[tracking.END_REASON_TAG]
    assert closed.info.end_time <= rerun.info.start_time  # its last sign of life, not the moment it was found
    assert not runs("RUNNING")


def test_only_the_same_training_closes_an_orphan(store):
    """The resume fingerprint decides: another training's orphan is left to `recsys doctor`."""
    tracking.configure(store)
    c = client()
    exp = tracking.experiment_id("custom", store)
    other = c.create_run(exp, tags={**tracking.process_tags(), tracking.PID_TAG: "999999999",
                                    tracking.FINGERPRINT_TAG: "another training"}, run_name="x")  # fmt: skip
    assert tracking.owner_state(other.data.tags) == "gone"
    assert tracking.close_orphans_of(c, exp, "x", {tracking.FINGERPRINT_TAG: "mine"}, "new") == []
    assert tracking.close_orphans_of(c, exp, "x", {tracking.FINGERPRINT_TAG: "another training"}, "new") == [
        other.info.run_id
    ]
    assert c.get_run(other.info.run_id).data.tags[tracking.RESUMED_BY_TAG] == "new"


def test_without_a_fingerprint_the_run_key_decides(store):
    """Run names are unique (start time appended), so a pipeline run's orphan is found by its key tag."""
    tracking.configure(store)
    c = client()
    exp = tracking.experiment_id("custom", store)
    gone = {**tracking.process_tags(), tracking.PID_TAG: "999999999", "stage": "pipeline"}
    same = c.create_run(exp, tags={**gone, tracking.RUN_KEY_TAG: "pipeline-custom-seed42"},
                        run_name="pipeline-custom-seed42-1130-120000")  # fmt: skip
    c.create_run(exp, tags={**gone, tracking.RUN_KEY_TAG: "pipeline-custom-seed7"},
                 run_name="pipeline-custom-seed7-1130-120000")  # fmt: skip
    closed = tracking.close_orphans_of(c, exp, "pipeline-custom-seed42", {"stage": "pipeline"}, "new")
    assert closed == [same.info.run_id]


def test_doctor_lists_and_closes_orphans(store, capsys):
    tracking.configure(store)
    c = client()
    exp = tracking.experiment_id("custom", store)
    mine = tracking.process_tags()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    made = {
        "orphan": {**mine, tracking.PID_TAG: str(gone.pid)},
        "reused_pid": {**mine, tracking.PROCESS_START_TAG: str(float(mine[tracking.PROCESS_START_TAG]) - 3600)},
        "alive": mine,
        "elsewhere": {**mine, tracking.HOST_TAG: "another-host.example"},
        "untagged": {},
    }
    ids = {name: c.create_run(exp, tags=tags, run_name=name).info.run_id for name, tags in made.items()}
    pending = c.create_logged_model(exp, name="model", source_run_id=ids["orphan"])
    finished = c.create_run(exp, run_name="finished").info.run_id
    left = c.create_logged_model(exp, name="model", source_run_id=finished)
    c.set_terminated(finished, "FINISHED")

    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    lines = {name: next(line for line in out.splitlines() if ids[name] in line) for name in ids}
    assert "orphaned: process gone" in lines["orphan"] and "orphaned: process gone" in lines["reused_pid"]
    assert "process alive" in lines["alive"] and "another host" in lines["elsewhere"]
    assert "no process tags" in lines["untagged"]
    assert left.model_id in out and pending.model_id not in out and "--close" in out
    assert {r.info.status for r in runs()} == {"RUNNING", "FINISHED"}  # listing changes nothing

    assert cli.main(["doctor", "--close"]) == 0
    status = {name: c.get_run(run_id).info.status for name, run_id in ids.items()}
    assert status == {"orphan": "KILLED", "reused_pid": "KILLED", "alive": "RUNNING", "elsewhere": "RUNNING",
                      "untagged": "RUNNING"}  # fmt: skip
    assert "recsys doctor" in c.get_run(ids["orphan"]).data.tags[tracking.END_REASON_TAG]
    assert str(c.get_logged_model(pending.model_id).status) == "FAILED"
    assert str(c.get_logged_model(left.model_id).status) == "FAILED"

    assert cli.main(["doctor", "--close", "--close-untagged"]) == 0
    assert c.get_run(ids["untagged"]).info.status == "KILLED"
    assert c.get_run(ids["alive"]).info.status == "RUNNING"


CONCURRENT = """
import sys, time
from pathlib import Path
from recsys_core import tracking
import mlflow
root = Path(sys.argv[1])
(root / f"ready{sys.argv[2]}").touch()
while not (root / "go").exists():
    time.sleep(0.005)
with tracking.training_run(root, "custom", "concurrent", {"worker": sys.argv[2]}, {"stage": "test"}):
    mlflow.log_metric("m", 1.0)
"""


def test_concurrent_starts_on_an_empty_store_all_succeed(store):
    """MLflow alone: most of these die with "duplicate column name" while migrating the new mlflow.db."""
    workdir, n = store, 4
    procs = [start(workdir, ["-c", CONCURRENT, str(workdir), str(i)]) for i in range(n)]
    for i, proc in enumerate(procs):
        wait_for((workdir / f"ready{i}").exists, proc, "the start line")
    assert not (workdir / "mlflow.db").exists()
    (workdir / "go").touch()
    outs = [proc.communicate(timeout=WAIT_S)[0] for proc in procs]
    for proc, out in zip(procs, outs, strict=True):
        assert proc.returncode == 0, out[-4000:]
        assert "Traceback" not in out, out[-4000:]
    assert (workdir / "mlflow.db.lock").exists()
    finished = runs("FINISHED")
    assert sorted(r.data.params["worker"] for r in finished) == [str(i) for i in range(n)]


SLEEPER = """
import signal, sys, time
from pathlib import Path
got = []
signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
Path("sleeper.ready").touch()
deadline = time.monotonic() + 120
while not got and time.monotonic() < deadline:
    time.sleep(0.01)
time.sleep(1.0)  # a second signal would arrive meanwhile
Path("sleeper.got").write_text(",".join(map(str, got)))
sys.exit(128 + got[0] if got else 0)
"""
PIPELINE = """
import sys
from recsys_core import tracking
from stages import train_pipeline
try:
    with tracking.stop_signals_raise():
        train_pipeline._run("sleeper", [])
except tracking.Interrupted as stop:
    sys.exit(128 + stop.signum)
"""


def test_train_pipeline_passes_ctrl_c_to_its_stage_once(workdir):
    """Ctrl-C reaches the pipeline's whole process group: the running stage must get it once, from the pipeline
    (twice, and it would die before ending its own run; subprocess.run would SIGKILL it)."""
    (workdir / "sleeper.py").write_text(SLEEPER)
    proc = subprocess.Popen([sys.executable, "-c", PIPELINE], cwd=workdir, env=child_env(workdir),
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=as_from_a_terminal)  # fmt: skip
    wait_for((workdir / "sleeper.ready").exists, proc, "the stage's start")
    os.killpg(proc.pid, signal.SIGINT)  # what the terminal does
    out = proc.communicate(timeout=WAIT_S)[0]
    assert proc.returncode == 128 + signal.SIGINT, out[-4000:]
    assert (workdir / "sleeper.got").read_text() == str(int(signal.SIGINT))


def test_a_stop_during_an_mlflow_write_waits_for_the_write():
    """A stop inside `uninterrupted()` (the per-epoch metrics write) is raised when the block ends, not inside it:
    raised mid-write, it left the SQLite transaction open and the run could not be ended (database is locked)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers need the main thread")
    done = []
    with pytest.raises(tracking.Interrupted) as stopped:
        with tracking.stop_signals_raise():
            with tracking.uninterrupted():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)  # the handler has run by now
                done.append("the write finished")
            done.append("after the write")  # not reached: the held stop is raised as the block ends
    assert done == ["the write finished"] and stopped.value.signum == signal.SIGTERM
