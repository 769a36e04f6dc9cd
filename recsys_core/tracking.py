"""MLflow tracking: where runs go, how they are named, and what every training run records.

Embedded default: ``sqlite:///<repo>/mlflow.db`` with artifacts under ``<repo>/mlartifacts`` (both git-ignored, never
DVC outputs); ``MLFLOW_TRACKING_URI`` overrides. The URI is absolute, so a run started from a DVC experiment's
temporary copy of the repository still lands in the repository's store.

Run lifecycle: a run records the host, pid and start time of the process that owns it. SIGTERM or SIGINT during a
run ends it as KILLED with the reason (tag ``end_reason``) and fails the logged model it was writing; a run left
RUNNING by a process that is gone (``kill -9``, a crash) is closed as KILLED by the next start of the same training
(tag ``resumed_by``) or by ``recsys doctor --close``. A new SQLite store is created once, under ``mlflow.db.lock``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsys_core.errors import RecsysError, lost_insert_race
from recsys_core.system_metrics import start_monitor

log = logging.getLogger(__name__)

TRACKING_ENV = "MLFLOW_TRACKING_URI"
ROOT_ENV = "RECSYS_PROJECT_ROOT"  # DVC experiments run in a temporary copy; this points back at the real repo

# Which process owns a run, so that a RUNNING run whose process is gone can be told from one still working.
HOST_TAG = "process.host"
PID_TAG = "process.pid"
PROCESS_START_TAG = "process.start_time"  # epoch seconds: a reused pid belongs to a process started later
END_REASON_TAG = "end_reason"  # why a run ended other than FINISHED
RESUMED_BY_TAG = "resumed_by"  # on an orphaned run: the run of the same training that closed it
CLOSED_ORPHANS_TAG = "closed_orphans"  # on that run: the orphaned runs it closed
FINGERPRINT_TAG = "training.fingerprint"  # == lineage.FINGERPRINT_TAG: what identifies "the same training"
STORE_LOCK_TIMEOUT_S = 600.0
_START_TIME_TOLERANCE_S = 2.0
_MAX_TAG_CHARS = 5000


class StoreError(RecsysError):
    """The embedded store cannot be opened: its schema lock was held too long, or its schema is out of date."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT turned into an exception while a run is open, so that ``with`` blocks unwind and the run is
    ended as KILLED. A KeyboardInterrupt, so that ``except Exception`` does not swallow it."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        self.closed_run: str | None = None  # the run ended as KILLED, for the stage's message
        super().__init__(f"stopped by {self.signal_name}")


