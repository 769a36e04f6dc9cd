"""Copy one MLflow store into another (the embedded SQLite store into the team's tracking server).

Why our own copier: mlflow-export-import (1.2.0, the maintained tool) predates MLflow 3's logged models, and every
model this platform registers is one (``models:/m-...`` sources, metrics linked to the model). This copies, through
the public ``MlflowClient`` API of both stores: experiments (tags, description), runs (params, tags, every metric's
whole history, dataset and model inputs, artifacts, status and times), logged models (params, tags, linked metrics,
artifacts), registered models, their versions in order (tags, description, the same version numbers) and aliases.

New ids are made by the destination, so every tag whose value is a source run id or logged model id (the parent run,
``retriever.run_id``, ``resumed_by``, ...) is rewritten to the new id. Each copied object carries
``migration.source_*`` tags: a second migration skips what is done and finishes what an interrupted one left.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recsys_core.errors import RecsysError

log = logging.getLogger(__name__)

SOURCE_RUN = "migration.source_run_id"
SOURCE_MODEL = "migration.source_model_id"
DONE = "migration.complete"
# MLflow's REST limits per log_batch call (metrics 1000, params 100, tags 100 in all)
BATCH_METRICS, BATCH_PARAMS, BATCH_TAGS = 1000, 100, 100
# set by MLflow itself on the destination; copying them would point at source objects
SKIP_MODEL_TAGS = ("mlflow.modelVersions",)
SKIP_REGISTERED_TAGS = ("mlflow.prompt.",)


class MigrationError(RecsysError):
    pass


@dataclass
class Summary:
    experiments: int = 0
    runs_copied: int = 0
    runs_skipped: int = 0
    models_copied: int = 0
    versions_copied: int = 0
    versions_skipped: int = 0
    aliases: int = 0
    not_copied: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"experiments: {self.experiments}",
               f"runs: {self.runs_copied} copied, {self.runs_skipped} already there",
               f"logged models: {self.models_copied} copied",
               f"model versions: {self.versions_copied} copied, {self.versions_skipped} already there; "
               f"aliases set: {self.aliases}"]  # fmt: skip
        return out + [f"not copied: {why}" for why in self.not_copied]


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _paged(search, **kwargs) -> list:
    """Every page of a paged MLflow search."""
    found, token = [], None
    while True:
        page = search(**kwargs, page_token=token)
        found += list(page)
        token = page.token
        if not token:
            return found


def _logged_model_of(version: Any) -> str | None:
    """The logged model behind a model version: its model_id, else a ``models:/m-...`` source."""
    if version.model_id:
        return version.model_id
    match = re.fullmatch(r"models:/(m-[0-9a-f]+)", version.source or "")
    return match.group(1) if match else None


def _version_key(version: Any) -> str:
    return _logged_model_of(version) or f"run:{version.run_id}"


class IdMap:
    """Source ids -> destination ids; rewrites tag values and MLmodel files that name a source run or model."""

    def __init__(self) -> None:
        self.runs: dict[str, str] = {}
        self.models: dict[str, str] = {}

    def value(self, text: str) -> str:
        return self.runs.get(text) or self.models.get(text) or text

    def text(self, text: str) -> str:
        ids = {**self.runs, **self.models}
        if not ids:
            return text
        return re.sub("|".join(map(re.escape, ids)), lambda m: ids[m.group(0)], text)


class Migration:
    def __init__(self, source_uri: str, dest_uri: str) -> None:
        from mlflow import MlflowClient

        if source_uri == dest_uri:
            raise MigrationError(f"the source and destination stores are the same ({source_uri})")
        self.source_uri, self.dest_uri = source_uri, dest_uri
        self.src = MlflowClient(tracking_uri=source_uri, registry_uri=source_uri)
        self.dst = MlflowClient(tracking_uri=dest_uri, registry_uri=dest_uri)
        self.ids = IdMap()
        self.summary = Summary()
        self.experiments: dict[str, str] = {}
        self.source_models: dict[str, Any] = {}

    # -- experiments ------------------------------------------------------------------------------------------
    def copy_experiments(self) -> list[Any]:
        from mlflow.entities import ViewType

        sources = _paged(self.src.search_experiments, view_type=ViewType.ACTIVE_ONLY)
        for exp in sources:
            found = self.dst.get_experiment_by_name(exp.name)
            if found is not None and found.lifecycle_stage != "active":
                raise MigrationError(f"experiment {exp.name!r} is deleted on {self.dest_uri}: restore it "
                                     f"(`mlflow experiments restore --experiment-id {found.experiment_id}`) or "
                                     "delete it for good (`mlflow gc`), then migrate again")  # fmt: skip
            if found is None:
                dest_id = self.dst.create_experiment(exp.name, tags=exp.tags)
            else:
                dest_id = found.experiment_id
                for key, value in exp.tags.items():
                    if found.tags.get(key) != value:
                        self.dst.set_experiment_tag(dest_id, key, value)
            self.experiments[exp.experiment_id] = dest_id
        self.summary.experiments = len(sources)
        return sources

    # -- runs -------------------------------------------------------------------------------------------------
    def _dest_runs(self) -> dict[str, Any]:
        """Destination runs made by an earlier migration, by their source run id."""
        from mlflow.entities import ViewType

        runs = _paged(self.dst.search_runs, experiment_ids=sorted(set(self.experiments.values())),
                      filter_string=f"tags.`{SOURCE_RUN}` LIKE '%'", run_view_type=ViewType.ACTIVE_ONLY)  # fmt: skip
        return {run.data.tags[SOURCE_RUN]: run for run in runs}

    def _dest_models(self) -> dict[str, Any]:
        models = _paged(self.dst.search_logged_models, experiment_ids=sorted(set(self.experiments.values())))
        return {m.tags[SOURCE_MODEL]: m for m in models if SOURCE_MODEL in m.tags}

    def plan_runs(self) -> list[tuple[Any, Any]]:
        """(source run, destination run) for every finished source run; creates the missing destination runs."""
        from mlflow.entities import ViewType

        runs = _paged(self.src.search_runs, experiment_ids=list(self.experiments),
                      run_view_type=ViewType.ACTIVE_ONLY)  # fmt: skip
        running = [r for r in runs if r.info.status in ("RUNNING", "SCHEDULED")]
        running_ids = {r.info.run_id for r in running}
        if running:
            names = ", ".join(f"{r.info.run_name} ({r.info.run_id})" for r in running[:5])
            self.summary.not_copied.append(
                f"{len(running)} run(s) still RUNNING ({names}): let them finish or close them (`recsys doctor "
                "--close`), then migrate again")  # fmt: skip
        existing = self._dest_runs()
        pairs = []
        for run in sorted((r for r in runs if r.info.run_id not in running_ids), key=lambda r: r.info.start_time or 0):
            dest = existing.get(run.info.run_id)
            if dest is None:
                dest = self.dst.create_run(self.experiments[run.info.experiment_id], start_time=run.info.start_time,
                                           tags={SOURCE_RUN: run.info.run_id}, run_name=run.info.run_name)  # fmt: skip
            self.ids.runs[run.info.run_id] = dest.info.run_id
            pairs.append((run, dest))
        return pairs

    def plan_models(self) -> list[tuple[Any, Any]]:
        """(source logged model, destination logged model) for every logged model of a copied run."""
        sources = _paged(self.src.search_logged_models, experiment_ids=list(self.experiments))
        existing = self._dest_models()
        pairs = []
        for model in sources:
            if model.source_run_id not in self.ids.runs:
                continue  # its run was deleted or is still running
            dest = existing.get(model.model_id)
            if dest is None:
                tags = {k: v for k, v in model.tags.items() if k not in SKIP_MODEL_TAGS}
                dest = self.dst.create_logged_model(self.experiments[model.experiment_id], name=model.name,
                                                    source_run_id=self.ids.runs[model.source_run_id],
                                                    tags={**tags, SOURCE_MODEL: model.model_id},
                                                    params=model.params, model_type=model.model_type)  # fmt: skip
            self.ids.models[model.model_id] = dest.model_id
            self.source_models[model.model_id] = model
            pairs.append((model, dest))
        return pairs

    def copy_model(self, model: Any, dest: Any) -> None:
        from mlflow.entities import LoggedModelStatus

        if str(dest.status) == str(LoggedModelStatus.READY) and dest.tags.get(DONE) == "1":
            return
        with tempfile.TemporaryDirectory(prefix="recsys-migrate-") as tmp:
            local = self._download(model.artifact_location, tmp)
            self._rewrite_mlmodel(local)
            self.dst.log_model_artifacts(dest.model_id, str(local))
        ready = str(model.status) == str(LoggedModelStatus.READY)  # a model left PENDING by a dead run failed
        self.dst.finalize_logged_model(dest.model_id, LoggedModelStatus.READY if ready else LoggedModelStatus.FAILED)
        self.dst.set_logged_model_tags(dest.model_id, {DONE: "1"})
        self.summary.models_copied += 1

    def copy_run(self, run: Any, dest: Any) -> None:
        from mlflow.entities import LoggedModelInput, LoggedModelOutput, Metric, Param, RunTag

        if dest.data.tags.get(DONE) == "1":
            self.summary.runs_skipped += 1
            return
        new_id = dest.info.run_id
        params = [Param(k, v) for k, v in run.data.params.items()]
        for chunk in _chunks(params, BATCH_PARAMS):
            self.dst.log_batch(new_id, params=chunk)
        tags = [RunTag(k, self.ids.value(v)) for k, v in run.data.tags.items()]
        for chunk in _chunks(tags, BATCH_TAGS):
            self.dst.log_batch(new_id, tags=chunk)
        metrics = [Metric(m.key, m.value, m.timestamp, m.step)
                   for key in run.data.metrics for m in self.src.get_metric_history(run.info.run_id, key)]  # fmt: skip
        for chunk in _chunks(metrics, BATCH_METRICS):
            self.dst.log_batch(new_id, metrics=chunk)
        self._copy_model_metrics(run, new_id)
        inputs = run.inputs
        models_in = [LoggedModelInput(self.ids.models[m.model_id])
                     for m in (inputs.model_inputs if inputs else []) if m.model_id in self.ids.models]  # fmt: skip
        datasets = list(inputs.dataset_inputs) if inputs else []
        if datasets or models_in:
            self.dst.log_inputs(new_id, datasets=datasets or None, models=models_in or None)
        outputs = [LoggedModelOutput(self.ids.models[m.model_id], m.step)
                   for m in (run.outputs.model_outputs if run.outputs else []) if m.model_id in self.ids.models]  # fmt: skip
        if outputs:
            self.dst.log_outputs(new_id, outputs)
        with tempfile.TemporaryDirectory(prefix="recsys-migrate-") as tmp:
            if self.src.list_artifacts(run.info.run_id):
                self.dst.log_artifacts(new_id, str(self._download(run.info.artifact_uri, tmp)))
        self.dst.set_terminated(new_id, status=run.info.status, end_time=run.info.end_time)
        self.dst.set_tag(new_id, DONE, "1")
        self.summary.runs_copied += 1

    def _copy_model_metrics(self, run: Any, new_run_id: str) -> None:
        """Metrics linked to a logged model of this run (MLflow 3: a version's page shows these)."""
        from mlflow.entities import Metric

        for model in run.outputs.model_outputs if run.outputs else []:
            source = self.source_models.get(model.model_id)
            if source is None:
                continue
            linked = [Metric(m.key, m.value, m.timestamp, m.step, model_id=self.ids.models[model.model_id],
                             dataset_name=m.dataset_name, dataset_digest=m.dataset_digest)
                      for m in source.metrics or []]  # fmt: skip
            for chunk in _chunks(linked, BATCH_METRICS):
                self.dst.log_batch(new_run_id, metrics=chunk)

    # -- the registry -----------------------------------------------------------------------------------------
    def copy_registry(self) -> None:
        for registered in _paged(self.src.search_registered_models):
            self._copy_registered(registered)

    def _copy_registered(self, registered: Any) -> None:
        from mlflow.exceptions import MlflowException

        name = registered.name
        tags = {k: v for k, v in registered.tags.items() if not k.startswith(SKIP_REGISTERED_TAGS)}
        try:
            self.dst.get_registered_model(name)
        except MlflowException:
            self.dst.create_registered_model(name, tags=tags, description=registered.description)
        # (one store says version 1, the other "1")
        dest_versions = {int(v.version): v
                         for v in _paged(self.dst.search_model_versions, filter_string=f"name = '{name}'")}  # fmt: skip
        versions = sorted(_paged(self.src.search_model_versions, filter_string=f"name = '{name}'"),
                          key=lambda v: int(v.version))  # fmt: skip
        for version in versions:
            there = dest_versions.get(int(version.version))
            if there is not None:
                if there.tags.get(SOURCE_MODEL) != _version_key(version):
                    raise MigrationError(
                        f"registered model {name!r} version {version.version} on {self.dest_uri} was not migrated "
                        "from this store, so version numbers (and the lineage tags that name them) would not "
                        "match: migrate into a server without this model, or rename or delete it there first")  # fmt: skip
                self.summary.versions_skipped += 1
                continue
            if int(version.version) != len(dest_versions) + 1:
                raise MigrationError(f"registered model {name!r} on {self.dest_uri} has versions "
                                     f"{sorted(dest_versions)}, cannot give version {version.version} its number")  # fmt: skip
            dest_versions[int(version.version)] = self._copy_version(version)
            self.summary.versions_copied += 1
        for alias, number in registered.aliases.items():
            self.dst.set_registered_model_alias(name, alias, number)
            self.summary.aliases += 1

    def _copy_version(self, version: Any) -> Any:
        source_model = _logged_model_of(version)
        model_id = self.ids.models.get(source_model) if source_model else None
        if source_model and model_id is None:
            raise MigrationError(f"{version.name} version {version.version} is logged model {source_model}, "
                                 "whose run was not copied (deleted or still running)")  # fmt: skip
        source = f"models:/{model_id}" if model_id else self._source_of(version)
        tags = {k: self.ids.value(v) for k, v in version.tags.items()}
        tags[SOURCE_MODEL] = _version_key(version)
        return self.dst.create_model_version(version.name, source, run_id=self.ids.runs.get(version.run_id),
                                             tags=tags, description=version.description, model_id=model_id)  # fmt: skip

    def _source_of(self, version: Any) -> str:
        """A version registered from a run's artifacts (``runs:/<id>/path``) points at the copied run."""
        match = re.match(r"runs:/([0-9a-f]+)/(.*)", version.source or "")
        if not match or match.group(1) not in self.ids.runs:
            raise MigrationError(f"{version.name} version {version.version}: cannot copy its source "
                                 f"{version.source!r} (only logged models and runs:/ sources are copied)")  # fmt: skip
        return f"runs:/{self.ids.runs[match.group(1)]}/{match.group(2)}"

    # -- helpers ----------------------------------------------------------------------------------------------
    def _download(self, artifact_uri: str, into: str) -> Path:
        from mlflow.artifacts import download_artifacts

        return Path(download_artifacts(artifact_uri=artifact_uri, dst_path=into, tracking_uri=self.source_uri))

    def _rewrite_mlmodel(self, folder: Path) -> None:
        for mlmodel in folder.rglob("MLmodel"):
            text = mlmodel.read_text()
            mlmodel.write_text(self.ids.text(text))

    def run(self) -> Summary:
        from tqdm import tqdm

        # one progress bar per kind of object, not one per artifact folder and a link per run
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self.copy_experiments()
        runs = self.plan_runs()
        models = self.plan_models()
        for model, dest in tqdm(models, desc="logged models", unit="model", disable=None):
            self.copy_model(model, dest)
        for run, dest in tqdm(runs, desc="runs", unit="run", disable=None):
            self.copy_run(run, dest)
        self.copy_registry()
        return self.summary


def migrate(source_uri: str, dest_uri: str) -> Summary:
    """Copy the store at ``source_uri`` into ``dest_uri``; safe to repeat (see the module's docstring)."""
    return Migration(source_uri, dest_uri).run()
