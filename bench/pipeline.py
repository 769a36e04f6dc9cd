"""Benchmark: every stage-2 variant against retrieval alone on the same test users, with paired 95% intervals.

LRURec (published settings: lr 1e-3, batch 128, patience 10) retrieves the top `--retrieval_top_k` of the whole pool;
each variant reorders the first `--rerank_top_k`:
- `bert4rec cloze (+fusion)`: BERT4Rec trained on its cloze task, fused with the retrieval score (weight tuned on
  validation; the grid's retriever end keeps the retriever's order) and `... alone` (its own order);
- `bert4rec list (+fusion)` / `cloze_list`: BERT4Rec trained on the retriever's lists for train prefixes (`bert_objective`),
  alone or with the cloze loss;
- `ltr`: LightGBM lambdarank on every feature family, `ltr -FAMILY` without each one, and `ltr + bert4rec cloze scores`
  (family `models`: the cloze BERT4Rec's score and rank of each candidate);
- `ltr_shifted`: `ltr` trained on the validation lists and the lists of `--ltr_shifts` earlier steps, each retrieved
  and described by a shadow LRURec trained (same settings) on the split moved that many steps earlier.
Prints one table: validation NDCG@10 (cross-fitted for ltr, in-sample for the fusion weight), test NDCG / Recall
at 5/10/20 over all users (a true item outside the list is a miss), the
NDCG@10 and Recall@10 differences against retrieval with their 95% paired bootstrap interval (users resampled,
10,000 times, seeded) and the verdict (a gain only when the interval excludes zero), and each variant's training
seconds. Needs the prepared dataset (`recsys data-prepare --dataset_code X`, or `make run` for ml-100k).

    .venv/bin/python bench/pipeline.py --dataset ml-100k [--reuse] [--variants bert4rec_cloze ltr ...] [--tie_order file]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys_core import per_user  # noqa: E402
from recsys_core.config import LTR_FEATURES, load_config  # noqa: E402
from recsys_core.data.store import DataPaths, Sequences, load_prepared  # noqa: E402
from recsys_core.evaluation import split_inputs  # noqa: E402
from recsys_core.features.store import FeatureSet  # noqa: E402
from recsys_core.io import write_json  # noqa: E402
from recsys_core.lineage import data_version  # noqa: E402
from recsys_core.pipeline import TwoStage  # noqa: E402
from recsys_core.rerank.bert4rec import BERT4Rec  # noqa: E402
from recsys_core.rerank.data import RetrievedExamples  # noqa: E402
from recsys_core.rerank.evaluate import evaluate_lists, list_order_result, result_from_scores  # noqa: E402
from recsys_core.rerank.fusion import fused_validation, tune_weight, weight_label  # noqa: E402
from recsys_core.rerank.ltr import LTRReranker  # noqa: E402
from recsys_core.retrieval.lrurec import LRURec  # noqa: E402
from recsys_core.training import LoopSettings, resolve_device, seed_everything  # noqa: E402

KS = (5, 10, 20)
TRAINED_ON = "trained_on.json"  # beside the saved LRURec: its data version and batch order
VARIANTS = ("bert4rec_cloze", "bert4rec_list", "bert4rec_cloze_list", "ltr", "ltr_models", "ltr_ablation",
            "ltr_shifted")  # fmt: skip


def epoch_timings(epochs: list[dict]) -> str:
    """Medians, not means: a resumed or paused run has epochs whose wall time includes the pause."""
    wall = np.median([e["epoch_seconds"] for e in epochs])
    cpu = [e["epoch_cpu_seconds"] for e in epochs if "epoch_cpu_seconds" in e]  # absent from older checkpoints
    total = sum(e["epoch_seconds"] + e.get("eval_seconds", 0.0) for e in epochs)
    return (f"training epoch: median {wall:.1f} s wall" + (f", {np.median(cpu):.1f} CPU s" if cpu else "")
            + f"; {total / 60:.1f} min wall for all epochs with validation")  # fmt: skip


def train_retriever(cfg, dataset, prepared, seqs, device, out: Path, args, shift: int = 0) -> tuple[LRURec, float]:
    """LRURec with its published settings on ``seqs`` (``shift`` > 0: a shadow trained on the split moved that many
    steps earlier, for ltr's shifted training lists)."""
    began = time.perf_counter()
    order = cfg.retrieval.retrieval_batch_order
    # What the saved model was trained on: --reuse refuses a model of other data (ids would not mean the same items).
    trained_on = {"data_version": data_version(prepared), "batch_order": order} | ({"shift": shift} if shift else {})
    if args.reuse and (out / "model.safetensors").exists():
        saved = json.loads((out / TRAINED_ON).read_text()) if (out / TRAINED_ON).exists() else None
        if saved != trained_on:
            sys.exit(f"--reuse: the LRURec in {out} was trained on {saved or 'unrecorded data'}, this run's data is "
                     f"{trained_on}: run without --reuse to train it again")  # fmt: skip
        return LRURec.load(out, device), 0.0
    seed_everything(cfg.seed)
    retriever = LRURec(dataset.n_items, LRURec.hyperparameters(cfg, cfg.data.dataset_code), device)
    # A checkpoint after every epoch: a long CPU run (ML-1M) can be stopped and resumed by running the bench again.
    # The fingerprint names the batch order: a checkpoint of the length batches used before 2026-12-01 is not resumed.
    settings = LoopSettings(epochs=args.retrieval_epochs, lr=1e-3, patience=args.retrieval_patience, batch_size=128,
                            seed=cfg.seed, checkpoint_dir=out.with_name("lrurec-checkpoint"), batch_order=order,
                            fingerprint=f"{trained_on['data_version']} {order} batches"
                                        + (f" shift {shift}" if shift else ""))  # fmt: skip
    history = retriever.fit(seqs, settings)
    name = f"LRURec (shift {shift})" if shift else "LRURec"
    print(f"{name}: best epoch {history.best_epoch} of {len(history.epochs)}; {epoch_timings(history.epochs)}")
    retriever.save(out)
    write_json(out / TRAINED_ON, trained_on)
    return retriever, time.perf_counter() - began


def bert4rec(
    cfg, objective: str, dataset, seqs, val, device, retriever, args, prepared: Path, out: Path
) -> tuple[BERT4Rec, float]:
    hparams = {**BERT4Rec.hyperparameters(cfg, cfg.data.dataset_code), "objective": objective}
    began = time.perf_counter()
    seed_everything(cfg.seed)
    model = BERT4Rec(dataset.n_items, hparams, device)
    examples = RetrievedExamples(seqs, retriever.score) if objective != "cloze" else None
    # checkpointed like the retriever (hours on ML-1M on a CPU); the list objective learns from this retriever's lists
    retriever_weights = hashlib.sha256((out / "lrurec" / "model.safetensors").read_bytes()).hexdigest()
    identity = [data_version(prepared), hparams, args.rerank_lr, args.rerank_batch_size, retriever_weights]
    settings = LoopSettings(epochs=args.rerank_epochs, lr=args.rerank_lr, patience=args.rerank_patience,
                            batch_size=args.rerank_batch_size, seed=cfg.seed,
                            checkpoint_dir=out / f"bert4rec-{objective}-checkpoint",
                            fingerprint=hashlib.sha256(json.dumps(identity).encode()).hexdigest())  # fmt: skip
    history = model.fit(seqs, val, settings, ks=KS, examples=examples)
    print(f"BERT4Rec {objective}: best epoch {history.best_epoch} of {len(history.epochs)}")
    return model, time.perf_counter() - began


def ltr(cfg, families, dataset, seqs, val, device, retriever, prepared, models=None,
        shadows=None) -> tuple[LTRReranker, float]:  # fmt: skip
    hparams = {**LTRReranker.hyperparameters(cfg, cfg.data.dataset_code), "features": list(families),
               "models": sorted(models or {}), "shifted_splits": len(shadows or {})}  # fmt: skip
    began = time.perf_counter()
    model = LTRReranker.from_data(dataset.n_items, hparams, device, dataset.items,
                                  FeatureSet(prepared, cfg.features, dataset.items))  # fmt: skip
    model.attach(retriever=retriever, models=models, shadows=shadows)
    model.fit(seqs, val, LoopSettings(epochs=1, lr=0.0, patience=1, seed=cfg.seed), ks=KS)  # LightGBM: own loop
    return model, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--retrieval_epochs", type=int, default=500)
    # Epochs without a better validation NDCG@10 (validated after every epoch). Published LRURec validates every 500
    # iterations on ML-1M and stops after 10 validations without gain: 5,000 iterations, about 89 ML-1M epochs of 56
    # batches. A run that stopped early goes on from its checkpoint when rerun with a longer patience.
    parser.add_argument("--retrieval_patience", type=int, default=10)
    parser.add_argument("--rerank_epochs", type=int, default=200)
    parser.add_argument("--rerank_lr", type=float, default=1e-3)
    parser.add_argument("--rerank_batch_size", type=int, default=32)
    parser.add_argument("--rerank_patience", type=int, default=30)
    parser.add_argument("--bert_dropout", type=float, default=0.1)
    parser.add_argument("--retrieval_top_k", type=int, default=200)
    parser.add_argument("--rerank_top_k", type=int, default=50)
    parser.add_argument("--ltr_shifts", type=int, default=1,
                        help="ltr_shifted: shadow LRURecs trained on the split moved 1..N steps earlier")  # fmt: skip
    parser.add_argument("--device", default="auto")
    parser.add_argument("--reuse", action="store_true", help="reuse the LRURec of an earlier run (bench/out/)")
    parser.add_argument("--tie_order", choices=("file", "item_id", "shuffle"), default="file",
                        help="the prepared data's tie order (prepare it with the same --tie_order first); another "
                             "order than file keeps its results and checkpoints in bench/out/DATASET-ties-ORDER")  # fmt: skip
    args = parser.parse_args()

    cfg = load_config(ROOT / "params.yaml", {"dataset_code": args.dataset, "device": args.device,
                                             "lru_weight_decay": 0.01, "bert_dropout": args.bert_dropout,
                                             "tie_order": args.tie_order})  # fmt: skip
    prepared = DataPaths(ROOT).prepared(cfg.data)
    dataset = load_prepared(prepared)
    if dataset.stats.get("tie_order") != args.tie_order:
        sys.exit(f"{prepared} was prepared with tie_order {dataset.stats.get('tie_order')!r}, not "
                 f"{args.tie_order!r}: run `recsys data-prepare --dataset_code {args.dataset} --tie_order "
                 f"{args.tie_order}` first, or pass that --tie_order here")  # fmt: skip
    seqs = Sequences.from_dataset(dataset)
    device = resolve_device(args.device)
    name = args.dataset if args.tie_order == "file" else f"{args.dataset}-ties-{args.tie_order}"
    out = ROOT / "bench" / "out" / name
    retriever, seconds = train_retriever(cfg, dataset, prepared, seqs, device, out / "lrurec", args)

    stage = TwoStage(retriever, None, args.retrieval_top_k, args.rerank_top_k)
    val = stage.candidate_set(*split_inputs(seqs, "val"))
    test = stage.candidate_set(*split_inputs(seqs, "test"))
    baseline = list_order_result(test, KS)
    records = {"retrieval (LRURec)": per_user.from_lists(baseline, test, KS)}
    results, train_seconds = {"retrieval (LRURec)": baseline.all_users}, {"retrieval (LRURec)": seconds}
    val_ndcg = {"retrieval (LRURec)": list_order_result(val, KS).all_users["ndcg_at_10"]}

    def add(name: str, result, seconds: float, model, weight=None) -> None:
        """``model``'s validation NDCG@10 too: cross-fitted for ltr (trained on the validation lists)."""
        results[name], train_seconds[name] = result.all_users, seconds
        records[name] = per_user.from_lists(result, test, KS)
        val_ndcg[name] = result_from_scores(fused_validation(model, val, weight), val, KS).all_users["ndcg_at_10"]

    trained = {}
    for objective in ("cloze", "list", "cloze_list"):
        if f"bert4rec_{objective}" not in args.variants:
            continue
        model, seconds = bert4rec(cfg, objective, dataset, seqs, val, device, retriever, args, prepared, out)
        trained[objective] = model
        weight, _ = tune_weight(model, val, "ndcg_at_10", KS)
        add(f"bert4rec {objective} + fusion (w {weight_label(weight)})",
            evaluate_lists(model.score, test, KS, fusion_weight=weight), seconds, model, weight)  # fmt: skip
        add(f"bert4rec {objective} alone", evaluate_lists(model.score, test, KS), seconds, model)
    runs = [LTR_FEATURES] if "ltr" in args.variants else []
    if "ltr_ablation" in args.variants:
        runs += [tuple(f for f in LTR_FEATURES if f != drop) for drop in LTR_FEATURES if drop != "models"]
    for families in runs:
        dropped = sorted(set(LTR_FEATURES) - set(families) - {"models"})
        model, seconds = ltr(cfg, families, dataset, seqs, val, device, retriever, prepared)
        add("ltr" + "".join(f" -{f}" for f in dropped), evaluate_lists(model.score, test, KS), seconds, model)
        if not dropped:  # + fusion, its weight tuned on the cross-fitted validation scores
            weight, _ = tune_weight(model, val, "ndcg_at_10", KS)
            add(f"ltr + fusion (w {weight_label(weight)})",
                evaluate_lists(model.score, test, KS, fusion_weight=weight), seconds, model, weight)  # fmt: skip
    if "ltr_shifted" in args.variants:  # + the lists of --ltr_shifts earlier steps, each from its shadow LRURec
        began = time.perf_counter()
        shadows = {s: train_retriever(cfg, dataset, prepared, seqs.shifted(s), device, out / f"lrurec-shift{s}",
                                      args, shift=s)[0] for s in range(1, args.ltr_shifts + 1)}  # fmt: skip
        shadow_seconds = time.perf_counter() - began
        model, seconds = ltr(cfg, LTR_FEATURES, dataset, seqs, val, device, retriever, prepared, shadows=shadows)
        add(f"ltr + {args.ltr_shifts} shifted list set(s)", evaluate_lists(model.score, test, KS),
            seconds + shadow_seconds, model)  # fmt: skip
        weight, _ = tune_weight(model, val, "ndcg_at_10", KS)
        add(f"ltr + {args.ltr_shifts} shifted + fusion (w {weight_label(weight)})",
            evaluate_lists(model.score, test, KS, fusion_weight=weight), seconds + shadow_seconds, model,
            weight)  # fmt: skip
    if "ltr_models" in args.variants and "cloze" in trained:  # + the cloze BERT4Rec's scores (family `models`)
        model, seconds = ltr(cfg, LTR_FEATURES, dataset, seqs, val, device, retriever, prepared,
                             models={"bert4rec": trained["cloze"]})  # fmt: skip
        add("ltr + bert4rec cloze scores", evaluate_lists(model.score, test, KS), seconds, model)

    base = records["retrieval (LRURec)"]
    print(f"\n{args.dataset}: {len(test)} test users; LRURec top {args.retrieval_top_k} -> the first "
          f"{args.rerank_top_k} reranked; true item in them for {baseline.n_hit} users "
          f"({baseline.n_hit / len(test):.1%}), the others are misses for every row; device {device}")  # fmt: skip
    head = ["variant", "val N@10", *(f"N@{k}" for k in KS), *(f"R@{k}" for k in KS), "dNDCG@10 [95% CI]", "dRecall@10 [95% CI]",
            "verdict (NDCG@10)", "train s"]  # fmt: skip
    rows = [head]
    for name, metrics in results.items():
        cells = [
            name,
            f"{val_ndcg[name]:.4f}",
            *(f"{metrics[f'ndcg_at_{k}']:.4f}" for k in KS),
            *(f"{metrics[f'recall_at_{k}']:.4f}" for k in KS),
        ]
        if name == "retrieval (LRURec)":
            cells += ["", "", "", f"{train_seconds[name]:.0f}"]
        else:
            deltas = per_user.compare(base, records[name], ["ndcg_at_10", "recall_at_10"], "retrieval", name)
            n, r = deltas["ndcg_at_10"], deltas["recall_at_10"]
            cells += [f"{n.delta:+.4f} ({n.relative:+.1%}) [{n.low:+.4f}, {n.high:+.4f}]",
                      f"{r.delta:+.4f} [{r.low:+.4f}, {r.high:+.4f}]", n.verdict, f"{train_seconds[name]:.0f}"]  # fmt: skip
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    print("\n".join("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows))
    print(f"peak memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB RSS")


if __name__ == "__main__":
    main()