def project_root(cwd: Path | None = None) -> Path:
    """The repository whose mlflow.db we use: $RECSYS_PROJECT_ROOT, else the main git work tree above ``cwd``."""
    if os.environ.get(ROOT_ENV):
        return Path(os.environ[ROOT_ENV]).resolve()
    cwd = (cwd or Path.cwd()).resolve()
    parts = cwd.parts
    for i in range(len(parts) - 3):  # `dvc exp run --temp/--queue` works in <repo>/.dvc/tmp/exps/<name>
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    try:
        common = subprocess.run(
            ["git", "rev-parse", "--path-format=absolute", "--git-common-dir"],
            cwd=cwd, capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()  # fmt: skip
        root = Path(common).parent
        if (root / "dvc.yaml").exists():
            return root
    except (OSError, subprocess.SubprocessError):
        pass
    return cwd


def embedded_uri(root: Path) -> str:
    return f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def tracking_uri(root: Path) -> str:
    """$MLFLOW_TRACKING_URI (a relative sqlite path made absolute), else the embedded store."""
    given = os.environ.get(TRACKING_ENV)
    if not given:
        return embedded_uri(root)
    prefix = "sqlite:///"
    if given.startswith(prefix) and not given[len(prefix) :].startswith("/"):
        return prefix + str((Path.cwd() / given[len(prefix) :]).resolve())
    return given


def artifact_root(root: Path) -> str | None:
    """Artifacts beside the embedded store; a user-given tracking server keeps its own artifact store.

    (mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI, so "embedded" is judged by the URI, not the variable.)
    """
    if tracking_uri(root) != embedded_uri(root):
        return None
    return (Path(root).resolve() / "mlartifacts").as_uri()


def configure(root: Path) -> str:
    import mlflow

    uri = tracking_uri(root)
    prepare_store(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


_UNREACHABLE = ("Max retries exceeded", "Connection refused", "Failed to establish a new connection",
                "RemoteDisconnected", "Connection aborted", "Read timed out")  # fmt: skip


def unreachable_server(err: BaseException) -> str | None:
    """The message for a tracking server that stopped answering (None when ``err`` is something else)."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return None
    seen, chain = set(), err
    while chain is not None and id(chain) not in seen:
        seen.add(id(chain))
        text = str(chain)
        if any(mark in text for mark in _UNREACHABLE):
            reason = next(mark for mark in _UNREACHABLE if mark in text).lower()
            return (f"the MLflow tracking server {uri} cannot be reached ({reason}): start it again (`make "
                    "tracking-server`) or point MLFLOW_TRACKING_URI at a running one, then rerun the stage: training "
                    "resumes from its last checkpoint and the rerun closes the run left open as KILLED")  # fmt: skip
        chain = chain.__cause__ or chain.__context__
    return None


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other stores and in-memory SQLite)."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    path = uri[len(prefix) :].split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path) if Path(path).is_absolute() else Path.cwd() / path


_ready_stores: set[str] = set()


def _schema_revision(path: Path) -> str | None:
    """The alembic revision a SQLite store is at (None: no store or no schema yet), read without MLflow."""
    import sqlite3

    if not path.exists():
        return None
    try:
        with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=30)) as con:
            row = con.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error:
        return None
    return row[0] if row else None


def prepare_store(uri: str) -> None:
    """Create or migrate a SQLite store's schema once, under a lock file beside the db (``mlflow.db.lock``).

    MLflow creates the tables on first use without a lock: stages started together on a new mlflow.db all run the
    migrations, and all but one die with "duplicate column name". Whoever holds the lock builds the schema; the
    others wait, then find it at MLflow's head revision. The lock is an OS lock (released if its holder dies), so it
    never goes stale.
    """
    path = sqlite_file(uri)
    if path is None or uri in _ready_stores:
        return
    from filelock import FileLock, Timeout
    from mlflow.exceptions import MlflowException
    from mlflow.store.db.utils import _get_latest_schema_revision
    from mlflow.tracking import MlflowClient

    head = _get_latest_schema_revision()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(f"{path}.lock").acquire(timeout=STORE_LOCK_TIMEOUT_S):
            if _schema_revision(path) != head:
                client = MlflowClient(tracking_uri=uri, registry_uri=uri)
                client.search_experiments(max_results=1)  # builds the tracking store: creates/migrates the tables
                client.search_registered_models(max_results=1)  # and the registry's
    except Timeout as err:
        raise StoreError(
            f"waited {STORE_LOCK_TIMEOUT_S:.0f} s for {path}.lock: another process is still creating or migrating "
            f"the MLflow store {path}; wait for it to finish (its lock is released when it exits)"
        ) from err
    except MlflowException as err:
        raise StoreError(f"the MLflow store {path} cannot be used: {err.message}") from err
    _ready_stores.add(uri)


# The MLflow UI opens a "custom model development" experiment on its training runs (not on the GenAI overview)
EXPERIMENT_KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
DESCRIPTION_TAG = "mlflow.note.content"  # the description the UI shows (markdown)


def experiment_description(dataset: str) -> str:
    return (f"seqrerank runs on the `{dataset}` data: stage 1 retrievers (`stage` = retrieval), stage 2 rerankers "
            "(rerank) and two-stage evaluations (pipeline), each pipeline a parent run with its stages as children. "
            "Registered models: `<data>-retriever`, `<data>-reranker`, `<data>-two-stage`; the `champion` alias is "
            "what pipelines and `make serve` use.")  # fmt: skip


def experiment_id(name: str, root: Path) -> str:
    """One experiment per dataset, created on first use (with artifacts in the repo for the embedded store)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        if found.tags.get(EXPERIMENT_KIND_TAG) is None:  # made before the tag: open it on the runs as well
            mlflow.MlflowClient().set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
        return found.experiment_id
    base = artifact_root(root)
    tags = {EXPERIMENT_KIND_TAG: MODEL_TRAINING, DESCRIPTION_TAG: experiment_description(name)}
    try:
        return mlflow.create_experiment(name, artifact_location=f"{base}/{name}" if base else None, tags=tags)
    except MlflowException as err:  # a stage started at the same moment created it first
        found = mlflow.get_experiment_by_name(name)
        if err.error_code != "RESOURCE_ALREADY_EXISTS" or found is None:
            raise
        return found.experiment_id


RUN_KEY_TAG = "run.key"  # the run name without its start time: what reruns of the same work share


def run_name(method: str, dataset: str, seed: int) -> str:
    """What the run is (``lrurec-ml-100k-seed42``); :func:`training_run` adds its start time to make it unique."""
    return f"{method}-{dataset}-seed{seed}"


def unique_name(key: str) -> str:
    """``lrurec-ml-100k-seed42-1130-140205``: two runs of the same method, data and seed get different legends (in a
    DVC experiment, its name comes before the time: parallel sweep workers start the same stage at once)."""
    sweep = os.environ.get("DVC_EXP_NAME")
    return f"{key}-{f'{sweep}-' if sweep else ''}{time.strftime('%m%d-%H%M%S')}"


def git_commit(root: Path) -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True,
                             timeout=10).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()  # fmt: skip
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def dvc_md5(path: Path) -> str:
    """The md5 DVC records for a file output (plain md5 of the bytes in DVC 3)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def data_hash_tags(files: dict[str, Path]) -> dict[str, str]:
    return {f"data.{name}.md5": dvc_md5(path) for name, path in files.items() if Path(path).exists()}


def flatten_params(cfg_dump: dict[str, Any]) -> dict[str, Any]:
    """{"data": {"min_uc": 5}} -> {"data.min_uc": 5}; every resolved key becomes an MLflow param."""
    flat: dict[str, Any] = {}
    for key, value in cfg_dump.items():
        if isinstance(value, dict):
            for sub, inner in value.items():
                flat[f"{key}.{sub}"] = inner
        else:
            flat[key] = value
    return flat


def config_params(cfg_dump: dict[str, Any], sections: Iterable[str]) -> dict[str, Any]:
    """The flattened params of the named top-level sections (``seed`` is a plain key)."""
    return flatten_params({name: cfg_dump[name] for name in sections})


def process_tags() -> dict[str, str]:
    """Who owns a run: host, pid and the process's start time (a pid reused after a reboot or wrap-around starts
    later, so it is not mistaken for the run's process)."""
    import psutil

    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()),
            PROCESS_START_TAG: f"{psutil.Process().create_time():.3f}"}  # fmt: skip


