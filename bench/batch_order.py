"""Benchmark: does the order of LRURec's training batches (`retrieval.retrieval_batch_order`) change its test metrics?

Trains LRURec on the prepared ML-100K with the published settings of bench/retrieval.py once per batch order and
seed, and prints test NDCG / Recall at 10 and 20 (full ranking, all users) as mean ± sd over seeds, the seconds per
epoch, and each order's difference from the reference order (the first of --orders) with 95% paired bootstrap
intervals: per seed, and on the users' metrics averaged over the seeds (the seed-to-seed noise averages out there,
the users stay paired).

Orders: `random` (plain shuffled batches, per-batch mean loss: the published loader and the platform's default),
`length` (batches of similar length, every target weighted the same), `length-batch-mean` (batches of similar length
with the per-batch mean loss: the platform's LRURec training before 2026-12-01, whose short batches weigh their
targets up to 3.8x more). Results are saved under --out as each training ends and read back from there, so several
processes (one per order, say) can share one --out and a last call prints the table.

    .venv/bin/python bench/batch_order.py --out /tmp/batch_order [--orders random length length-batch-mean]
        [--seeds 42 43 44] [--epochs 500] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from retrieval import PUBLISHED  # noqa: E402

import recsys_core.retrieval.base as retrieval_base  # noqa: E402
from recsys_core.batching import bucketed_batches, epoch_batches  # noqa: E402
from recsys_core.config import load_config  # noqa: E402
from recsys_core.data.store import DataPaths, Sequences, load_prepared  # noqa: E402
from recsys_core.evaluation import evaluate_full_ranking, split_inputs  # noqa: E402
from recsys_core.per_user import records  # noqa: E402
from recsys_core.retrieval.lrurec import LRURec  # noqa: E402
from recsys_core.significance import paired_bootstrap  # noqa: E402
from recsys_core.training import LoopSettings, resolve_device, seed_everything  # noqa: E402

ORDERS = ("random", "length", "length-batch-mean")
KS = (10, 20)
COLUMNS = [f"{m}_at_{k}" for k in KS for m in ("ndcg", "recall")]


def old_length_batches(lengths, batch_size, rng, order):
    """Batches of similar length whatever the order says (with order "random" the loss stays the per-batch mean)."""
    return bucketed_batches(lengths, batch_size, rng)


def train(order: str, seed: int, epochs: int, device_name: str) -> dict:
    cfg = load_config(ROOT / "params.yaml", {**PUBLISHED, "retrieval_epochs": epochs, "device": device_name,
                                             "seed": seed, "dataset_code": "ml-100k"})  # fmt: skip
    dataset = load_prepared(DataPaths(ROOT).prepared(cfg.data))
    seqs = Sequences.from_dataset(dataset)
    device = resolve_device(cfg.training.device)
    seed_everything(seed)
    retriever = LRURec(dataset.n_items, LRURec.hyperparameters(cfg, "ml-100k"), device)
    retrieval_base.epoch_batches = old_length_batches if order == "length-batch-mean" else epoch_batches
    settings = LoopSettings(epochs=epochs, lr=cfg.retrieval.retrieval_lr, patience=cfg.retrieval.retrieval_patience,
                            batch_size=cfg.retrieval.batch_size_retrieval, seed=seed, monitor="ndcg_at_10",
                            batch_order="random" if order == "length-batch-mean" else order)  # fmt: skip
    began = time.perf_counter()
    history = retriever.fit(seqs, settings, ks=(5, 10, 20))
    wall = time.perf_counter() - began
    test = evaluate_full_ranking(retriever.score, *split_inputs(seqs, "test"), ks=KS, batch_size=256)
    epoch_s = sum(r["epoch_seconds"] for r in history.epochs) / len(history.epochs)
    return {"summary": {"order": order, "seed": seed, "best_epoch": history.best_epoch, "epochs": len(history.epochs),
                        "epoch_seconds": epoch_s, "wall_seconds": wall, "test": test.metrics},
            "per_user": records(test.users, test.targets, test.target_rank, KS)}  # fmt: skip


def result(order: str, seed: int, out: Path, epochs: int, device: str) -> dict:
    """The saved result of (order, seed), trained and saved first when there is none."""
    name = f"{order}-seed{seed}"
    summary, table = out / f"{name}.json", out / f"{name}.csv"
    if not summary.exists():
        fresh = train(order, seed, epochs, device)
        out.mkdir(parents=True, exist_ok=True)
        fresh["per_user"].to_csv(table.with_suffix(".tmp"), index=False, float_format="%.6g")
        table.with_suffix(".tmp").rename(table)
        summary.with_suffix(".part").write_text(json.dumps(fresh["summary"], indent=2) + "\n")
        summary.with_suffix(".part").rename(summary)  # written last: its presence says the result is whole
        print(f"  {name}: test NDCG@10 {fresh['summary']['test']['ndcg_at_10']:.4f}", flush=True)
    return {"summary": json.loads(summary.read_text()), "per_user": pd.read_csv(table).set_index("user_id")}


def interval(a: pd.Series, b: pd.Series) -> str:
    if not a.index.equals(b.index):
        raise ValueError("the two results are not on the same users")
    d = paired_bootstrap(a.to_numpy(), b.to_numpy())
    return f"{d.delta:+.4f} [{d.low:+.4f}, {d.high:+.4f}] {d.verdict}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="results are saved here and reused")
    parser.add_argument("--orders", nargs="+", default=list(ORDERS), choices=ORDERS, help="the first is the reference")
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    parser.add_argument("--epochs", type=int, default=500, help="upper bound; early stopping ends sooner")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    runs = {(o, s): result(o, s, args.out, args.epochs, args.device) for o in args.orders for s in args.seeds}
    print(f"\nLRURec on ML-100K, published settings, seeds {' '.join(map(str, args.seeds))}: test, all users")
    rows = []
    for order in args.orders:
        tests = pd.DataFrame([runs[order, s]["summary"]["test"] for s in args.seeds])
        row = {"batch order": order}
        row.update({c: f"{tests[c].mean():.4f} ± {tests[c].std(ddof=1) if len(tests) > 1 else 0:.4f}" for c in COLUMNS})
        row["best epochs"] = " ".join(str(runs[order, s]["summary"]["best_epoch"]) for s in args.seeds)
        row["s/epoch"] = f"{np.mean([runs[order, s]['summary']['epoch_seconds'] for s in args.seeds]):.1f}"
        rows.append(row)
    print(pd.DataFrame(rows).to_markdown(index=False))

    reference = args.orders[0]
    for order in args.orders[1:]:
        print(f"\n{order} minus {reference}, 95% paired bootstrap over users (10,000 resamples)")
        lines = []
        for metric in ("ndcg_at_10", "ndcg_at_20", "recall_at_10"):
            line = {"metric": metric}
            for s in args.seeds:
                line[f"seed {s}"] = interval(runs[reference, s]["per_user"][metric], runs[order, s]["per_user"][metric])
            mean_a = sum(runs[reference, s]["per_user"][metric] for s in args.seeds) / len(args.seeds)
            mean_b = sum(runs[order, s]["per_user"][metric] for s in args.seeds) / len(args.seeds)
            line["seed-averaged"] = interval(mean_a, mean_b)
            lines.append(line)
        print(pd.DataFrame(lines).to_markdown(index=False))


if __name__ == "__main__":
    main()
