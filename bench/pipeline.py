"""Benchmark: the two-stage pipeline on ML-100K against retrieval alone, on all test users.

LRURec (published settings) retrieves the top `--retrieval_top_k` items from the whole pool; BERT4Rec (lr 1e-3,
batch 32, dropout 0.1, up to 200 epochs: it needs long training), trained with the cloze task and early-stopped on
validation NDCG@10 over the retrieved lists, reranks the first `--rerank_top_k`.
Prints NDCG / Recall / Hit at 5/10/20 of both (a user whose true item was not retrieved is a miss for both), wall
time per stage and reranking throughput. Needs the prepared ML-100K (`make run`).

    .venv/bin/python bench/pipeline.py [--rerank_epochs 200] [--reuse]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys_core.config import load_config  # noqa: E402
from recsys_core.data.store import DataPaths, Sequences, load_prepared  # noqa: E402
from recsys_core.evaluation import split_inputs  # noqa: E402
from recsys_core.metrics import format_table  # noqa: E402
from recsys_core.pipeline import TwoStage  # noqa: E402
from recsys_core.rerank.bert4rec import BERT4Rec  # noqa: E402
from recsys_core.rerank.evaluate import evaluate_lists, list_order_result  # noqa: E402
from recsys_core.rerank.fusion import tune_weight  # noqa: E402
from recsys_core.retrieval.lrurec import LRURec  # noqa: E402
from recsys_core.training import LoopSettings, resolve_device, seed_everything  # noqa: E402

OUT = ROOT / "bench" / "out"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--retrieval_epochs", type=int, default=200)
    parser.add_argument("--rerank_epochs", type=int, default=200)
    parser.add_argument("--rerank_lr", type=float, default=1e-3)
    parser.add_argument("--rerank_batch_size", type=int, default=32)
    parser.add_argument("--rerank_patience", type=int, default=30)
    parser.add_argument("--bert_dropout", type=float, default=0.1)
    parser.add_argument("--retrieval_top_k", type=int, default=200)
    parser.add_argument("--rerank_top_k", type=int, default=50)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--reuse", action="store_true", help="reuse bench/out/ models trained by an earlier run")
    args = parser.parse_args()

    cfg = load_config(ROOT / "params.yaml", {"dataset_code": "ml-100k", "device": args.device, "lru_max_len": 200,
                                             "lru_weight_decay": 0.01, "bert_max_len": 200,
                                             "bert_dropout": args.bert_dropout})  # fmt: skip
    dataset = load_prepared(DataPaths(ROOT).prepared(cfg.data))
    seqs = Sequences.from_dataset(dataset)
    device = resolve_device(args.device)
    times: dict[str, float] = {}

    t0 = time.perf_counter()
    if args.reuse and (OUT / "lrurec" / "model.safetensors").exists():
        retriever = LRURec.load(OUT / "lrurec", device)
    else:
        seed_everything(cfg.seed)
        retriever = LRURec(dataset.n_items, LRURec.hyperparameters(cfg, "ml-100k"), device)
        retriever.fit(seqs, LoopSettings(epochs=args.retrieval_epochs, lr=1e-3, patience=10, batch_size=128,
                                         seed=cfg.seed))  # fmt: skip
        retriever.save(OUT / "lrurec")
    times["train retriever"] = time.perf_counter() - t0

    stage = TwoStage(retriever, None, args.retrieval_top_k, args.rerank_top_k)  # reranker set below
    t0 = time.perf_counter()
    val_set = stage.candidate_set(*split_inputs(seqs, "val"))
    test_set = stage.candidate_set(*split_inputs(seqs, "test"))
    times["retrieve (val + test)"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if args.reuse and (OUT / "bert4rec" / "model.safetensors").exists():
        reranker = BERT4Rec.load(OUT / "bert4rec", device)
    else:
        seed_everything(cfg.seed)
        reranker = BERT4Rec(dataset.n_items, BERT4Rec.hyperparameters(cfg, "ml-100k"), device)
        history = reranker.fit(seqs, val_set, LoopSettings(epochs=args.rerank_epochs, lr=args.rerank_lr,
                               patience=args.rerank_patience, batch_size=args.rerank_batch_size, seed=cfg.seed))  # fmt: skip
        print(f"BERT4Rec: best epoch {history.best_epoch} of {len(history.epochs)}")
        reranker.save(OUT / "bert4rec")
    times["train reranker"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    alone = evaluate_lists(reranker.score, test_set, batch_size=256)
    times["rerank test"] = time.perf_counter() - t0
    weight, curve = tune_weight(reranker, val_set, "ndcg_at_10", (5, 10, 20))
    reranked = evaluate_lists(reranker.score, test_set, batch_size=256, fusion_weight=weight)
    retrieval = list_order_result(test_set)

    print(f"ML-100K, {len(test_set)} test users; LRURec top {args.retrieval_top_k} -> BERT4Rec reranks the top "
          f"{args.rerank_top_k}; true item retrieved in the top {args.rerank_top_k} for {reranked.n_hit} users "
          f"({reranked.n_hit / len(test_set):.1%}); device {device}")  # fmt: skip
    print(f"fusion weight {weight:g} (validation NDCG@10 by weight: "
          + ", ".join(f"{w:g}: {v:.4f}" for w, v in curve.items()) + ")")  # fmt: skip
    print(format_table({"retrieval": retrieval.all_users, "two-stage": reranked.all_users,
                        "reranker alone": alone.all_users}))  # fmt: skip
    for name, res in (("two-stage", reranked), ("reranker alone", alone)):
        gain = res.all_users["ndcg_at_10"] / retrieval.all_users["ndcg_at_10"] - 1
        print(f"NDCG@10 {name} vs retrieval: {gain:+.1%}")
    for name, seconds in times.items():
        print(f"  {name:<24}{seconds:8.1f} s")
    print(f"  reranking throughput    {len(test_set) / times['rerank test']:8.0f} users/s "
          f"({len(test_set) * args.rerank_top_k / times['rerank test']:,.0f} candidates/s)")  # fmt: skip


if __name__ == "__main__":
    main()