DVC_EXPERIMENT_TAG = "dvc.experiment"  # the `dvc exp run` (queued or not) a run belongs to: one sweep, one table
DVC_BASELINE_TAG = "dvc.baseline_rev"


def dvc_experiment_tags() -> dict[str, str]:
    """The DVC experiment's name and baseline commit, which DVC puts in the environment of the stages it runs."""
    found = {DVC_EXPERIMENT_TAG: os.environ.get("DVC_EXP_NAME", ""),
             DVC_BASELINE_TAG: os.environ.get("DVC_EXP_BASELINE_REV", "")}  # fmt: skip
    return {key: value for key, value in found.items() if value}


def owner_state(tags: dict[str, str]) -> str:
    """``alive``, ``gone`` (its process ended on this host), ``elsewhere`` (another host: cannot tell) or
    ``unknown`` (no process tags: started before they were recorded, or by another tool)."""
    import psutil

    if PID_TAG not in tags or HOST_TAG not in tags:
        return "unknown"
    if tags[HOST_TAG] != socket.gethostname():
        return "elsewhere"
    try:
        proc = psutil.Process(int(tags[PID_TAG]))
        if proc.status() == psutil.STATUS_ZOMBIE:  # ended, not yet reaped by its parent
            return "gone"
        started = tags.get(PROCESS_START_TAG)
        if started and abs(proc.create_time() - float(started)) > _START_TIME_TOLERANCE_S:
            return "gone"  # the pid now belongs to another process
    except psutil.NoSuchProcess:
        return "gone"
    except (psutil.AccessDenied, ValueError):
        return "alive"  # cannot tell: leave it alone
    return "alive"


