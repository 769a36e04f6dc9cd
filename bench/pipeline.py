"""Benchmark: every stage-2 variant against retrieval alone on the same test users, with paired 95% intervals.

LRURec (published settings: lr 1e-3, batch 128, patience 10) retrieves the top `--retrieval_top_k` of the whole pool;
each variant reorders the first `--rerank_top_k`:
- `bert4rec cloze (+fusion)`: BERT4Rec trained on its cloze task, fused with the retrieval score (weight tuned on
  validation; the grid's retriever end keeps the retriever's order) and `... alone` (its own order);
- `bert4rec list (+fusion)` / `cloze_list`: BERT4Rec trained on the retriever's lists for train prefixes (`bert_objective`),
  alone or with the cloze loss; `--bert_examples_per_user K`: each user's K most recent prefixes an epoch (default:
  params.yaml's); `--bert_list_retriever shadow`: the lists of the shift-1 shadow LRURec (below), which never trained
  on the last train item, so that list is as honest as a test list (the champion trained on every train target);
- `ltr`: LightGBM lambdarank on every feature family, `ltr -FAMILY` without each one;
- `ltr_models`: `ltr` plus family `models`, the score and rank of each candidate from each of `--ltr_models` (the cloze
  BERT4Rec of `bert4rec_cloze`; `lrurec_shift1`, the shadow LRURec of `ltr_shifted`, which never trained on a
  validation target; VBPR, MMGCN, BM3 trained here with their params.yaml settings, batch `--cf_batch_size`; EASE
  solved here, `--ease_lambda`, `--ease_history_decay`), one row
  per model and one with all of them;
- `ltr_shifted`: `ltr` trained on the validation lists and the lists of `--ltr_shifts` earlier steps, each retrieved
  and described by a shadow LRURec trained (same settings) on the split moved that many steps earlier.
Prints one table: validation NDCG@10 (cross-fitted for ltr, in-sample for the fusion weight), test NDCG / Recall
at 5/10/20 over all users (a true item outside the list is a miss), the
NDCG@10 and Recall@10 differences against retrieval with their 95% paired bootstrap interval (users resampled,
10,000 times, seeded) and the verdict (a gain only when the interval excludes zero), and each variant's training
seconds. Needs the prepared dataset (`recsys data-prepare --dataset_code X`, or `make run` for ml-100k).

    .venv/bin/python bench/pipeline.py --dataset ml-100k [--reuse] [--variants bert4rec_cloze ltr ...] [--tie_order file]
        [--bert_batch_order random length] [--bert_seed 43] [--per_user_dir DIR] [--ltr_models vbpr lrurec_shift1]

With two `--bert_batch_order`s each BERT4Rec variant is trained once per order and the paired difference of the two
is printed under the table; `--per_user_dir` keeps every row's per-user results, so runs of several `--bert_seed`s
can be pooled with bench/pooled_compare.py.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import re
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
from recsys_core.retrieval import get_retriever_class  # noqa: E402
from recsys_core.retrieval.base import RetrievalData, Retriever  # noqa: E402
from recsys_core.retrieval.lrurec import LRURec  # noqa: E402
from recsys_core.training import LoopSettings, resolve_device, seed_everything  # noqa: E402

KS = (5, 10, 20)
TRAINED_ON = "trained_on.json"  # beside the saved LRURec: its data version and batch order
COLLABORATIVE = ("vbpr", "mmgcn", "bm3", "ease")
CLOSED_FORM = ("ease",)  # solved again on every run (seconds): nothing to reuse or resume
CHOICE_METHODS = {"lrurec_shift1": "lrurec"}  # --ltr_models choice -> the method its features are named after
MODEL_LABELS = {"bert4rec": "bert4rec cloze", "lrurec_shift1": "lrurec (shift 1)"}  # --ltr_models -> table label
VARIANTS = ("bert4rec_cloze", "bert4rec_list", "bert4rec_cloze_list", "ltr", "ltr_models", "ltr_ablation",
            "ltr_shifted")  # fmt: skip


def epoch_timings(epochs: list[dict]) -> str:
    """Medians, not means: a resumed or paused run has epochs whose wall time includes the pause."""
    wall = np.median([e["epoch_seconds"] for e in epochs])
    cpu = [e["epoch_cpu_seconds"] for e in epochs if "epoch_cpu_seconds" in e]  # absent from older checkpoints
    total = sum(e["epoch_seconds"] + e.get("eval_seconds", 0.0) for e in epochs)
    return (f"training epoch: median {wall:.1f} s wall" + (f", {np.median(cpu):.1f} CPU s" if cpu else "")
            + f"; {total / 60:.1f} min wall for all epochs with validation")  # fmt: skip


def row_file(name: str) -> str:
    """A row's file name: its label without the fusion weight (which a seed may tune differently), in lower-case words
    joined by '-'."""
    return re.sub(r"[^a-z0-9]+", "-", re.sub(r" \(w [^)]*\)", "", name).lower()).strip("-")


def lists_per_user(args, objective: str) -> int | None:
    """``--bert_examples_per_user`` where it matters: the list objectives read it, cloze never does (so a cloze
    model keeps its checkpoint and row name whatever the flag says)."""
    return None if objective == "cloze" else args.bert_examples_per_user


def shadow_lists(args, objective: str) -> bool:
    """Whether this BERT4Rec learns from the shift-1 shadow's lists (``--bert_list_retriever shadow``; cloze has none)."""
    return objective != "cloze" and args.bert_list_retriever == "shadow"


