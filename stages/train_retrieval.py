"""DVC stage `train_retrieval`: train the stage-1 retriever (`retrieval.retrieval_method`) with the shared loop,
evaluate it by full ranking on validation and test users, write experiments/retrieval/{method}/{dataset}/seed{seed}/,
log the MLflow run and register the model as a new version of `{dataset}-retriever` (alias `candidate`)."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from pathlib import Path

import pandas as pd

import recsys_core
from recsys_core import registry, serving, tracking
from recsys_core.candidates import retrieved_table
from recsys_core.config import Config
from recsys_core.data.store import INTERACTIONS, ITEMS, Sequences, load_prepared
from recsys_core.evaluation import evaluate_full_ranking, split_inputs
from recsys_core.io import staged_directory
from recsys_core.metrics import format_table, prefixed
from recsys_core.retrieval import get_retriever_class
from recsys_core.training import LoopSettings, resolve_device, seed_everything
from stages.common import paths, run_stage

log = logging.getLogger("recsys.train_retrieval")

SERVING_REQUIREMENTS = ("torch", "numpy", "pandas", "safetensors", "pydantic", "pyyaml", "tqdm", "mlflow")


def pinned_requirements(names=SERVING_REQUIREMENTS) -> list[str]:
    """Exact versions of what a served model needs, from this environment (so MLflow does not guess them)."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for name in names:
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            pass
    return pins


def fingerprint(cfg: Config, hparams: dict, data_md5: str) -> str:
    """What a checkpoint must match to be resumed: settings, data and the code itself."""
    code = hashlib.sha256()
    for source in sorted(Path(recsys_core.__file__).parent.rglob("*.py")):
        code.update(source.read_bytes())
    identity = {"retrieval": cfg.retrieval.model_dump(), "training": cfg.training.model_dump(exclude={"resume"}),
                "hparams": hparams, "seed": cfg.seed, "data": data_md5, "code": code.hexdigest()}  # fmt: skip
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def body(cfg: Config, args: argparse.Namespace) -> None:
    root = tracking.project_root(paths().root)
    code, method, seed = cfg.data.dataset_code, cfg.retrieval.retrieval_method, cfg.seed
    prepared = paths().prepared(cfg.data)
    dataset = load_prepared(prepared)
    seqs = Sequences.from_dataset(dataset)
    retriever_cls = get_retriever_class(method)
    out = paths().experiment("retrieval", method, code, seed)

    seed_everything(seed)
    device = resolve_device(cfg.training.device)
    hparams = retriever_cls.hyperparameters(cfg, code)
    retriever = retriever_cls(dataset.n_items, hparams, device)
    data_tags = tracking.data_hash_tags({"interactions": prepared / INTERACTIONS, "items": prepared / ITEMS})
    settings = LoopSettings(
        epochs=cfg.retrieval.retrieval_epochs, lr=cfg.retrieval.retrieval_lr, patience=cfg.retrieval.retrieval_patience,
        monitor=cfg.training.monitor, grad_clip=cfg.training.grad_clip, mixed_precision=cfg.training.mixed_precision,
        seed=seed, batch_size=cfg.retrieval.batch_size_retrieval, resume=cfg.training.resume,
        checkpoint_dir=out / "checkpoint", fingerprint=fingerprint(cfg, hparams, data_tags.get("data.interactions.md5", "")),
    )  # fmt: skip
    tags = {"dataset": code, "method": method, "stage": "retrieval", "seed": str(seed), "device": str(device),
            "git_commit": tracking.git_commit(root), "prepared_dir": prepared.name, **data_tags}  # fmt: skip
    params = {**tracking.flatten_params(cfg.model_dump(mode="json")), **{f"model.{k}": v for k, v in hparams.items()}}
    ks = cfg.training.metric_ks
    top_k = cfg.retrieval.retrieval_top_k
    name = tracking.run_name(method, code, seed)

    import mlflow

    with tracking.training_run(root, code, name, params, tags, parent_run_id=args.parent_run_id) as run:
        history = retriever.fit(seqs, settings, callbacks=[tracking.epoch_logger()],
                                eval_batch_size=cfg.training.eval_batch_size, ks=ks)  # fmt: skip
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

        with staged_directory(out) as scratch:
            retriever.save(scratch)  # weights + config: logged as the model's artifact before anything else lands
            info = serving.log_retriever(scratch, [int(i) for i in seqs.train[1][-10:]], pinned_requirements())
            retrieved_table(results).to_csv(scratch / "retrieved.csv", index=False)
            (scratch / "retrieved_metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
            # Timings go to MLflow only: history.tsv is a DVC plot and must be the same for the same inputs.
            curves = pd.DataFrame(history.epochs).drop(columns=["epoch_seconds", "eval_seconds"])
            curves.astype({"epoch": int}).to_csv(scratch / "history.tsv", sep="\t", index=False)
            mlflow.log_artifact(str(scratch / "history.tsv"))
            mlflow.log_artifact(str(scratch / "retrieved_metrics.json"))
            version = registry.register(info.model_uri, registry.model_name(code, "retriever"),
                                        {**tags, "run_id": run.info.run_id}, metrics)  # fmt: skip
            registered = {"name": registry.model_name(code, "retriever"), "version": version,
                          "run_id": run.info.run_id, "model_uri": info.model_uri}  # fmt: skip
            (scratch / "registered.json").write_text(json.dumps(registered, indent=2) + "\n")

    log.info("outputs in %s; registered %s version %d (alias candidate)", out, registered["name"], version)
    print(f"\n{method} on {code} (best epoch {history.best_epoch} of {len(history.epochs)}), all "
          f"{len(results['test'].users)} users, full ranking over {dataset.n_items} items:")  # fmt: skip
    print(format_table({"validation": results["val"].metrics, "test": results["test"].metrics}, ks))


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--parent_run_id", default=None, help="nest the MLflow run under this run (pipelines)")


def main(argv: list[str] | None = None) -> int:
    return run_stage("recsys train-retrieval", __doc__, body, argv, add_args)


if __name__ == "__main__":
    sys.exit(main())