@dataclass
class RunningRun:
    """A run in status RUNNING and what is known of its process."""

    run: Any
    experiment: str
    state: str


def running_runs(client: Any, experiment_ids: Iterable[str] | None = None) -> list[RunningRun]:
    """Every RUNNING run of the given experiments (default: all), with its owner's state."""
    ids = list(experiment_ids) if experiment_ids is not None else None
    experiments = {e.experiment_id: e.name for e in all_experiments(client)}
    ids = list(experiments) if ids is None else ids
    found, token = [], None
    while ids:
        page = client.search_runs(ids, filter_string="attributes.status = 'RUNNING'", max_results=1000,
                                  page_token=token)  # fmt: skip
        for run in page:
            exp = experiments.get(run.info.experiment_id, run.info.experiment_id)
            found.append(RunningRun(run, exp, owner_state(run.data.tags)))
        token = page.token
        if not token:
            break
    return found


def all_experiments(client: Any) -> list[Any]:
    """Every active experiment, page by page."""
    experiments, token = [], None
    while True:
        page = client.search_experiments(max_results=1000, page_token=token)
        experiments.extend(page)
        token = page.token
        if not token:
            return experiments


def fail_pending_models(client: Any, run: Any) -> list[str]:
    """Mark the logged models a run left PENDING as FAILED (MLflow finalizes them only on an ``Exception``, not on
    a signal or a kill); returns their ids."""
    failed = []
    for model in client.search_logged_models([run.info.experiment_id],
                                             filter_string=f"source_run_id = '{run.info.run_id}'"):  # fmt: skip
        if str(model.status) == "PENDING":
            client.finalize_logged_model(model.model_id, "FAILED")
            failed.append(model.model_id)
    return failed


def _last_activity_ms(client: Any, run: Any) -> int:
    """When an orphaned run last logged anything (its metrics; system metrics every few seconds): its end time."""
    last = run.info.start_time or 0
    for key in run.data.metrics:
        for metric in client.get_metric_history(run.info.run_id, key):
            last = max(last, metric.timestamp)
    return last


def close_orphan(client: Any, run: Any, closed_by: str, resumed_by: str | None = None) -> None:
    """End a run whose process is gone as KILLED: the reason, the run that resumed it, its PENDING models failed,
    and its end time at its last logged metric."""
    tags = run.data.tags
    reason = (f"process {tags.get(PID_TAG, '?')} on {tags.get(HOST_TAG, '?')} ended without closing the run "
              f"(kill -9, a crash or a reboot); closed by {closed_by}")  # fmt: skip
    client.set_tag(run.info.run_id, END_REASON_TAG, reason)
    if resumed_by:
        client.set_tag(run.info.run_id, RESUMED_BY_TAG, resumed_by)
    fail_pending_models(client, run)
    client.set_terminated(run.info.run_id, "KILLED", end_time=_last_activity_ms(client, run))


def _same_training(tags: dict[str, str], name: str, other: Any) -> bool:
    """The resume fingerprint when the run has one; else the same stage under the same run name."""
    theirs = other.data.tags
    if tags.get(FINGERPRINT_TAG):
        return theirs.get(FINGERPRINT_TAG) == tags[FINGERPRINT_TAG]
    key = theirs.get(RUN_KEY_TAG, other.info.run_name)  # runs made before unique names: the name was the key
    return key == name and theirs.get("stage") == tags.get("stage")


def close_orphans_of(client: Any, exp_id: str, name: str, tags: dict[str, str], run_id: str) -> list[str]:
    """Close the runs of this same training left RUNNING by a process that is gone; they point to ``run_id``."""
    closed = []
    for found in running_runs(client, [exp_id]):
        other = found.run
        if other.info.run_id == run_id or found.state != "gone" or not _same_training(tags, name, other):
            continue
        close_orphan(client, other, f"run {run_id}, the next start of the same training", resumed_by=run_id)
        log.warning("closed run %s as KILLED: its process %s is gone (killed or crashed); run %s takes over",
                    other.info.run_id, other.data.tags.get(PID_TAG), run_id)  # fmt: skip
        closed.append(other.info.run_id)
    return closed


class _HeldBack:
    """A stop signal that arrived inside ``uninterrupted()``: raised when the write it interrupted has finished."""

    depth = 0
    signum: int | None = None


