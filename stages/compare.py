"""`recsys compare --dataset X`: the latest MLflow run of each stage and method, with its metrics, registered version
and champion mark; what a user would otherwise click through the UI for."""

from __future__ import annotations

import argparse
import sys

from recsys_core import registry, tracking
from recsys_core.config import Config
from recsys_core.errors import MissingArtifactError
from stages.common import paths, run_stage

COLUMNS = ("ndcg_at_10", "recall_at_10", "hit_at_10", "ndcg_at_20", "mrr")
KIND_OF = {"retrieval": "retriever", "rerank": "reranker", "pipeline": "two-stage"}


def rows_for(dataset: str) -> list[dict]:
    import mlflow

    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(dataset)
    if experiment is None:
        raise MissingArtifactError(f"MLflow has no experiment {dataset!r} at {mlflow.get_tracking_uri()}; train first")
    runs = client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=1000)  # fmt: skip
    latest: dict[tuple[str, str, str], object] = {}
    for run in runs:
        stage = run.data.tags.get("stage", "")
        if stage not in KIND_OF:
            continue
        key = (stage, run.data.tags.get("method", ""), run.data.tags.get("rerank_mode", ""))
        latest.setdefault(key, run)
    rows = []
    for (stage, method, mode), run in sorted(latest.items()):
        name = registry.model_name(dataset, KIND_OF[stage])
        versions = client.search_model_versions(f"name = '{name}' and run_id = '{run.info.run_id}'")
        version = int(versions[0].version) if versions else None
        rows.append({
            "stage": stage + (f" ({mode})" if mode else ""), "method": method, "run": run.info.run_id[:8],
            "version": f"v{version}" if version else "-",
            "champion": "yes" if version is not None and version == champion_version(client, name) else "",
            **{c: run.data.metrics.get(f"test/{c}") for c in COLUMNS},
        })  # fmt: skip
    return rows


def champion_version(client, name: str) -> int | None:
    from mlflow.exceptions import MlflowException

    try:
        return int(client.get_model_version_by_alias(name, registry.CHAMPION).version)
    except MlflowException:
        return None


def format_rows(rows: list[dict]) -> str:
    head = ["stage", "method", "run", "version", "champion", *(f"test/{c}" for c in COLUMNS)]
    table = [head] + [[str(r[k]) for k in ("stage", "method", "run", "version", "champion")]
                      + [f"{r[c]:.4f}" if r[c] is not None else "-" for c in COLUMNS] for r in rows]  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in table)


def body(cfg: Config, args: argparse.Namespace) -> None:
    tracking.configure(tracking.project_root(paths().root))
    dataset = args.dataset or cfg.data.dataset_code
    rows = rows_for(dataset)
    print(f"Latest finished run per stage and method in experiment {dataset!r} (test metrics, all users):")
    print(format_rows(rows) if rows else "(no runs yet)")


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default=None, help="dataset code (default: data.dataset_code)")


def main(argv: list[str] | None = None) -> int:
    return run_stage("recsys compare", __doc__, body, argv, add_args)


if __name__ == "__main__":
    sys.exit(main())
