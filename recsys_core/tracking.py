"""MLflow tracking: where runs go, how they are named, and what every training run records.

Embedded default: ``sqlite:///<repo>/mlflow.db`` with artifacts under ``<repo>/mlartifacts`` (both git-ignored, never
DVC outputs); ``MLFLOW_TRACKING_URI`` overrides. The URI is absolute, so a run started from a DVC experiment's
temporary copy of the repository still lands in the repository's store.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TRACKING_ENV = "MLFLOW_TRACKING_URI"
ROOT_ENV = "RECSYS_PROJECT_ROOT"  # DVC experiments run in a temporary copy; this points back at the real repo


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
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def experiment_id(name: str, root: Path) -> str:
    """One experiment per dataset, created on first use (with artifacts in the repo for the embedded store)."""
    import mlflow

    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    base = artifact_root(root)
    return mlflow.create_experiment(name, artifact_location=f"{base}/{name}" if base else None)


def run_name(method: str, dataset: str, seed: int) -> str:
    return f"{method}-{dataset}-seed{seed}"


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


@contextmanager
def training_run(root: Path, experiment: str, name: str, params: dict[str, Any], tags: dict[str, str],
                 parent_run_id: str | None = None) -> Iterator[Any]:  # fmt: skip
    """An MLflow run with params, tags and system metrics; nested under ``parent_run_id`` when given."""
    import mlflow

    configure(root)
    exp_id = experiment_id(experiment, root)
    all_tags = dict(tags)
    # `mlflow run` exports MLFLOW_RUN_ID for its project run; starting a run with it set would resume that run
    # instead of creating ours. Take it as our parent instead.
    project_run = os.environ.pop("MLFLOW_RUN_ID", None)
    parent_run_id = parent_run_id or project_run
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    with mlflow.start_run(experiment_id=exp_id, run_name=name, tags=all_tags, log_system_metrics=True) as run:
        items = list(params.items())
        for start in range(0, len(items), 100):
            mlflow.log_params({k: "" if v is None else v for k, v in items[start : start + 100]})
        log.info("MLflow run %s (%s) in experiment %r at %s", run.info.run_id, name, experiment, tracking_uri(root))
        yield run


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
        mlflow.log_metrics(metrics, step=epoch)

    return log_epoch
