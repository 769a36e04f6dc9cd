"""`recsys compare --dataset X`: for each data setting, the champions (the versions the pipeline and `make serve`
use) and the latest finished runs of each stage and method, validation and test NDCG / Recall at every K, mean and
standard deviation over seeds where a method has runs on several, and a two-stage run's paired difference against
retrieval alone; `--with REF` adds chosen runs. K above the length of a ranked list is marked, not shown.

`recsys compare --sweep`: the latest runs per DVC experiment (the runs of `dvc exp run`, queued or not, carry its
name in the tag `dvc.experiment`), so a sweep of settings reads as one table.

`recsys compare RUN_A RUN_B`: B minus A on the same users and targets, paired per user (95% bootstrap interval,
p-value), from the per-user results every evaluation logs. A run is named by its run id, a registry version
(`name/3`, `models:/name/3`) or an alias (`name@champion`); runs of other data, users or targets are refused."""

from __future__ import annotations

import argparse
import sys

from recsys_core import lineage, per_user, registry, tracking
from recsys_core.config import Config
from recsys_core.errors import ConfigError, LineageError, MissingArtifactError
from recsys_core.leaderboard import Entry, RunRecord, format_block, latest_per_seed
from stages.common import paths, run_stage

KIND_OF = {"retrieval": "retriever", "rerank": "reranker", "pipeline": "two-stage"}


def record(run) -> RunRecord:
    return RunRecord(run.info.run_id, run.data.tags.get("seed", "?"), run.data.metrics, run.info.start_time)


def finished_runs(client, dataset: str) -> list:
    import mlflow

    experiment = client.get_experiment_by_name(dataset)
    if experiment is None:
        raise MissingArtifactError(f"MLflow has no experiment {dataset!r} at {mlflow.get_tracking_uri()}; train first")
    return client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=5000)  # fmt: skip


def version_note(client, run_id: str) -> str:
    """``v3 champion``, ``v4`` or ``-``: the version the run registered and whether it holds the alias."""
    versions = client.search_model_versions(f"run_id = '{run_id}'")
    if not versions:
        return "-"
    version = versions[0]
    champion = champion_version(client, version.name) == int(version.version)
    return f"v{version.version}" + (" champion" if champion else "")


def method_entries(client, runs, sweep: bool = False) -> dict[str, list[Entry]]:
    """Per prepared data folder: one entry per (DVC experiment when ``sweep``,) stage, method and mode, holding the
    newest run of each seed."""
    groups: dict[tuple[str, str, str, str, str], list] = {}
    for run in runs:
        tags = run.data.tags
        stage, experiment = tags.get("stage", ""), tags.get(tracking.DVC_EXPERIMENT_TAG, "")
        if stage not in KIND_OF or (sweep and not experiment):
            continue
        key = (tags.get(lineage.PREPARED_TAG, "-"), experiment if sweep else "", stage, tags.get("method", ""),
               tags.get("rerank_mode", ""))  # fmt: skip
        groups.setdefault(key, []).append(record(run))
    out: dict[str, list[Entry]] = {}
    for (prepared, experiment, stage, method, mode), records in sorted(groups.items()):
        newest = latest_per_seed(records)
        label = f"{experiment + ': ' if experiment else ''}{stage}{f' ({mode})' if mode else ''} {method}"
        out.setdefault(prepared, []).append(Entry(label, newest, version_note(client, newest[0].run_id)))
    return out


def champion_entries(client, dataset: str) -> dict[str, list[Entry]]:
    """Per prepared data folder: the champion retriever, reranker and two-stage model of every data setting."""
    from mlflow.exceptions import MlflowException

    out: dict[str, list[Entry]] = {}
    for model in client.search_registered_models(f"name LIKE '{dataset}%'"):
        kind = next((k for k in registry.KINDS if model.name.endswith(f"-{k}")), None)
        prefix = model.name.removesuffix(f"-{kind}") if kind else ""
        if prefix != dataset and not prefix.startswith(f"{dataset}_min_rating"):  # `custom` is no `custom-shoes`
            continue
        try:
            version = client.get_model_version_by_alias(model.name, registry.CHAMPION)
        except MlflowException:
            continue
        if version is None or not version.run_id:
            continue
        run = client.get_run(version.run_id)
        entry = Entry(f"champion {kind}: {version.tags.get('method', run.data.tags.get('method', '?'))}",
                      [record(run)], f"v{version.version}")  # fmt: skip
        out.setdefault(run.data.tags.get(lineage.PREPARED_TAG, "-"), []).append(entry)
    order = {f"champion {k}": i for i, k in enumerate(registry.KINDS)}
    for entries in out.values():
        entries.sort(key=lambda e: order.get(e.label.split(":")[0], 9))
    return out


def chosen_entries(client, refs: list[str]) -> list[Entry]:
    entries = []
    for ref in refs:
        run_id, label = run_of(ref)
        run = client.get_run(run_id)
        tags = run.data.tags
        entries.append(Entry(f"{label} ({tags.get('stage', '?')} {tags.get('method', '?')})", [record(run)],
                             version_note(client, run_id)))  # fmt: skip
    return entries