def ease_overrides(args) -> dict:
    """The EASE flags given on the command line (the others keep params.yaml's values)."""
    return {k: v for k, v in (("ease_lambda", args.ease_lambda), ("ease_history_decay", args.ease_history_decay))
            if v is not None}  # fmt: skip


def checkpoint_dir(out: Path) -> Path:
    """Beside the model's folder, named after it: each model (a shadow LRURec too) resumes only its own training."""
    return out.with_name(f"{out.name}-checkpoint")


def reusable(out: Path, trained_on: dict, args) -> bool:
    """Whether --reuse takes the model saved in ``out``; it refuses one trained on anything else than
    ``trained_on`` (another data version would give ids that name other items)."""
    if not (args.reuse and (out / "model.safetensors").exists()):
        return False
    saved = json.loads((out / TRAINED_ON).read_text()) if (out / TRAINED_ON).exists() else None
    if saved != trained_on:
        sys.exit(f"--reuse: the model in {out} was trained on {saved or 'unrecorded data'}, this run's is "
                 f"{trained_on}: run without --reuse to train it again")  # fmt: skip
    return True


def train_retriever(cfg, dataset, prepared, seqs, device, out: Path, args, shift: int = 0) -> tuple[LRURec, float]:
    """LRURec with its published settings on ``seqs`` (``shift`` > 0: a shadow trained on the split moved that many
    steps earlier, for ltr's shifted training lists)."""
    began = time.perf_counter()
    order = cfg.retrieval.retrieval_batch_order
    trained_on = {"data_version": data_version(prepared), "batch_order": order} | ({"shift": shift} if shift else {})
    if reusable(out, trained_on, args):
        return LRURec.load(out, device), 0.0
    seed_everything(cfg.seed)
    retriever = LRURec(dataset.n_items, LRURec.hyperparameters(cfg, cfg.data.dataset_code), device)
    # A checkpoint after every epoch: a long CPU run (ML-1M) can be stopped and resumed by running the bench again.
    # The fingerprint names the batch order: a checkpoint of the length batches used before 2026-12-01 is not resumed.
    settings = LoopSettings(epochs=args.retrieval_epochs, lr=1e-3, patience=args.retrieval_patience, batch_size=128,
                            seed=cfg.seed, checkpoint_dir=checkpoint_dir(out), batch_order=order,
                            fingerprint=f"{trained_on['data_version']} {order} batches"
                                        + (f" shift {shift}" if shift else ""))  # fmt: skip
    history = retriever.fit(seqs, settings)
    name = f"LRURec (shift {shift})" if shift else "LRURec"
    print(f"{name}: best epoch {history.best_epoch} of {len(history.epochs)}; {epoch_timings(history.epochs)}")
    retriever.save(out)
    write_json(out / TRAINED_ON, trained_on)
    return retriever, time.perf_counter() - began


