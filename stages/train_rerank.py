"""DVC stage `train_rerank`: train the stage-2 reranker (`rerank.rerank_method`) on the train sequences and
evaluate it on candidate lists: `ground_truth` mode reranks the ground-truth lists (1 true + N-1 negatives);
`retrieval` mode reranks the top `rerank_top_k` of the champion retriever's candidates, over all users (a true item
that was not retrieved is a miss), next to the retriever's own order. Writes
experiments/rerank/{method}/{dataset}/seed{seed}/, logs the MLflow run, registers `{dataset}-reranker`."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
import tempfile
from pathlib import Path

import pandas as pd

from recsys_core import describe, distributed, lineage, per_user, registry, serving, tracking
from recsys_core.candidates import load_gt_candidates, read_retrieved
from recsys_core.config import Config
from recsys_core.data.images import image_files
from recsys_core.data.store import GT_CANDIDATES, INTERACTIONS, ITEMS, Sequences, load_prepared
from recsys_core.errors import ConfigError, MissingArtifactError
from recsys_core.features.store import FeatureSet, embedding_file
from recsys_core.features.texts import attach_generated_texts
from recsys_core.io import staged_directory, write_json
from recsys_core.metrics import format_table, list_mrr_name, prefixed
from recsys_core.rerank import get_reranker_class
from recsys_core.rerank.data import (
    CandidateSet,
    ExampleSource,
    GroundTruthExamples,
    RetrievedExamples,
    from_ground_truth,
    from_retrieved,
)
from recsys_core.rerank.evaluate import RerankResult, evaluate_lists, list_order_result, result_from_scores
from recsys_core.rerank.fusion import fused_validation, tune_weight, weight_label
from recsys_core.training import resolve_device, seed_everything
from stages.common import paths, run_stage
from stages.training_common import (
    LLM_REQUIREMENTS,
    MODEL_DIR,
    SERVING_REQUIREMENTS,
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

log = logging.getLogger("recsys.train_rerank")


def champion_candidates(prefix: str, prepared: Path) -> tuple[pd.DataFrame, dict[str, str]]:
    """retrieved.csv of the run behind `models:/{prefix}-retriever@champion`, and tags naming that version (the
    version's own number, so that the training lists come from the very model that made the file). The champion
    must belong to the prepared data of this run."""
    import mlflow

    name = registry.model_name(prefix, "retriever")
    try:
        version = registry.get_version(prefix, "retriever", None, prepared)
    except MissingArtifactError:
        raise MissingArtifactError(
            f"retrieval mode needs a champion retriever, and {name} has none: run `dvc repro promote_retriever` "
            f"(or `recsys train-retrieval` then `recsys promote retriever`)"
        ) from None
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path="retrieved.csv", dst_path=tmp)
        table = read_retrieved(Path(path))
    tags = {"retriever.name": name, "retriever.version": str(version.version), "retriever.run_id": version.run_id,
            "retriever.method": version.tags.get("method", "")}  # fmt: skip
    return table, tags


def used_versions(source_tags: dict[str, str]) -> list[str]:
    """Links to the retriever version whose lists the reranker trained on (none for ground-truth lists)."""
    if not source_tags.get("retriever.name"):
        return []
    return [describe.version_link(source_tags["retriever.name"], source_tags["retriever.version"])]


def candidate_sets(cfg: Config, seqs: Sequences, prepared: Path,
                   n_items: int) -> tuple[CandidateSet, CandidateSet, ExampleSource, dict]:  # fmt: skip
    """Validation and test lists, where training lists come from (true item + random negatives, or the champion
    retriever's top lists for train prefixes), and tags naming the sources."""
    if cfg.rerank.rerank_mode == "ground_truth":
        table, meta = load_gt_candidates(prepared / GT_CANDIDATES)
        tags = {f"gt_candidates.{k}": v for k, v in meta.items()}
        examples = GroundTruthExamples(seqs, n_items)
        return from_ground_truth(table, seqs, "val"), from_ground_truth(table, seqs, "test"), examples, tags
    prefix = registry.data_prefix(cfg.data)
    table, tags = champion_candidates(prefix, prepared)
    k = cfg.rerank.rerank_top_k
    examples = RetrievedExamples(seqs, retriever_scores(prefix, int(tags["retriever.version"])))
    return from_retrieved(table, seqs, "val", k), from_retrieved(table, seqs, "test", k), examples, tags


def retriever_scores(prefix: str, version: int):
    """``histories -> scores`` of that registered retriever, loaded at the first call (only rerankers trained on
    candidate lists ask for it: the LLM ones, VIP5, BERT4Rec with a list objective; cloze BERT4Rec never does)."""
    loaded = functools.cache(lambda: registry.load_version(prefix, "retriever", version)[0])
    return lambda histories: loaded().score(histories)


def item_table(items: pd.DataFrame, prepared: Path, images_dir: Path) -> pd.DataFrame:
    """The prepared items with what the LLM rerankers may show: BLIP-2 captions and Qwen3-VL summaries (None where
    absent) and ``image_path`` (the images stage's file, None for items without one)."""
    table = attach_generated_texts(items, prepared)
    files = image_files(table, images_dir)
    table["image_path"] = [str(files[i]) if i in files else None for i in table["item_id"]]
    return table


def summary_rows(result: RerankResult, baseline: RerankResult | None, alone: RerankResult | None = None) -> dict:
    rows = {"reranked": result.all_users}
    if baseline is not None:
        rows = {"retrieval": baseline.all_users, "two-stage": result.all_users}
        if alone is not None:
            rows["reranker alone"] = alone.all_users
        if result.hit_users is not None:
            rows["retrieval|hit"] = baseline.hit_users
            rows["two-stage|hit"] = result.hit_users
    return rows


def shadow_retrievers(cfg: Config, champion, seqs: Sequences, features: FeatureSet, device, out: Path,
                      train_id: str) -> tuple[dict[int, object], dict[str, float]]:  # fmt: skip
    """``ltr.ltr_shifts`` = N > 0: the champion retriever's method trained again, with the `retrieval` settings, on
    the split moved 1..N steps earlier (``Sequences.shifted``): each one's validation lists are more training lists
    for ``ltr`` that never saw their targets (``rerank/ltr.py``). Returns them by shift and their metrics to log."""
    from recsys_core.retrieval import get_retriever_class
    from recsys_core.retrieval.base import RetrievalData

    r, code = cfg.retrieval, cfg.data.dataset_code
    cls = get_retriever_class(champion.method)
    configured = cls.hyperparameters(cfg, code)
    differ = {k: (champion.hparams.get(k), v) for k, v in configured.items() if champion.hparams.get(k) != v}
    if champion.method != r.retrieval_method or differ:
        raise ConfigError(f"ltr.ltr_shifts: the shadow retrievers are trained with params.yaml's `retrieval` section, "
                          f"but the champion retriever is {champion.method} with other settings ({differ or 'method'}: "
                          "champion, params.yaml); promote a retriever of these settings or set "
                          "ltr.ltr_shifts: 0")  # fmt: skip
    shadows, metrics = {}, {}
    for shift in range(1, cfg.ltr.ltr_shifts + 1):
        moved = seqs.shifted(shift)
        seed_everything(cfg.seed)
        model = cls.from_data(champion.n_items, configured, device, RetrievalData(moved, features))
        settings = loop_settings(
            cfg, epochs=r.retrieval_epochs, lr=r.retrieval_lr, patience=r.retrieval_patience,
            batch_size=r.batch_size_retrieval, checkpoint_dir=out / f"shadow{shift}-checkpoint",
            fingerprint=f"{train_id} shift {shift}", batch_order=r.retrieval_batch_order,
        )  # fmt: skip
        history = model.fit(moved, settings, eval_batch_size=cfg.training.eval_batch_size, ks=cfg.training.metric_ks)
        metrics |= {f"shadow{shift}_best_epoch": history.best_epoch, f"shadow{shift}_val_{cfg.training.monitor}":
                    history.best_score}  # fmt: skip
        log.info("shadow retriever of shift %d: best epoch %d, validation %s %.4f (its own shifted split)", shift,
                 history.best_epoch, cfg.training.monitor, history.best_score)  # fmt: skip
        shadows[shift] = model
    return shadows, metrics


def body(cfg: Config, args: argparse.Namespace) -> None:
    root = tracking.project_root(paths().root)
    tracking.configure(root)
    code, method, mode, seed = cfg.data.dataset_code, cfg.rerank.rerank_method, cfg.rerank.rerank_mode, cfg.seed
    prepared = paths().prepared(cfg.data)
    dataset = load_prepared(prepared)
    seqs = Sequences.from_dataset(dataset)
    world = distributed.init_world(cfg.training.device)  # several processes under `accelerate launch`
    val_set, test_set, examples, source_tags = candidate_sets(cfg, seqs, prepared, dataset.n_items)
    reranker_cls = get_reranker_class(method)
    out = paths().experiment("rerank", method, code, seed)

    seed_everything(seed)
    device = world.device or resolve_device(cfg.training.device)
    hparams = reranker_cls.hyperparameters(cfg, code)
    features = FeatureSet(prepared, cfg.features, dataset.items)
    items = item_table(dataset.items, prepared, paths().images(code))
    reranker = reranker_cls.from_data(dataset.n_items, hparams, device, items, features)
    if hasattr(reranker, "attach_registered"):  # ltr: carries the very retriever whose lists it reranks
        pinned = int(source_tags["retriever.version"]) if mode == "retrieval" else None
        reranker.attach_registered(registry.data_prefix(cfg.data), prepared, pinned)
    inputs = {"interactions": prepared / INTERACTIONS, "items": prepared / ITEMS}
    if reranker.hparams.get("feature") and reranker.hparams.get("encoder"):  # VIP5's visual-token features
        feature = reranker.hparams["feature"]
        inputs[f"embeddings.{feature}"] = embedding_file(prepared, feature, reranker.hparams["encoder"])
    data_tags = tracking.data_hash_tags(inputs)
    rr = cfg.rerank
    identity = {"rerank": rr.model_dump(), "sources": source_tags}
    train_id = fingerprint(cfg, identity, hparams, data_tags.get("data.interactions.md5", ""))
    settings = loop_settings(
        cfg, epochs=rr.rerank_epochs, lr=rr.rerank_lr, patience=rr.rerank_patience, batch_size=rr.rerank_batch_size,
        checkpoint_dir=out / "checkpoint", fingerprint=train_id,
    )  # fmt: skip
    shadow_metrics: dict[str, float] = {}
    if reranker.hparams.get("shifted_splits"):  # ltr: more training lists, from shadow retrievers
        shadows, shadow_metrics = shadow_retrievers(cfg, reranker.retriever, seqs, features, device, out, train_id)
        reranker.attach(shadows=shadows)
    protocol = lineage.reranker_protocol(mode, source_tags, int(val_set.candidates.shape[1]))
    tags = {**run_tags(root, cfg, "rerank", method, device, prepared, data_tags, train_id), "rerank_mode": mode,
            lineage.PROTOCOL_TAG: protocol, **source_tags}  # fmt: skip
    prefix = registry.data_prefix(cfg.data)
    ks = cfg.training.metric_ks
    if not world.is_main:  # the other processes only train; rank 0 evaluates, saves, logs and registers
        reranker.fit(seqs, val_set, settings, ks=ks, examples=examples)
        return

    import mlflow

    name = tracking.run_name(method, code, seed)
    params = run_params(cfg, reranker.hparams, "rerank", method, uses_features=reranker.reads_item_features)
    config = cfg.model_dump(mode="json")
    with tracking.training_run(root, code, name, params, tags, args.parent_run_id, prepared, config) as run:
        history = reranker.fit(seqs, val_set, settings, callbacks=[tracking.epoch_logger()], ks=ks, examples=examples)
        repeated = finished_version(history, prefix, "reranker", train_id)
        batch = cfg.training.eval_batch_size
        fusion_metrics, alone = {}, None
        # ltr is trained on the validation lists: its validation numbers, and the fusion weight tuned on them, come
        # from its cross-fitted (out-of-fold) scores.
        fits_on_val = getattr(reranker, "fits_on_validation", False)
        if mode == "retrieval" and rr.rerank_score_fusion:
            weight, curve = tune_weight(reranker, val_set, cfg.training.monitor, ks, batch)
            reranker.hparams["fusion_weight"] = weight
            mlflow.log_param("fusion_weight", weight)
            monitor = cfg.training.monitor  # on lists, `mrr` is the list MRR: name it so
            monitor = list_mrr_name(val_set.candidates.shape[1]) if monitor == "mrr" else monitor
            fusion_metrics = {f"fusion_val/{monitor}_w{weight_label(w)}": v for w, v in curve.items()}
            alone = evaluate_lists(reranker.score, test_set, ks, batch, desc="test, reranker alone")
            fusion_metrics |= prefixed(alone.all_users, "test_reranker_only")
        weight = reranker.hparams.get("fusion_weight")
        if fits_on_val:
            val = result_from_scores(fused_validation(reranker, val_set, weight), val_set, ks)
        else:
            val = evaluate_lists(reranker.score, val_set, ks, batch, desc="val", fusion_weight=weight)
        test = evaluate_lists(reranker.score, test_set, ks, batch, desc="test", fusion_weight=weight)
        baseline = list_order_result(test_set, ks) if mode == "retrieval" else None
        metrics = {**prefixed(val.all_users, "val"), **prefixed(test.all_users, "test"), **fusion_metrics}
        if baseline is not None:
            metrics |= prefixed(baseline.all_users, "test_retrieval_only")
            if test.hit_users is not None:
                metrics |= prefixed(test.hit_users, "test_hit_users")
                metrics |= prefixed(baseline.hit_users, "test_retrieval_only_hit_users")
            metrics["test_candidate_recall"] = test.n_hit / test.n_users
        mlflow.log_metrics({**metrics, **shadow_metrics, "best_epoch": history.best_epoch,
                            "epochs_run": len(history.epochs)})  # fmt: skip
        if hasattr(reranker, "feature_importance"):  # ltr: the gain and split count of every feature
            mlflow.log_table(reranker.feature_importance(), artifact_file="feature_importance.json")
            mlflow.log_figure(reranker.importance_figure(), "feature_importance.png")
            mlflow.set_tags({f"ltr.{k}": json.dumps(v) for k, v in reranker.sources.items()})
        records = {"val": per_user.from_lists(val, val_set, ks), "test": per_user.from_lists(test, test_set, ks)}
        if baseline is not None:
            records["test_retrieval_only"] = per_user.from_lists(baseline, test_set, ks)
        if alone is not None:
            records["test_reranker_only"] = per_user.from_lists(alone, test_set, ks)
        per_user.log(records)
        summary = {**metrics, "mode": mode, "fusion_weight": weight, "users": test.n_users, "users_with_true_item_in_list": test.n_hit,
                   "candidates_per_user": int(test_set.candidates.shape[1]), "best_epoch": history.best_epoch,
                   "epochs_run": len(history.epochs),
                   "retriever_method": source_tags.get("retriever.method", "")}  # fmt: skip

        with staged_directory(out) as scratch:
            reranker.save(scratch / MODEL_DIR)  # weights and settings (an LLM reranker: adapter, tokenizer, texts)
            example = next(u for u in range(len(test_set)) if len(test_set.histories[u]))
            extra = {"bert4rec": (), "ltr": ("lightgbm",)}.get(method, LLM_REQUIREMENTS)
            reqs = pinned_requirements(SERVING_REQUIREMENTS + extra)
            if repeated is None:
                info = serving.log_reranker(scratch / MODEL_DIR, test_set.histories[example][-10:].tolist(),
                                            [int(c) for c in test_set.candidates[example] if c], reqs)  # fmt: skip
            (scratch / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
            write_json(scratch / describe.HEADLINE_FILE, describe.headline_file(metrics, ks, "reranker"))
            write_curves(history, scratch / "history.tsv")
            pd.DataFrame({"user_id": test_set.users, "target": test_set.targets, "rank": test.ranks,
                          "reranked": [" ".join(str(i) for i in row if i) for row in test.order]}).to_csv(
                scratch / "reranked.csv", index=False)  # fmt: skip
            for artifact in ("metrics.json", "history.tsv", "reranked.csv"):
                mlflow.log_artifact(str(scratch / artifact))
            summary_text = summary_of(cfg, "rerank", method, tags, metrics, used_versions(source_tags))
            if repeated is None:
                registered = register_model(scratch, info.model_uri, prefix, "reranker", tags, run, metrics,
                                            summary_text, ks)  # fmt: skip
            else:
                registered = reuse_version(scratch, repeated, run, summary_text)

    log.info(
        "outputs in %s; registered %s version %d (alias candidate)", out, registered["name"], registered["version"]
    )
    where = "ground-truth lists" if mode == "ground_truth" else f"top {test_set.candidates.shape[1]} retrieved"
    if weight is not None:
        where += f", fused with the retrieval score (weight {weight_label(weight)}, tuned on validation)"
    print(f"\n{method} reranking {where} on {code} (best epoch {history.best_epoch} of {len(history.epochs)}), "
          f"test, all {test.n_users} users ({test.n_hit} with the true item in the list):")  # fmt: skip
    print(format_table(summary_rows(test, baseline, alone), ks, test_set.candidates.shape[1]))


def main(argv: list[str] | None = None) -> int:
    return run_stage("recsys train-rerank", __doc__, body, argv, add_parent_run)


if __name__ == "__main__":
    sys.exit(main())
