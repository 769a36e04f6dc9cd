"""Benchmark: how much the order of equal timestamps (`data.tie_order`: file / item_id / shuffle) moves the
leave-one-out split of ML-100K and LRURec's test metrics.

Prepares ML-100K (min_rating 0, 5-core, the defaults) once per tie order into a temporary folder (data/preprocessed
is left alone), prints how many validation / test items sit in a same-timestamp tie with another interaction of
their user and how many users' validation / test items differ between orders, then trains LRURec with the published
settings of bench/retrieval.py (lr 1e-3, batch 128, patience 10 on validation NDCG@10, up to --epochs) on each and
prints the test NDCG@10 / Recall@10 (full ranking, all users) with a per-user paired bootstrap against file order.
Needs the raw ML-100K files (`.venv/bin/python -m stages.download`, offline through the recbole wheel).

    .venv/bin/python bench/tie_order.py [--epochs 500] [--device auto] [--seed 42] [--counts-only]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from retrieval import PUBLISHED  # noqa: E402

from recsys_core.config import load_config  # noqa: E402
from recsys_core.data.preprocess import held_out_ties, preprocess  # noqa: E402
from recsys_core.data.sources import get_source  # noqa: E402
from recsys_core.data.store import DataPaths, Sequences, load_prepared, save_prepared  # noqa: E402
from recsys_core.evaluation import evaluate_full_ranking, split_inputs  # noqa: E402
from recsys_core.retrieval.lrurec import LRURec  # noqa: E402
from recsys_core.significance import RESAMPLES, paired_bootstrap  # noqa: E402
from recsys_core.training import LoopSettings, resolve_device, seed_everything  # noqa: E402

ORDERS = ("file", "item_id", "shuffle")


def held_out(dataset) -> pd.DataFrame:
    """Per raw user id: the raw validation and test items."""
    inter = dataset.interactions
    raw_user = inter["user_id"].map(dataset.users.set_index("user_id")["raw_id"])
    raw_item = inter["item_id"].map(dataset.items.set_index("item_id")["raw_id"])
    frame = pd.DataFrame({"user": raw_user, "item": raw_item, "split": inter["split"].astype(str)})
    frame = frame[frame["split"] != "train"]
    return frame.pivot(index="user", columns="split", values="item")


def train_lrurec(dataset, cfg, device, epochs: int) -> dict:
    """bench/retrieval.py's run: LRURec with the published settings, early stopping on validation NDCG@10."""
    seqs = Sequences.from_dataset(dataset)
    seed_everything(cfg.seed)
    retriever = LRURec(dataset.n_items, LRURec.hyperparameters(cfg, "ml-100k"), device)
    settings = LoopSettings(epochs=epochs, lr=cfg.retrieval.retrieval_lr, patience=cfg.retrieval.retrieval_patience,
                            batch_size=cfg.retrieval.batch_size_retrieval, seed=cfg.seed, monitor="ndcg_at_10")  # fmt: skip
    began = time.perf_counter()
    history = retriever.fit(seqs, settings, ks=(5, 10, 20))
    seconds = time.perf_counter() - began
    test = evaluate_full_ranking(retriever.score, *split_inputs(seqs, "test"), ks=(10,), batch_size=256)
    rank = test.target_rank
    raw_users = dataset.users.set_index("user_id")["raw_id"].loc[test.users].to_numpy()
    per_user = pd.DataFrame(
        {"ndcg": np.where(rank < 10, 1.0 / np.log2(rank + 2.0), 0.0), "recall": (rank < 10).astype(float)},
        index=pd.Index(raw_users, name="user"),
    )
    return {"metrics": test.metrics, "best_epoch": history.best_epoch, "epochs": len(history.epochs),
            "seconds": seconds, "per_user": per_user}  # fmt: skip