def train_collaborative(cfg, method: str, dataset, prepared, seqs, device, out: Path, args) -> Retriever:
    """VBPR / MMGCN / BM3 with their params.yaml settings (lr, patience) on the train split, checkpointed, or EASE
    solved; their scores of a list are one of ltr's ``models`` features. Trained on the train split only: validation
    targets unseen."""
    trained_on = {"data_version": data_version(prepared), "method": method, "batch_size": args.cf_batch_size}
    if method not in CLOSED_FORM and reusable(out, trained_on, args):
        return get_retriever_class(method).load(out, device)
    seed_everything(cfg.seed)
    cls = get_retriever_class(method)
    features = FeatureSet(prepared, cfg.features, dataset.items)
    model = cls.from_data(dataset.n_items, cls.hyperparameters(cfg, cfg.data.dataset_code), device,
                          RetrievalData(seqs, features))  # fmt: skip
    r = cfg.retrieval
    settings = LoopSettings(epochs=r.retrieval_epochs, lr=r.retrieval_lr, patience=r.retrieval_patience,
                            batch_size=args.cf_batch_size, seed=cfg.seed, checkpoint_dir=checkpoint_dir(out),
                            fingerprint=json.dumps(trained_on, sort_keys=True))  # fmt: skip
    history = model.fit(seqs, settings)
    best = history.epochs[history.best_epoch - 1].get("val_ndcg_at_10", float("nan"))
    print(f"{method}: best epoch {history.best_epoch} of {len(history.epochs)}, validation NDCG@10 {best:.4f}; "
          f"{epoch_timings(history.epochs)}")  # fmt: skip
    model.save(out)
    write_json(out / TRAINED_ON, trained_on)
    return model


