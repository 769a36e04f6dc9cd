"""`recsys compare --dataset X`: the latest MLflow run of each data setting, stage and method, with its metrics,
registered version and champion mark; what a user would otherwise click through the UI for.

`recsys compare --sweep`: the same per DVC experiment (the runs of `dvc exp run`, queued or not, carry its name in
the tag `dvc.experiment`), so a sweep of settings reads as one table.

`recsys compare RUN_A RUN_B`: B minus A on the same users and targets, paired per user (95% bootstrap interval,
p-value), from the per-user results every evaluation logs. A run is named by its run id, a registry version
(`name/3`, `models:/name/3`) or an alias (`name@champion`); runs of other data, users or targets are refused."""

from __future__ import annotations

import argparse
import re
import sys

from recsys_core import lineage, per_user, registry, tracking
from recsys_core.config import Config
from recsys_core.errors import ConfigError, LineageError, MissingArtifactError
from stages.common import paths, run_stage

# `mrr` is the full-ranking MRR (retrievers); runs that rank candidate lists of N items (rerankers, the two-stage
# model) report `mrr_at_{N}` instead, shown in the last column with its N.
COLUMNS = ("ndcg_at_10", "recall_at_10", "hit_at_10", "ndcg_at_20", "mrr")
LIST_MRR = "mrr_at_N"
KIND_OF = {"retrieval": "retriever", "rerank": "reranker", "pipeline": "two-stage"}


def rows_for(dataset: str, sweep: bool = False) -> list[dict]:
    """The latest finished run per data setting, stage and method; with ``sweep``, per DVC experiment too (runs
    without one left out): a `dvc exp run --queue` grid as one table."""
    import mlflow

    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(dataset)
    if experiment is None:
        raise MissingArtifactError(f"MLflow has no experiment {dataset!r} at {mlflow.get_tracking_uri()}; train first")
    runs = client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=1000)  # fmt: skip
    latest: dict[tuple[str, str, str, str, str], object] = {}
    for run in runs:
        stage, experiment = run.data.tags.get("stage", ""), run.data.tags.get(tracking.DVC_EXPERIMENT_TAG, "")
        if stage not in KIND_OF or (sweep and not experiment):
            continue
        key = (experiment if sweep else "", run.data.tags.get(lineage.PREPARED_TAG, ""), stage,
               run.data.tags.get("method", ""), run.data.tags.get("rerank_mode", ""))  # fmt: skip
        latest.setdefault(key, run)
    rows = []
    for (experiment, prepared, stage, method, mode), run in sorted(latest.items()):
        versions = client.search_model_versions(f"run_id = '{run.info.run_id}'")
        version = int(versions[0].version) if versions else None
        name = versions[0].name if versions else None
        rows.append({
            "experiment": experiment, "data": prepared or "-", "stage": stage + (f" ({mode})" if mode else ""), "method": method,
            "run": run.info.run_id[:8], "version": f"v{version}" if version else "-",
            "champion": "yes" if version is not None and version == champion_version(client, name) else "",
            **{c: run.data.metrics.get(f"test/{c}") for c in COLUMNS}, LIST_MRR: list_mrr(run.data.metrics),
            "delta": delta_text(run.data.metrics),
        })  # fmt: skip
    return rows


def delta_text(metrics: dict[str, float]) -> str:
    """A pipeline run's two-stage minus retrieval-alone test NDCG@10 on the same users, with its 95% interval."""
    names = [f"test_delta{part}/ndcg_at_10" for part in ("", "_low", "_high")]
    if not all(name in metrics for name in names):
        return "-"
    mean, low, high = (metrics[name] for name in names)
    verdict = "gain" if low > 0 else "loss" if high < 0 else "none"
    return f"{mean:+.4f} [{low:+.4f}, {high:+.4f}] {verdict}"


def list_mrr(metrics: dict[str, float]) -> tuple[int, float] | None:
    """(N, value) of a run's `test/mrr_at_{N}` (the MRR over lists of N candidates), or None."""
    found = [(int(name.rsplit("_", 1)[1]), value) for name, value in metrics.items()
             if re.fullmatch(r"test/mrr_at_\d+", name)]  # fmt: skip
    return min(found) if found else None


def champion_version(client, name: str) -> int | None:
    from mlflow.exceptions import MlflowException

    try:
        return int(client.get_model_version_by_alias(name, registry.CHAMPION).version)
    except MlflowException:
        return None


def format_rows(rows: list[dict], sweep: bool = False) -> str:
    labels = ["experiment"] * sweep + ["data", "stage", "method", "run", "version", "champion"]
    head = [*labels, *(f"test/{c}" for c in COLUMNS), f"test/{LIST_MRR}", "two-stage - retrieval NDCG@10 [95% CI]"]
    table = [head] + [[str(r[k]) for k in labels]
                      + [f"{r[c]:.4f}" if r[c] is not None else "-" for c in COLUMNS]
                      + [f"{r[LIST_MRR][1]:.4f} (N={r[LIST_MRR][0]})" if r.get(LIST_MRR) else "-", r["delta"]]
                      for r in rows]  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in table)


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


def per_user_file(run_id: str, label: str, split: str):
    """The run's per-user results of ``split`` (downloaded from its artifacts) and its tags."""
    import tempfile
    from pathlib import Path

    import mlflow

    tags = mlflow.MlflowClient().get_run(run_id).data.tags
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"{per_user.ARTIFACT_DIR}/{split}.csv",
                                                       dst_path=tmp)  # fmt: skip
        except Exception:  # noqa: BLE001 - MLflow raises several kinds for an absent artifact
            raise MissingArtifactError(
                f"{label} (run {run_id}) has no per-user results for {split!r}: it was evaluated before they were "
                "logged, or by another split; evaluate it again"
            ) from None
        return per_user.read(Path(path)), tags


def paired(ref_a: str, ref_b: str, split: str) -> str:
    """The table of B minus A, paired per user, at every K of both files (NDCG and Recall)."""
    (run_a, label_a), (run_b, label_b) = run_of(ref_a), run_of(ref_b)
    (a, tags_a), (b, tags_b) = per_user_file(run_a, label_a, split), per_user_file(run_b, label_b, split)
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
    rows = rows_for(dataset, args.sweep)
    per = "DVC experiment, stage and method" if args.sweep else "stage and method"
    print(f"Latest finished run per {per} in experiment {dataset!r} (test metrics, all users):")
    print(format_rows(rows, args.sweep) if rows else "(no runs yet)")


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="*", metavar="RUN", help="two runs to pair: run id, name/3 or name@alias")
    parser.add_argument("--split", default="test", help="per-user results to pair (default test)")
    parser.add_argument("--dataset", default=None, help="dataset code (default: data.dataset_code)")
    parser.add_argument("--sweep", action="store_true",
                        help="one row per DVC experiment (`dvc exp run --queue` sweeps): runs tagged dvc.experiment")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    return run_stage("recsys compare", __doc__, body, argv, add_args)


if __name__ == "__main__":
    sys.exit(main())