def cached_train(name: str, out: Path | None, train) -> dict:
    """``train()``'s result, saved under ``out`` as it finishes (a killed run keeps the finished orders) and read
    back from there instead of training again."""
    if out is not None and (out / f"{name}.json").exists():
        result = json.loads((out / f"{name}.json").read_text())
        result["per_user"] = pd.read_csv(out / f"{name}_per_user.csv", dtype={"user": str}).set_index("user")
        print(f"  {name}: read back from {out}", flush=True)
        return result
    result = train()
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        result["per_user"].to_csv(out / f"{name}_per_user.csv")
        summary = {k: v for k, v in result.items() if k != "per_user"}
        (out / f"{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=500, help="upper bound; early stopping usually ends sooner")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=42, help="training seed (the prepared data does not use it)")
    parser.add_argument("--counts-only", action="store_true", help="prepare and count ties; train nothing")
    parser.add_argument("--orders", nargs="+", default=list(ORDERS), choices=ORDERS)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="save each training's result here as it ends; results already there are reused",
    )
    parser.add_argument(
        "--control-seeds",
        nargs="*",
        type=int,
        default=[],
        metavar="SEED",
        help="also train file order with these training seeds: the seed-to-seed spread to compare with",
    )
    args = parser.parse_args()

    orders = ["file"] + [o for o in args.orders if o != "file"]  # file order is the reference
    cfg = load_config(ROOT / "params.yaml", {**PUBLISHED, "retrieval_epochs": args.epochs, "device": args.device,
                                             "seed": args.seed, "dataset_code": "ml-100k"})  # fmt: skip
    raw = get_source("ml-100k").load(DataPaths(ROOT).raw("ml-100k"), cfg.data)
    inter = raw.interactions
    tied_rows = inter.duplicated(["user", "timestamp"], keep=False)
    print(f"raw ML-100K: {len(inter):,} interactions, {int(tied_rows.sum()):,} share (user, timestamp) with another; "
          f"{inter.loc[tied_rows, 'user'].nunique()} of {inter['user'].nunique()} users have a tie", flush=True)  # fmt: skip

    datasets, held = {}, {}
    with tempfile.TemporaryDirectory(prefix="tie_order_") as tmp:
        for order in orders:
            data_cfg = cfg.data.model_copy(update={"tie_order": order})
            folder = Path(tmp) / order
            save_prepared(preprocess(raw, data_cfg), folder)
            datasets[order] = load_prepared(folder)
            held[order] = held_out(datasets[order])
    first = datasets["file"]
    ties = held_out_ties(first.interactions)
    print(f"prepared: {first.n_users} users, {first.n_items} items, {len(first.interactions):,} interactions")
    print(f"held-out items in a same-timestamp tie with another interaction of the user (any order): "
          f"test {ties['test']} of {first.n_users}, validation {ties['val']} of {first.n_users}")  # fmt: skip
    for order in orders[1:]:
        assert held_out_ties(datasets[order].interactions) == ties
    pairs = [(a, b) for i, a in enumerate(orders) for b in orders[i + 1 :]]
    for a, b in pairs:
        both = held[a].merge(held[b], left_index=True, right_index=True, suffixes=("_a", "_b"))
        val, test = (both["val_a"] != both["val_b"]), (both["test_a"] != both["test_b"])
        print(f"  {a:>7} vs {b:<7}: validation item differs for {int(val.sum())} users, test item for "
              f"{int(test.sum())}, either for {int((val | test).sum())}", flush=True)  # fmt: skip
    if args.counts_only:
        return

    device = resolve_device(cfg.training.device)
    results = {}
    for order in orders:
        print(f"training LRURec on tie order {order!r} ({device}) ...", flush=True)
        results[order] = cached_train(
            f"{order}_seed{cfg.seed}_epochs{args.epochs}",
            args.out,
            lambda order=order: train_lrurec(datasets[order], cfg, device, args.epochs),
        )
        r = results[order]
        print(f"  {order}: test NDCG@10 {r['metrics']['ndcg_at_10']:.4f}, Recall@10 {r['metrics']['recall_at_10']:.4f}, "
              f"best epoch {r['best_epoch']} of {r['epochs']}, {r['seconds']:.0f} s", flush=True)  # fmt: skip

    for seed in args.control_seeds:
        name = f"file@{seed}"
        print(f"training LRURec on tie order 'file' with seed {seed} (control) ...", flush=True)
        control = cfg.model_copy(update={"seed": seed})
        results[name] = cached_train(
            f"file_seed{seed}_epochs{args.epochs}",
            args.out,
            lambda control=control: train_lrurec(datasets["file"], control, device, args.epochs),
        )
        held[name] = held["file"]
        pairs.append(("file", name))
    print(f"\nLRURec on ML-100K, published settings, seed {args.seed}, device {device}")
    print(f"{'order':<10} {'val chg':>7} {'test chg':>8} {'NDCG@10':>8} {'Recall@10':>9} {'best ep':>7} {'seconds':>7}")
    for order in results:
        r = results[order]
        both = held["file"].merge(held[order], left_index=True, right_index=True, suffixes=("_a", "_b"))
        val_chg, test_chg = int((both["val_a"] != both["val_b"]).sum()), int((both["test_a"] != both["test_b"]).sum())
        print(f"{order:<10} {val_chg:>7} {test_chg:>8} {r['metrics']['ndcg_at_10']:>8.4f} "
              f"{r['metrics']['recall_at_10']:>9.4f} {r['best_epoch']:>7} {r['seconds']:>7.0f}")  # fmt: skip
    print(f"\nper-user paired differences (mean, 95% bootstrap interval, {RESAMPLES:,} resamples of users, seed 0)")
    for a, b in pairs:
        if a not in results or b not in results:
            continue
        joined = results[b]["per_user"].merge(
            results[a]["per_user"], left_index=True, right_index=True, suffixes=("_b", "_a")
        )
        for metric in ("ndcg", "recall"):
            d = paired_bootstrap(joined[f"{metric}_a"].to_numpy(), joined[f"{metric}_b"].to_numpy())
            print(f"  {b} - {a} {metric}@10: {d.describe()}")


if __name__ == "__main__":
    main()