@contextmanager
def uninterrupted() -> Iterator[None]:
    """Hold SIGTERM / SIGINT back while the main thread writes to the MLflow store, then act on them.

    A stop raised in the middle of MLflow's SQLAlchemy session (the per-epoch metrics) leaves that session's SQLite
    transaction open: SQLAlchemy discards a connection an exit exception went through without rolling it back, and
    the exception's frames keep it alive, so ending the run as KILLED waited 20 s on "database is locked" and failed
    (seen in 1 of about 15 stops during training). The write is milliseconds; the stop waits for it.
    """
    _HeldBack.depth += 1
    try:
        yield
    finally:
        _HeldBack.depth -= 1
    if _HeldBack.depth == 0 and _HeldBack.signum is not None:
        signum, _HeldBack.signum = _HeldBack.signum, None
        raise Interrupted(signum)


@contextmanager
def stop_signals_raise() -> Iterator[None]:
    """While a run is open, SIGTERM and SIGINT raise :class:`Interrupted` so the run can be ended cleanly (inside
    ``uninterrupted()``, once its write is done); a second signal during that cleanup kills the process at once (the
    next start closes the run then)."""
    watched = (signal.SIGTERM, signal.SIGINT)
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in watched}
    # An ignored signal stays ignored (nohup; SIGINT of a background job in a script).
    caught = [signum for signum in watched if previous[signum] is not signal.SIG_IGN]

    def force(signum: int, frame: Any) -> None:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    def stop(signum: int, frame: Any) -> None:
        for each in caught:
            signal.signal(each, force)
        if _HeldBack.depth:
            _HeldBack.signum = signum
            return
        raise Interrupted(signum)

    for signum in caught:
        signal.signal(signum, stop)
    try:
        yield
    finally:
        _HeldBack.signum = None  # a stop held back by a write that then failed: that failure ended the run
        for signum in caught:
            handler = previous[signum]
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def _ending(err: BaseException) -> tuple[str, str]:
    """The status and reason of a run ended by ``err``."""
    if isinstance(err, Interrupted):
        return "KILLED", f"stopped by {err.signal_name} (process {os.getpid()} on {socket.gethostname()})"
    if isinstance(err, KeyboardInterrupt):
        return "KILLED", "interrupted (KeyboardInterrupt)"
    if isinstance(err, SystemExit):
        return ("FINISHED", "") if err.code in (0, None) else ("FAILED", f"exited with code {err.code}")
    return "FAILED", f"{type(err).__name__}: {err}"[:_MAX_TAG_CHARS]


def _end_active_run(run: Any, err: BaseException) -> None:
    """End the active run after ``err``: the reason as a tag, its PENDING logged models failed. A failure here is
    logged, not raised, so that ``err`` stays the error the user sees (the next start closes the run then)."""
    import mlflow

    status, reason = _ending(err)
    try:
        client = mlflow.MlflowClient()
        if reason:
            client.set_tag(run.info.run_id, END_REASON_TAG, reason)
        failed = fail_pending_models(client, run)
        if failed:
            log.warning("logged model(s) %s of run %s marked FAILED", ", ".join(failed), run.info.run_id)
    except Exception as cleanup_err:  # noqa: BLE001 - the original error matters more
        log.warning("could not record why run %s ended: %s", run.info.run_id, cleanup_err)
    try:
        mlflow.end_run(status)
    except Exception as cleanup_err:  # noqa: BLE001
        log.error("could not end run %s as %s: %s; `recsys doctor --close` will", run.info.run_id, status,
                  cleanup_err)  # fmt: skip
        return
    if isinstance(err, Interrupted):
        err.closed_run = run.info.run_id
    if status != "FINISHED":
        log.warning("MLflow run %s ended as %s: %s", run.info.run_id, status, reason)


DATASET_RACE_TRIES = 4


