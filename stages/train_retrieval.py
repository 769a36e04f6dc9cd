"""DVC stage `train_retrieval`: train the stage-1 retriever (`retrieval.retrieval_method`) with the shared loop,
evaluate it by full ranking on validation and test users, write experiments/retrieval/{method}/{dataset}/seed{seed}/,
log the MLflow run and register the model as a new version of `{dataset}-retriever` (alias `candidate`)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from recsys_core import describe, lineage, per_user, registry, serving, tracking
from recsys_core.candidates import retrieved_table
from recsys_core.config import Config
from recsys_core.data.store import INTERACTIONS, ITEMS, Sequences, load_prepared
from recsys_core.evaluation import evaluate_full_ranking, split_inputs
from recsys_core.features.store import FeatureSet, embedding_file
from recsys_core.io import staged_directory, write_json
from recsys_core.metrics import format_table, prefixed
from recsys_core.retrieval import get_retriever_class
from recsys_core.retrieval.base import RetrievalData
from recsys_core.training import resolve_device, seed_everything
from stages.common import paths, run_stage
from stages.training_common import (
    add_parent_run,
    fingerprint,
    finished_version,
    loop_settings,
    pinned_requirements,
    register_model,
    reuse_version,
    run_params,
    run_tags,
    summary_of,
    write_curves,
)

log = logging.getLogger("recsys.train_retrieval")


def body(cfg: Config, args: argparse.Namespace, out: Path | None = None, candidate: bool = True) -> None:
    """``out``: where the outputs go (default experiments/retrieval/{method}/{dataset}/seed{seed}/); ``candidate``:
    whether the new version takes the `candidate` alias. The train_ltr_models stage puts the ltr reranker's feature
    models elsewhere and keeps them out of stage 1's promotion."""
    root = tracking.project_root(paths().root)
    code, method, seed = cfg.data.dataset_code, cfg.retrieval.retrieval_method, cfg.seed
    prepared = paths().prepared(cfg.data)
    dataset = load_prepared(prepared)
    seqs = Sequences.from_dataset(dataset)
    retriever_cls = get_retriever_class(method)
    out = out or paths().experiment("retrieval", method, code, seed)

    seed_everything(seed)
    device = resolve_device(cfg.training.device)
    features = FeatureSet(prepared, cfg.features, dataset.items)
    retriever = retriever_cls.from_data(dataset.n_items, retriever_cls.hyperparameters(cfg, code), device,
                                        RetrievalData(seqs, features))  # fmt: skip
    hparams = retriever.hparams  # with what the data decided: users, modalities, feature sizes
    inputs = {"interactions": prepared / INTERACTIONS, "items": prepared / ITEMS}
    for modality in hparams.get("modalities", []):
        inputs[f"embeddings.{modality}"] = embedding_file(prepared, modality, features.encoder(modality))
    data_tags = tracking.data_hash_tags(inputs)
    r = cfg.retrieval
    train_id = fingerprint(cfg, {"retrieval": r.model_dump()}, hparams, json.dumps(data_tags, sort_keys=True))
    settings = loop_settings(
        cfg, epochs=r.retrieval_epochs, lr=r.retrieval_lr, patience=r.retrieval_patience,
        batch_size=r.batch_size_retrieval, checkpoint_dir=out / "checkpoint", fingerprint=train_id,
        batch_order=r.retrieval_batch_order,
    )  # fmt: skip
    tags = {**run_tags(root, cfg, "retrieval", method, device, prepared, data_tags, train_id),
            lineage.PROTOCOL_TAG: "full ranking"}  # fmt: skip
    prefix = registry.data_prefix(cfg.data)
    params = run_params(cfg, hparams, "retrieval", method, uses_features=bool(hparams.get("modalities")))
    ks = cfg.training.metric_ks
    top_k = cfg.retrieval.retrieval_top_k
    name = tracking.run_name(method, code, seed)

    import mlflow

    config = cfg.model_dump(mode="json")
    with tracking.training_run(root, code, name, params, tags, args.parent_run_id, prepared, config) as run:
        history = retriever.fit(seqs, settings, callbacks=[tracking.epoch_logger()],
                                eval_batch_size=cfg.training.eval_batch_size, ks=ks)  # fmt: skip
        repeated = finished_version(history, prefix, "retriever", train_id)
        results = {
            split: evaluate_full_ranking(retriever.score, *split_inputs(seqs, split), ks=ks,
                                         batch_size=cfg.training.eval_batch_size, keep_top=top_k, desc=split)
            for split in ("val", "test")
        }  # fmt: skip
        metrics = {**prefixed(results["val"].metrics, "val"), **prefixed(results["test"].metrics, "test")}
        summary = {**metrics, "users": len(results["test"].users), "items": dataset.n_items,
                   "best_epoch": history.best_epoch, "epochs_run": len(history.epochs),
                   "stopped_early": history.stopped_early}  # fmt: skip
        mlflow.log_metrics({**metrics, "best_epoch": history.best_epoch, "epochs_run": len(history.epochs)})
        per_user.log({split: per_user.records(res.users, res.targets, res.target_rank, ks)
                      for split, res in results.items()})  # fmt: skip

        with staged_directory(out) as scratch:
            retriever.save(scratch)  # weights + config: logged as the model's artifact before anything else lands
            if repeated is None:
                info = serving.log_retriever(scratch, [int(i) for i in seqs.train[1][-10:]], pinned_requirements())
            retrieved_table(results).to_csv(scratch / "retrieved.csv", index=False)
            (scratch / "retrieved_metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
            write_json(scratch / describe.HEADLINE_FILE, describe.headline_file(metrics, ks, "retriever"))
            write_curves(history, scratch / "history.tsv")
            for name in ("history.tsv", "retrieved_metrics.json", "retrieved.csv"):  # rerankers read retrieved.csv
                mlflow.log_artifact(str(scratch / name))
            summary_text = summary_of(cfg, "retrieval", method, tags, metrics)
            if repeated is None:
                registered = register_model(scratch, info.model_uri, prefix, "retriever", tags, run, metrics,
                                            summary_text, ks, candidate)  # fmt: skip
            else:
                registered = reuse_version(scratch, repeated, run, summary_text)

    alias = " (alias candidate)" if candidate else ""
    log.info("outputs in %s; registered %s version %d%s", out, registered["name"], registered["version"], alias)
    print(f"\n{method} on {code} (best epoch {history.best_epoch} of {len(history.epochs)}), all "
          f"{len(results['test'].users)} users, full ranking over {dataset.n_items} items:")  # fmt: skip
    print(format_table({"validation": results["val"].metrics, "test": results["test"].metrics}, ks))


def main(argv: list[str] | None = None) -> int:
    return run_stage("recsys train-retrieval", __doc__, body, argv, add_parent_run)


if __name__ == "__main__":
    sys.exit(main())
