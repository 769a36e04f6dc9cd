"""Benchmark: LRURec on ML-100K with the published LRURec settings (lr 1e-3, weight decay 0.01, batch 128,
dropout 0.2, max_len 200, early stopping patience 10 on validation NDCG@10), trained with the project's loop.

Prints seconds per epoch, epochs to the best, evaluation throughput (user-item scores per second), peak memory and
the test Recall / NDCG / Hit at 5/10/20 (full ranking, all users). Needs the prepared ML-100K (`make run`).

    .venv/bin/python bench/retrieval.py [--epochs 200] [--device auto] [--seed 42] [--batch_order random]

`--batch_order random` (the default) trains on plain shuffled batches, as the published LRURec code does, `length` on
batches of similar length (less padding); bench/batch_order.py compares them over seeds, with paired intervals.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys_core.batching import BATCH_ORDERS  # noqa: E402
from recsys_core.config import load_config  # noqa: E402
from recsys_core.data.store import DataPaths, Sequences, load_prepared  # noqa: E402
from recsys_core.evaluation import evaluate_full_ranking, split_inputs  # noqa: E402
from recsys_core.metrics import format_table  # noqa: E402
from recsys_core.retrieval.lrurec import LRURec  # noqa: E402
from recsys_core.training import LoopSettings, resolve_device, seed_everything  # noqa: E402

PUBLISHED = {
    "retrieval_lr": 1e-3,
    "batch_size_retrieval": 128,
    "retrieval_patience": 10,
    "lru_weight_decay": 0.01,
    "lru_dropout": 0.2,
    "lru_attn_dropout": 0.2,
    "lru_max_len": 200,
    "lru_hidden_size": 64,
    "lru_num_blocks": 2,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=200, help="upper bound; early stopping usually ends sooner")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--batch_order", choices=BATCH_ORDERS, default="random", help="retrieval.retrieval_batch_order")
    args = parser.parse_args()

    cfg = load_config(ROOT / "params.yaml", {**PUBLISHED, "retrieval_epochs": args.epochs, "device": args.device,
                                             "seed": args.seed, "dataset_code": "ml-100k"})  # fmt: skip
    folder = DataPaths(ROOT).prepared(cfg.data)
    dataset = load_prepared(folder)
    seqs = Sequences.from_dataset(dataset)
    device = resolve_device(cfg.training.device)
    seed_everything(cfg.seed)
    retriever = LRURec(dataset.n_items, LRURec.hyperparameters(cfg, "ml-100k"), device)
    settings = LoopSettings(epochs=args.epochs, lr=cfg.retrieval.retrieval_lr, patience=cfg.retrieval.retrieval_patience,
                            batch_size=cfg.retrieval.batch_size_retrieval, seed=cfg.seed, monitor="ndcg_at_10",
                            batch_order=args.batch_order)  # fmt: skip
    began = time.perf_counter()
    history = retriever.fit(seqs, settings, ks=(5, 10, 20))
    wall = time.perf_counter() - began

    inputs = split_inputs(seqs, "test")
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    test = evaluate_full_ranking(retriever.score, *inputs, ks=(5, 10, 20), batch_size=256)
    if device.type == "cuda":
        torch.cuda.synchronize()
    eval_s = time.perf_counter() - t0
    epoch_s = sum(r["epoch_seconds"] for r in history.epochs) / len(history.epochs)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else 0.0

    print(f"LRURec on ML-100K ({dataset.n_users} users, {dataset.n_items} items), published settings, device {device}, "
          f"seed {cfg.seed}, batch order {args.batch_order}")  # fmt: skip
    print(f"  seconds per epoch (train)   {epoch_s:.2f}  (+ {history.epochs[0]['eval_seconds']:.2f} s validation)")
    print(f"  epochs run / best epoch     {len(history.epochs)} / {history.best_epoch}"
          f"{' (early stopped)' if history.stopped_early else ''}")  # fmt: skip
    print(f"  training wall time          {wall:.0f} s")
    print(f"  evaluation throughput       {len(inputs[0]) * dataset.n_items / eval_s:,.0f} user-item scores/s "
          f"({len(inputs[0]) / eval_s:,.0f} users/s)")  # fmt: skip
    print(f"  peak memory                 {peak:.0f} MB RSS" + (f", {gpu_peak:.0f} MB GPU" if gpu_peak else ""))
    print(format_table({"test": test.metrics}))


if __name__ == "__main__":
    main()