def bert4rec(
    cfg, objective: str, order: str, dataset, seqs, val, device, retriever, args, prepared: Path, out: Path
) -> tuple[BERT4Rec, float]:
    hparams = {**BERT4Rec.hyperparameters(cfg, cfg.data.dataset_code), "objective": objective, "batch_order": order}
    per_user_lists = lists_per_user(args, objective)
    if per_user_lists is not None:  # the list objectives' training lists per user and epoch
        hparams["examples_per_user"] = per_user_lists
    lists_tag = "" if per_user_lists is None else f"-lists{per_user_lists}"  # its own checkpoint, not overwriting
    began = time.perf_counter()
    lister, lister_dir = retriever, out / "lrurec"
    if shadow_lists(args, objective):
        if hparams["examples_per_user"] != 1:
            sys.exit("--bert_list_retriever shadow: the shadow trained on every train target but the last, so only "
                     "the last train prefix's list is honest; use --bert_examples_per_user 1")  # fmt: skip
        lister_dir = out / "lrurec-shift1"
        lister = train_retriever(cfg, dataset, prepared, seqs.shifted(1), device, lister_dir, args, shift=1)[0]
        lists_tag += "-shadow"
    seed = cfg.seed if args.bert_seed is None else args.bert_seed
    seed_everything(seed)
    model = BERT4Rec(dataset.n_items, hparams, device)
    examples = RetrievedExamples(seqs, lister.score) if objective != "cloze" else None
    # checkpointed like the retriever (hours on ML-1M on a CPU); the list objective learns from this retriever's lists
    retriever_weights = hashlib.sha256((lister_dir / "model.safetensors").read_bytes()).hexdigest()
    identity = [data_version(prepared), hparams, args.rerank_lr, args.rerank_batch_size, retriever_weights, seed]
    settings = LoopSettings(epochs=args.rerank_epochs, lr=args.rerank_lr, patience=args.rerank_patience,
                            batch_size=args.rerank_batch_size, seed=seed,
                            checkpoint_dir=out / f"bert4rec-{objective}-{order}-seed{seed}{lists_tag}-checkpoint",
                            fingerprint=hashlib.sha256(json.dumps(identity).encode()).hexdigest())  # fmt: skip
    history = model.fit(seqs, val, settings, ks=KS, examples=examples)
    print(f"BERT4Rec {objective} ({order} batches, seed {seed}): best epoch {history.best_epoch} of "
          f"{len(history.epochs)}; {epoch_timings(history.epochs)}")  # fmt: skip
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
    parser.add_argument("--bert_batch_order", nargs="+", choices=("length", "random"), default=["random"],
                        help="BERT4Rec's cloze batches (bert4rec.bert_batch_order); two: a model with each, and their "
                             "paired difference")  # fmt: skip
    parser.add_argument("--bert_seed", type=int, default=None, help="BERT4Rec's seed (default: params.yaml's seed); "
                        "the LRURec keeps its own")  # fmt: skip
    parser.add_argument("--bert_examples_per_user", type=int, default=None,
                        help="list objectives: training lists per user and epoch, the user's most recent train "
                             "prefixes (default: bert4rec.bert_examples_per_user)")  # fmt: skip
    parser.add_argument("--bert_list_retriever", choices=("champion", "shadow"), default="champion",
                        help="list objectives: whose top lists train them, the champion LRURec's or the shift-1 "
                             "shadow's (which never trained on the last train item; one list per user)")  # fmt: skip
    parser.add_argument("--retrieval_top_k", type=int, default=200)
    parser.add_argument("--rerank_top_k", type=int, default=50)
    parser.add_argument("--ltr_shifts", type=int, default=1,
                        help="ltr_shifted: shadow LRURecs trained on the split moved 1..N steps earlier")  # fmt: skip
    parser.add_argument("--ltr_models", nargs="+", default=["bert4rec"], choices=("bert4rec", "lrurec_shift1", *COLLABORATIVE),
                        help="ltr_models: the models whose scores are features (bert4rec needs bert4rec_cloze)")  # fmt: skip
    parser.add_argument("--cf_batch_size", type=int, default=1024, help="VBPR / MMGCN / BM3 training batch")
    parser.add_argument("--ease_lambda", type=float, default=None, help="EASE's L2 weight (default: params.yaml's)")
    parser.add_argument(
        "--ease_history_decay",
        type=float,
        default=None,
        help="EASE's history weights, decay^k k steps before the last (default: params.yaml's)",
    )
    parser.add_argument("--per_user_dir", type=Path, help="write each row's per-user test results here (CSV, "
                        "named after the row without its fusion weight), e.g. to pool seeds with bench/pooled_compare.py")  # fmt: skip
    parser.add_argument("--device", default="auto")
    parser.add_argument("--reuse", action="store_true", help="reuse the LRURec of an earlier run (bench/out/)")
    parser.add_argument("--tie_order", choices=("file", "item_id", "shuffle"), default="file",
                        help="the prepared data's tie order (prepare it with the same --tie_order first); another "
                             "order than file keeps its results and checkpoints in bench/out/DATASET-ties-ORDER")  # fmt: skip
    args = parser.parse_args()

    cfg = load_config(ROOT / "params.yaml", {"dataset_code": args.dataset, "device": args.device,
                                             "lru_weight_decay": 0.01, "bert_dropout": args.bert_dropout,
                                             "tie_order": args.tie_order, **ease_overrides(args)})  # fmt: skip
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

    trained, by_order = {}, {}  # by_order: (objective, fused?) -> {batch order: row name}
    orders = list(dict.fromkeys(args.bert_batch_order))
    for objective, order in itertools.product(("cloze", "list", "cloze_list"), orders):
        if f"bert4rec_{objective}" not in args.variants:
            continue
        model, seconds = bert4rec(cfg, objective, order, dataset, seqs, val, device, retriever, args, prepared, out)
        trained.setdefault(objective, model)  # the first batch order's model is the one ltr_models scores with
        weight, _ = tune_weight(model, val, "ndcg_at_10", KS)
        lists = lists_per_user(args, objective)
        tag = f" [{order} batches]" if len(orders) > 1 else ""
        tag += "" if lists is None else f" [{lists} lists a user]"
        tag += " [shadow lists]" if shadow_lists(args, objective) else ""
        for fused, name in ((True, f"bert4rec {objective}{tag} + fusion (w {weight_label(weight)})"),
                            (False, f"bert4rec {objective}{tag} alone")):  # fmt: skip
            result = evaluate_lists(model.score, test, KS, fusion_weight=weight if fused else None)
            add(name, result, seconds, model, weight if fused else None)
            by_order.setdefault((objective, fused), {})[order] = name
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
    if "ltr_models" in args.variants:  # + other models' scores (family `models`), each alone and all together
        others, model_seconds = {}, {}  # choice -> model; BERT4Rec's training time is on its own rows
        for name in args.ltr_models:
            began = time.perf_counter()
            if name == "bert4rec":
                if "cloze" not in trained:
                    sys.exit("--ltr_models bert4rec: add the bert4rec_cloze variant (its model is the one scored)")
                others[name] = trained["cloze"]
            elif name == "lrurec_shift1":  # the ltr_shifted variant's shadow: it never trained on a validation target
                others[name] = train_retriever(cfg, dataset, prepared, seqs.shifted(1), device, out / "lrurec-shift1",
                                               args, shift=1)[0]  # fmt: skip
            else:
                others[name] = train_collaborative(cfg, name, dataset, prepared, seqs, device, out / name, args)
            model_seconds[name] = 0.0 if name == "bert4rec" else time.perf_counter() - began
        for chosen in [[n] for n in others] + ([list(others)] if len(others) > 1 else []):
            model, seconds = ltr(cfg, LTR_FEATURES, dataset, seqs, val, device, retriever, prepared,
                                 models={CHOICE_METHODS.get(n, n): others[n] for n in chosen})  # fmt: skip
            label = f"ltr + {' + '.join(MODEL_LABELS.get(n, n) for n in chosen)} scores"
            seconds += sum(model_seconds[n] for n in chosen)
            add(label, evaluate_lists(model.score, test, KS), seconds, model)
            weight, _ = tune_weight(model, val, "ndcg_at_10", KS)  # as the pipeline serves it (rerank_score_fusion)
            add(f"{label} + fusion (w {weight_label(weight)})", evaluate_lists(model.score, test, KS,
                fusion_weight=weight), seconds, model, weight)  # fmt: skip

    if args.per_user_dir:
        args.per_user_dir.mkdir(parents=True, exist_ok=True)
        for name, frame in records.items():
            frame.to_csv(args.per_user_dir / f"{row_file(name)}.csv", index=False)
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
    for (objective, fused), names in by_order.items():  # one batch order against the other, same users
        if len(names) == 2:
            (a, name_a), (b, name_b) = names.items()
            for metric, d in per_user.compare(records[name_a], records[name_b], ["ndcg_at_10", "recall_at_10"], a,
                                              b).items():  # fmt: skip
                print(f"bert4rec {objective}{' + fusion' if fused else ' alone'}: {b} - {a} batches, test {metric} "
                      f"{d.delta:+.4f} [{d.low:+.4f}, {d.high:+.4f}] ({d.verdict})")  # fmt: skip
    print(f"peak memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB RSS")


if __name__ == "__main__":
    main()
