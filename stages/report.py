"""`recsys report` (`make report`, DVC stage `report`): a self-contained offline HTML page on the last two-stage
evaluation: does the reranker help (paired intervals), retrieval alone and two-stage at each K, how many true items
the retriever keeps at each cut-off K, the gain per history-length bucket, the training curves of the retriever and
reranker that were used, and the dataset statistics. Plots are inline PNGs: the file opens offline, with no script
and nothing to fetch. It is written to reports/{dataset}/seed{seed}/report.html and logged to the pipeline's MLflow
run (artifact `report/report.html`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd

from recsys_core import describe, per_user, tracking
from recsys_core.config import Config
from recsys_core.data.store import STATS, Sequences, load_prepared
from recsys_core.errors import MissingArtifactError
from recsys_core.evaluation import split_inputs
from recsys_core.io import atomic_path
from recsys_core.report import content, figures
from recsys_core.report.render import render
from recsys_core.significance import RESAMPLES, PairedDelta
from stages.common import paths, run_stage

ARTIFACT = "report"


def read_json(path: Path, made_by: str) -> dict:
    if not path.exists():
        raise MissingArtifactError(f"{path} is missing: run `{made_by}` (or `make run`) first")
    return json.loads(path.read_text(encoding="utf-8"))


def run_curves(client, run_id: str, monitor: str) -> dict[str, list[float]]:
    """The run's per-epoch loss and validation metric, as logged to MLflow (step = epoch)."""
    out = {}
    for column, metric in (("train_loss", "train/train_loss"), (f"val_{monitor}", f"epoch_val/{monitor}")):
        history = sorted(client.get_metric_history(run_id, metric), key=lambda m: m.step)
        if history:
            out[column] = [m.value for m in history]
    return out


def delta_of(metrics: dict, metric: str, users: int) -> PairedDelta:
    """The pipeline's logged difference (two-stage minus retrieval alone) as a PairedDelta."""
    base, two = metrics[f"test_retrieval_only/{metric}"], metrics[f"test/{metric}"]
    return PairedDelta(base, two, metrics[f"test_delta/{metric}"], metrics[f"test_delta_low/{metric}"],
                       metrics[f"test_delta_high/{metric}"], metrics[f"test_delta_p/{metric}"], users, RESAMPLES)  # fmt: skip


def build(cfg: Config) -> SimpleNamespace:
    import mlflow

    code, seed, ks = cfg.data.dataset_code, cfg.seed, tuple(cfg.training.metric_ks)
    folder = paths().root / "experiments" / "pipeline" / code / f"seed{seed}"
    made_by = "dvc repro evaluate_pipeline"
    registered, metrics = read_json(folder / "registered.json", made_by), read_json(folder / "metrics.json", made_by)
    prepared = paths().prepared(cfg.data)
    stats = read_json(prepared / STATS, "dvc repro prepare")
    client = mlflow.MlflowClient()
    run_id = registered["run_id"]
    pipeline_tags = client.get_run(run_id).data.tags
    k = describe.headline_k(ks)
    metric = f"ndcg_at_{k}"

    retrieved = per_user.download(
        registered["retriever.run_id"], "test", "the retriever"
    )  # full ranking: rank among all items
    recall = content.candidate_recall(retrieved["rank"], sorted({*content.CUTOFFS, cfg.retrieval.retrieval_top_k}))
    seqs = Sequences.from_dataset(load_prepared(prepared))
    histories, _, users = split_inputs(seqs, "test")
    lengths = pd.Series([len(h) for h in histories], index=users)
    two_stage = per_user.download(run_id, "test", "the pipeline")
    alone = per_user.download(run_id, "test_retrieval_only", "the pipeline")
    buckets = content.gain_by_history(*content.paired_frames(two_stage, alone, lengths, metric))

    roles = (("retriever", registered["retriever.run_id"]), ("reranker", registered["reranker.run_id"]))
    curve_plots = []
    for role, rid in roles:
        curves = run_curves(client, rid, cfg.training.monitor if cfg.training.monitor != "mrr" else metric)
        if curves:
            label = f"{registered[f'{role}.method']} v{registered[f'{role}.version']}"
            monitor = next((c[4:] for c in curves if c.startswith("val_")), metric)
            curve_plots.append((f"{role}: {label}", figures.training_curves({label: curves}, monitor)))
    users_n = int(metrics.get("users", len(two_stage)))
    return SimpleNamespace(
        dataset=code, seed=seed, prepared=prepared.name, data_version=pipeline_tags.get("data.version", "?"),
        retriever=f"{registered['retriever.method']} v{registered['retriever.version']}",
        reranker=f"{registered['reranker.method']} v{registered['reranker.version']}",
        two_stage=f"{registered['two_stage_name']} v{registered['two_stage_version']}", run_id=run_id,
        retrieval_top_k=cfg.retrieval.retrieval_top_k, rerank_top_k=cfg.rerank.rerank_top_k, users=users_n, ks=ks,
        fusion=content.fusion_sentence(metrics.get("fusion_weight")),
        metrics=("ndcg", "recall", "hit"), metric_names={"ndcg": "NDCG", "recall": "Recall", "hit": "Hit"},
        resamples=RESAMPLES,
        deltas=[(f"NDCG@{k}", delta_of(metrics, f"ndcg_at_{k}", users_n)),
                (f"Recall@{k}", delta_of(metrics, f"recall_at_{k}", users_n))],
        at_k=[(split, content.at_k_rows(metrics, split, ks, "retrieval_only")) for split in ("test", "val")],
        candidate_recall=recall,
        recall_plot=figures.candidate_recall(recall, cfg.retrieval.retrieval_top_k, cfg.rerank.rerank_top_k),
        bucket_metric=f"NDCG@{k}", buckets=buckets, history_plot=figures.gain_by_history(buckets, f"NDCG@{k}"),
        curve_plots=curve_plots, stats=stat_rows(stats), filters=stats.get("filters", []),
    )  # fmt: skip


def stat_rows(stats: dict) -> list[tuple[str, str]]:
    rows = [("source", str(stats.get("source", "-"))), ("users", f"{stats['users']:,}"),
            ("items", f"{stats['items']:,}"), ("interactions", f"{stats['interactions']:,}"),
            ("history length", f"mean {stats['avg_sequence_length']:.1f}, min {stats['min_sequence_length']}, "
                               f"max {stats['max_sequence_length']}"),
            ("density", f"{stats['density']:.4%}")]  # fmt: skip
    rows += [(f"{split} interactions", f"{n:,}") for split, n in stats.get("split_interactions", {}).items()]
    return rows


def report_path(cfg: Config) -> Path:
    return paths().root / "reports" / cfg.data.dataset_code / f"seed{cfg.seed}" / "report.html"


def body(cfg: Config, args: argparse.Namespace) -> None:
    import mlflow

    tracking.configure(tracking.project_root(paths().root))
    report = build(cfg)
    out = Path(args.out) if args.out else report_path(cfg)
    with atomic_path(out) as tmp:
        tmp.write_text(render(report), encoding="utf-8")
    mlflow.MlflowClient().log_artifact(report.run_id, str(out), ARTIFACT)
    print(f"report: {out} ({out.stat().st_size / 1e3:.0f} kB, opens offline); also on MLflow run {report.run_id} "
          f"under {ARTIFACT}/")  # fmt: skip


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", default=None, help="where to write the page (default reports/{dataset}/seed{seed}/report.html)"
    )


def main(argv: list[str] | None = None) -> int:
    return run_stage("recsys report", __doc__, body, argv, add_args)


if __name__ == "__main__":
    sys.exit(main())
