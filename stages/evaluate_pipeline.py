"""DVC stage `evaluate_pipeline`: the promoted retriever and reranker (`models:/{dataset}-retriever@champion`,
`models:/{dataset}-reranker@champion`, or the versions given) run as one two-stage recommender on the validation and
test users; metrics at every K over all users, next to retrieval alone, are logged with the versions and data
hashes used; the pipeline is registered as `{dataset}-two-stage` and promoted when it beats the champion."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

from recsys_core import describe, lineage, per_user, registry, serving, tracking
from recsys_core.config import Config
from recsys_core.data.store import INTERACTIONS, ITEMS, Sequences, load_prepared
from recsys_core.evaluation import split_inputs
from recsys_core.io import staged_directory, write_json
from recsys_core.metrics import format_table, prefixed
from recsys_core.pipeline import TwoStage
from recsys_core.rerank.evaluate import evaluate_lists, list_order_result, result_from_scores
from recsys_core.rerank.fusion import fused_validation
from recsys_core.training import resolve_device
from stages.common import paths, run_stage
from stages.training_common import SERVING_REQUIREMENTS, pinned_requirements

log = logging.getLogger("recsys.evaluate_pipeline")


def paired_metrics(ks) -> tuple[str, str]:
    """The differences reported with their intervals: NDCG and Recall at 10 (else the first K; every K is in the
    per-user files)."""
    k = describe.headline_k(ks)
    return f"ndcg_at_{k}", f"recall_at_{k}"


def body(cfg: Config, args: argparse.Namespace) -> None:
    root = tracking.project_root(paths().root)
    tracking.configure(root)
    code, seed = cfg.data.dataset_code, cfg.seed
    prepared = paths().prepared(cfg.data)
    dataset = load_prepared(prepared)
    seqs = Sequences.from_dataset(dataset)
    prefix = registry.data_prefix(cfg.data)
    # Only versions trained on this prepared data: another item-id space or split would give garbage or leakage.
    retriever, ret_v = registry.load_version(prefix, "retriever", args.retriever_version, prepared)
    reranker, rr_v = registry.load_version(prefix, "reranker", args.reranker_version, prepared)
    device = resolve_device(cfg.training.device)
    for model in (retriever, reranker):
        model.model.to(device)
        model.device = device
    top_k, rerank_k = cfg.retrieval.retrieval_top_k, cfg.rerank.rerank_top_k
    pipeline = TwoStage(retriever, reranker, top_k, rerank_k)
    ks = cfg.training.metric_ks

    results, baselines, records = {}, {}, {}
    for split in ("val", "test"):
        cset = pipeline.candidate_set(*split_inputs(seqs, split), batch_size=cfg.training.eval_batch_size)
        if split == "val" and getattr(reranker, "fits_on_validation", False):
            # ltr was trained on these very lists: out-of-fold scores (LineageError if the lists are not those)
            weight = reranker.hparams.get("fusion_weight")
            results[split] = result_from_scores(fused_validation(reranker, cset, weight), cset, ks)
        else:
            results[split] = evaluate_lists(reranker.score, cset, ks, cfg.training.eval_batch_size, desc=split,
                                            fusion_weight=reranker.hparams.get("fusion_weight"))  # fmt: skip
        baselines[split] = list_order_result(cset, ks)
        records[split] = per_user.from_lists(results[split], cset, ks)
        records[f"{split}_retrieval_only"] = per_user.from_lists(baselines[split], cset, ks)
    # The two-stage model against retrieval alone on the same users and targets: paired, with its interval.
    deltas = per_user.compare(
        records["test_retrieval_only"], records["test"], paired_metrics(ks), "retrieval", "two-stage"
    )
    metrics = {**prefixed(results["val"].all_users, "val"), **prefixed(results["test"].all_users, "test"),
               **prefixed(baselines["val"].all_users, "val_retrieval_only"),
               **prefixed(baselines["test"].all_users, "test_retrieval_only"),
               **delta_metrics(deltas, "test_delta"),
               "test_candidate_recall": results["test"].n_hit / results["test"].n_users}  # fmt: skip
    versions = {"retriever.version": str(ret_v.version), "retriever.method": ret_v.tags.get("method", ""),
                "retriever.run_id": ret_v.run_id, "reranker.version": str(rr_v.version),
                "reranker.method": rr_v.tags.get("method", ""), "reranker.run_id": rr_v.run_id,
                "reranker.fusion_weight": str(reranker.hparams.get("fusion_weight"))}  # fmt: skip
    data_tags = tracking.data_hash_tags({"interactions": prepared / INTERACTIONS, "items": prepared / ITEMS})
    tags = {"dataset": code, "stage": "pipeline", "method": f"{versions['retriever.method']}+{versions['reranker.method']}",
            "seed": str(seed), "git_commit": tracking.git_commit(root), **versions, **lineage.data_tags(prepared),
            lineage.PROTOCOL_TAG: "full ranking",  # every user counts; any top-K settings compare
            **data_tags}  # fmt: skip
    config = cfg.model_dump(mode="json")
    # What this evaluation depends on; the models' own settings are on their runs, the whole config in config.yaml.
    params = {**tracking.config_params(config, ["seed", "data", "serving"]), "retrieval.retrieval_top_k": top_k,
              "rerank.rerank_top_k": rerank_k, "training.metric_ks": ks}  # fmt: skip
    out = paths().root / "experiments" / "pipeline" / code / f"seed{seed}"

    import mlflow

    name = f"pipeline-{code}-seed{seed}"
    with tracking.training_run(root, code, name, params, tags, args.parent_run_id, prepared, config) as run:
        mlflow.log_metrics(metrics)
        per_user.log(records)
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            retriever.save(tmp / "retriever")
            reranker.save(tmp / "reranker")
            write_json(tmp / "settings.json", {"retrieval_top_k": top_k, "rerank_top_k": rerank_k})
            example = [int(i) for i in seqs.train[1][-10:]]
            extra = ("lightgbm",) if reranker.method == "ltr" else ()
            info = serving.log_two_stage(tmp / "retriever", tmp / "reranker", prepared / ITEMS, tmp / "settings.json",
                                         example, pinned_requirements(SERVING_REQUIREMENTS + extra),
                                         limits=cfg.serving.model_dump())  # fmt: skip
        two_stage = registry.model_name(prefix, "two-stage")
        gain = f"test_delta/ndcg_at_{describe.headline_k(ks)}"  # two-stage minus retrieval (interval: description)
        head = {**describe.headline(metrics, ks), gain: metrics[gain]}
        version = registry.register(info.model_uri, two_stage, {**tags, "run_id": run.info.run_id}, head)
        summary_text = describe.run_description(
            "pipeline",
            tags["method"],
            code,
            seed,
            tags[lineage.DATA_VERSION_TAG],
            describe.headline(metrics, ks),
            [describe.version_link(ret_v.name, ret_v.version), describe.version_link(rr_v.name, rr_v.version)],
            extra=gain_sentence(deltas),
        )
        describe.set_descriptions(two_stage, version, run, summary_text)
        decision = registry.promote(two_stage, version, "val/ndcg_at_10", data_version=tags[lineage.DATA_VERSION_TAG])
        describe.record_promotion(two_stage, version, run.info.run_id, decision.promoted, decision.reason)
        # metrics.json (git, a DVC metric) holds what the inputs determine; registry state goes to registered.json.
        summary = {**metrics, "users": results["test"].n_users, "users_with_true_item_retrieved": results["test"].n_hit,
                   "retrieval_top_k": top_k, "rerank_top_k": rerank_k,
                   "retriever_method": versions["retriever.method"], "reranker_method": versions["reranker.method"],
                   "fusion_weight": reranker.hparams.get("fusion_weight")}  # fmt: skip
        registered = {**versions, "two_stage_name": two_stage, "two_stage_version": version,
                      "two_stage_promoted": decision.promoted, "run_id": run.info.run_id}  # fmt: skip
        with staged_directory(out) as scratch:
            (scratch / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
            write_json(scratch / describe.HEADLINE_FILE, describe.headline_file(metrics, ks))
            (scratch / "registered.json").write_text(json.dumps(registered, indent=2) + "\n")
            table = results_table(results, baselines, ks, {**summary, **registered}, deltas, reranker)
            (scratch / "results.txt").write_text(table + "\n")
            mlflow.log_artifact(str(scratch / "results.txt"))
    print(table)
    print(f"\nregistered {two_stage} version {version}: {'champion' if decision.promoted else 'not promoted'} "
          f"({decision.reason}); serve it with `make serve`")  # fmt: skip


def gain_sentence(deltas: dict) -> str:
    """``Two-stage - retrieval NDCG@10: +0.0061 [+0.0010, +0.0120], gain`` (or "no significant difference")."""
    parts = []
    for metric, d in deltas.items():
        kind, k = metric.rsplit("_at_", 1)
        parts.append(f"{'NDCG' if kind == 'ndcg' else kind.capitalize()}@{k} {d.delta:+.4f} "
                     f"[{d.low:+.4f}, {d.high:+.4f}], {d.verdict}")  # fmt: skip
    return "Two-stage minus retrieval, paired 95% interval: " + "; ".join(parts) + "."


def delta_metrics(deltas: dict, prefix: str) -> dict[str, float]:
    """``test_delta/ndcg_at_10``, ``test_delta_low/...``, ``test_delta_high/...``, ``test_delta_p/...``."""
    out = {}
    for metric, d in deltas.items():
        out |= {f"{prefix}/{metric}": d.delta, f"{prefix}_low/{metric}": d.low, f"{prefix}_high/{metric}": d.high,
                f"{prefix}_p/{metric}": d.p_value}  # fmt: skip
    return out


def results_table(results, baselines, ks, summary, deltas, reranker) -> str:
    """The test table with the paired differences, after one line on validation (what promotion and tuning saw)."""
    result, baseline = results["test"], baselines["test"]
    monitor = f"ndcg_at_{10 if 10 in ks else ks[0]}"
    val, val_base = results["val"].all_users[monitor], baselines["val"].all_users[monitor]
    how = (
        " (out-of-fold: the reranker trains on validation lists)"
        if getattr(reranker, "fits_on_validation", False)
        else ""
    )
    head = (f"Two-stage on {summary['users']} test users: retriever v{summary['retriever.version']} "
            f"({summary['retriever.method']}, top {summary['retrieval_top_k']}) -> reranker v{summary['reranker.version']} "
            f"({summary['reranker.method']}, reranks the top {summary['rerank_top_k']}, retrieval-score fusion weight "
            f"{summary['reranker.fusion_weight']}); the true item was retrieved "
            f"for {summary['users_with_true_item_retrieved']} users, the others count as misses.")  # fmt: skip
    paired = (
        f"\nTwo-stage minus retrieval, paired over the same {summary['users']} users (95% bootstrap interval, "
        f"{next(iter(deltas.values())).resamples:,} resamples; a gain only when the interval excludes zero):"
    )
    head += f"\nValidation {monitor}: retrieval {val_base:.4f}, two-stage {val:.4f} ({val - val_base:+.4f}){how}."
    rows = {"retrieval": baseline.all_users, "two-stage": result.all_users}
    table = format_table(rows, ks, summary["rerank_top_k"])  # both rank the same reranked lists
    return f"{head}\n{table}{paired}\n{per_user.delta_table(deltas, 'retrieval', 'two-stage')}"


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--retriever_version", type=int, default=None, help="default: the champion")
    parser.add_argument("--reranker_version", type=int, default=None, help="default: the champion")
    parser.add_argument("--parent_run_id", default=None, help="nest the MLflow run under this run (pipelines)")


def main(argv: list[str] | None = None) -> int:
    return run_stage("recsys evaluate-pipeline", __doc__, body, argv, add_args)


if __name__ == "__main__":
    sys.exit(main())