def log_prepared_data(prepared: Path, tags: dict[str, str]) -> None:
    """The prepared data as the active run's dataset input (the UI's Dataset column): named after its folder, with
    the lineage's data version as its digest, so runs on the same data show the same dataset."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.exceptions import MlflowException

    from recsys_core.lineage import DATA_VERSION_TAG

    source = resolve_dataset_source(Path(prepared).resolve().as_uri())
    dataset = MetaDataset(source, name=Path(prepared).name, digest=tags.get(DATA_VERSION_TAG) or None)
    context = "evaluation" if tags.get("stage") == "pipeline" else "training"
    for attempt in range(DATASET_RACE_TRIES):
        try:
            mlflow.log_input(dataset, context=context)
            return
        except MlflowException as err:
            # The store inserts the dataset on its first use in the experiment; two stages doing that at the same
            # moment (queued sweeps) race on its unique key. The loser links the row the winner made.
            if attempt == DATASET_RACE_TRIES - 1 or not lost_insert_race(err):
                raise
            log.info("the dataset %s was being recorded by another run at the same moment: linking it again",
                     dataset.name)  # fmt: skip
            time.sleep(0.2 * (attempt + 1))


@contextmanager
def training_run(root: Path, experiment: str, name: str, params: dict[str, Any], tags: dict[str, str],
                 parent_run_id: str | None = None, prepared: Path | None = None,
                 config: dict[str, Any] | None = None) -> Iterator[Any]:  # fmt: skip
    """An MLflow run named ``name`` plus its start time, with params, tags and system metrics; nested under
    ``parent_run_id`` when given; with ``prepared``, that prepared data is the run's dataset input; with ``config``
    (the resolved params.yaml), that config as the artifact ``config.yaml``.

    It ends FINISHED, FAILED (an error, recorded in ``end_reason``) or KILLED (SIGTERM/SIGINT), never left RUNNING
    by a stage that could clean up; on start it closes the runs of the same training whose process is gone.
    """
    import mlflow

    configure(root)
    exp_id = experiment_id(experiment, root)
    all_tags = {**tags, **process_tags(), **dvc_experiment_tags(), RUN_KEY_TAG: name}
    # `mlflow run` exports MLFLOW_RUN_ID for its project run; starting a run with it set would resume that run
    # instead of creating ours. Take it as our parent instead.
    project_run = os.environ.pop("MLFLOW_RUN_ID", None)
    parent_run_id = parent_run_id or project_run
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    with stop_signals_raise():
        run = None
        try:
            run = mlflow.start_run(experiment_id=exp_id, run_name=unique_name(name), tags=all_tags,
                                   log_system_metrics=False)  # fmt: skip
            start_monitor(run.info.run_id)  # CPU, memory, GPU: MLflow's monitor without host disk and network
            items = list(params.items())
            for start in range(0, len(items), 100):
                mlflow.log_params({k: "" if v is None else v for k, v in items[start : start + 100]})
            log.info("MLflow run %s (%s) in experiment %r at %s", run.info.run_id, name, experiment,
                     tracking_uri(root))  # fmt: skip
            try:
                closed = close_orphans_of(mlflow.MlflowClient(), exp_id, name, all_tags, run.info.run_id)
            except Exception as err:  # noqa: BLE001 - housekeeping must not stop the training
                log.warning("could not close orphaned runs of this training (`recsys doctor` lists them): %s", err)
                closed = []
            if closed:
                mlflow.set_tag(CLOSED_ORPHANS_TAG, ",".join(closed))
            if prepared is not None:
                log_prepared_data(prepared, all_tags)
            if config is not None:
                mlflow.log_dict(config, "config.yaml")
            yield run
        except BaseException as err:
            run = run or mlflow.active_run()  # a signal inside start_run: the run may exist already
            if run is not None:
                _end_active_run(run, err)
            raise
        mlflow.end_run("FINISHED")


def epoch_logger(prefix: str = "") -> Any:
    """A training-loop callback that logs each epoch's record as metrics with ``step`` = epoch."""
    import mlflow

    def log_epoch(epoch: int, record: dict[str, float]) -> None:
        metrics = {}
        for key, value in record.items():
            if key == "epoch" or value != value:  # skip the step itself and NaN
                continue
            # Curves: `epoch_val/...`, `train/...`; the final `val/...` and `test/...` are logged once at the end.
            name = "epoch_val/" + key[4:] if key.startswith("val_") else f"train/{key}"
            metrics[prefix + name] = float(value)
        with uninterrupted():
            mlflow.log_metrics(metrics, step=epoch)

    return log_epoch