def leaderboard(dataset: str, ks, sweep: bool = False, chosen: list[str] | None = None) -> str:
    import mlflow

    client = mlflow.MlflowClient()
    runs = finished_runs(client, dataset)
    methods = method_entries(client, runs, sweep)
    champions = {} if sweep else champion_entries(client, dataset)
    blocks = [f"Experiment {dataset!r} at {mlflow.get_tracking_uri()}: validation and test metrics over all users."]
    per = "DVC experiment, stage and method" if sweep else "stage and method"
    for prepared in sorted(set(methods) | set(champions)):
        blocks.append(f"\nData {prepared}")
        if not sweep:
            blocks.append(
                format_block("Champions (what the pipeline and `make serve` use):", champions.get(prepared, []), ks)
            )
        blocks.append(format_block(f"Latest finished run per {per}; mean±sd over seeds where there are several:",
                                   methods.get(prepared, []), ks))  # fmt: skip
    if chosen:
        blocks.append("\n" + format_block("Chosen runs:", chosen_entries(client, chosen), ks))
    if len(blocks) == 1:
        blocks.append("(no finished runs yet)")
    return "\n".join(blocks)


def champion_version(client, name: str) -> int | None:
    from mlflow.exceptions import MlflowException

    try:
        return int(client.get_model_version_by_alias(name, registry.CHAMPION).version)
    except MlflowException:
        return None


def run_of(ref: str) -> tuple[str, str]:
    """(run id, label) of a run id, ``name/3``, ``models:/name/3``, ``name@alias`` or ``models:/name@alias``."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    spec = ref.removeprefix("models:/")
    try:
        if "@" in spec:
            name, alias = spec.rsplit("@", 1)
            version = client.get_model_version_by_alias(name, alias)
        elif "/" in spec:
            name, number = spec.rsplit("/", 1)
            version = client.get_model_version(name, number)
        else:
            return client.get_run(spec).info.run_id, ref
    except MlflowException:
        raise MissingArtifactError(
            f"{ref!r} is no run id, registry version (name/3) or alias (name@champion) of the store at "
            f"{mlflow.get_tracking_uri()}"
        ) from None
    return version.run_id, f"{version.name} v{version.version}"


def paired(ref_a: str, ref_b: str, split: str) -> str:
    """The table of B minus A, paired per user, at every K of both files (NDCG and Recall)."""
    import mlflow

    (run_a, label_a), (run_b, label_b) = run_of(ref_a), run_of(ref_b)
    client = mlflow.MlflowClient()
    a, b = per_user.download(run_a, split, label_a), per_user.download(run_b, split, label_b)
    tags_a, tags_b = client.get_run(run_a).data.tags, client.get_run(run_b).data.tags
    data_a, data_b = lineage.version_data(tags_a), lineage.version_data(tags_b)
    if data_a != data_b:
        raise LineageError(
            f"{label_a} was evaluated on prepared data {tags_a.get(lineage.PREPARED_TAG)} (data version {data_a}), "
            f"{label_b} on {tags_b.get(lineage.PREPARED_TAG)} (data version {data_b}): numbers of different data "
            "do not pair"
        )
    ks = sorted({int(c.rsplit("_", 1)[1]) for c in a.columns if c.startswith("ndcg_at_")} & {
        int(c.rsplit("_", 1)[1]) for c in b.columns if c.startswith("ndcg_at_")})  # fmt: skip
    first = [m for k in ks if k == 10 for m in (f"ndcg_at_{k}", f"recall_at_{k}")]
    metrics = first + [f"{m}_at_{k}" for m in ("ndcg", "recall") for k in ks if k != 10]
    deltas = per_user.compare(a, b, metrics, label_a, label_b)
    head = (f"{split}: B = {label_b} minus A = {label_a}, paired over the same {len(a)} users (95% bootstrap "
            f"interval, {next(iter(deltas.values())).resamples:,} resamples, seeded; a gain only when the interval "
            "excludes zero):")  # fmt: skip
    return head + "\n" + per_user.delta_table(deltas, "A", "B")


def body(cfg: Config, args: argparse.Namespace) -> None:
    tracking.configure(tracking.project_root(paths().root))
    if args.runs:
        if len(args.runs) != 2:
            raise ConfigError(f"compare pairs two runs: RUN_A RUN_B; got {len(args.runs)}: {args.runs}")
        print(paired(*args.runs, args.split))
        return
    dataset = args.dataset or cfg.data.dataset_code
    print(leaderboard(dataset, cfg.training.metric_ks, args.sweep, args.chosen))


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="*", metavar="RUN", help="two runs to pair: run id, name/3 or name@alias")
    parser.add_argument("--split", default="test", help="per-user results to pair (default test)")
    parser.add_argument("--dataset", default=None, help="dataset code (default: data.dataset_code)")
    parser.add_argument("--sweep", action="store_true",
                        help="one row per DVC experiment (`dvc exp run --queue` sweeps): runs tagged dvc.experiment")  # fmt: skip
    parser.add_argument("--with", dest="chosen", action="append", default=[], metavar="RUN",
                        help="add this run to the table (run id, name/3 or name@alias); repeatable")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    return run_stage("recsys compare", __doc__, body, argv, add_args)


if __name__ == "__main__":
    sys.exit(main())
