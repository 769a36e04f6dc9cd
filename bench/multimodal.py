"""Benchmark: the multimodal retrievers (MMGCN, VBPR, BM3) against LRURec on ML-100K with all-MiniLM-L6-v2 text
embeddings of the titles (ML-100K has no images), all trained with the project's loop and early stopping on
validation NDCG@10, evaluated by full ranking over all items for all test users.

Each method runs in its own process, so that its peak memory is its own. Prints, per method: seconds per epoch,
epochs run / best epoch, wall time, peak RSS, and test Recall / NDCG / Hit at 5/10/20. Needs the prepared ML-100K
and its embeddings (`make run`, or `recsys prepare` + `recsys embeddings`).

Settings: LRURec as published (lr 1e-3, batch 128, patience 10); VBPR / MMGCN / BM3 with MMRec's defaults
(Adam, lr 1e-3, batch 2048, patience 20 on the validation metric) and this project's model defaults.

    .venv/bin/python bench/multimodal.py [--methods lrurec vbpr mmgcn bm3] [--epochs 300] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETTINGS = {
    "lrurec": {"retrieval_lr": 1e-3, "batch_size_retrieval": 128, "retrieval_patience": 10, "lru_max_len": 200},
    "vbpr": {"retrieval_lr": 1e-3, "batch_size_retrieval": 2048, "retrieval_patience": 20},
    "mmgcn": {"retrieval_lr": 1e-3, "batch_size_retrieval": 2048, "retrieval_patience": 20},
    "bm3": {"retrieval_lr": 1e-3, "batch_size_retrieval": 2048, "retrieval_patience": 20},
}
KS = (5, 10, 20)


def run_one(method: str, epochs: int, device_name: str, seed: int) -> dict:
    """Train and test one method in this process; returns the figures as a dict."""
    import torch

    from recsys_core.config import load_config
    from recsys_core.data.store import DataPaths, Sequences, load_prepared
    from recsys_core.evaluation import evaluate_full_ranking, split_inputs
    from recsys_core.features.store import FeatureSet
    from recsys_core.retrieval import get_retriever_class
    from recsys_core.retrieval.base import RetrievalData
    from recsys_core.training import LoopSettings, resolve_device, seed_everything

    overrides = {**SETTINGS[method], "retrieval_method": method, "retrieval_epochs": epochs, "device": device_name,
                 "seed": seed, "dataset_code": "ml-100k", "text_encoder": "all-MiniLM-L6-v2"}  # fmt: skip
    cfg = load_config(ROOT / "params.yaml", overrides)
    folder = DataPaths(ROOT).prepared(cfg.data)
    dataset = load_prepared(folder)
    seqs = Sequences.from_dataset(dataset)
    device = resolve_device(cfg.training.device)
    seed_everything(seed)
    cls = get_retriever_class(method)
    data = RetrievalData(seqs, FeatureSet(folder, cfg.features, dataset.items))
    retriever = cls.from_data(dataset.n_items, cls.hyperparameters(cfg, "ml-100k"), device, data)
    r = cfg.retrieval
    settings = LoopSettings(epochs=epochs, lr=r.retrieval_lr, patience=r.retrieval_patience,
                            batch_size=r.batch_size_retrieval, seed=seed, monitor="ndcg_at_10")  # fmt: skip
    began = time.perf_counter()
    history = retriever.fit(seqs, settings, ks=KS)
    wall = time.perf_counter() - began
    test = evaluate_full_ranking(retriever.score, *split_inputs(seqs, "test"), ks=KS, batch_size=256)
    return {
        "method": method,
        "modalities": ",".join(retriever.hparams.get("modalities", [])) or "ids",
        "epoch_s": sum(e["epoch_seconds"] for e in history.epochs) / len(history.epochs),
        "eval_s": sum(e["eval_seconds"] for e in history.epochs) / len(history.epochs),
        "epochs": len(history.epochs),
        "best_epoch": history.best_epoch,
        "wall_s": wall,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "gpu_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else 0.0,
        "device": str(device),
        "test": test.metrics,
    }


def table(rows: list[dict]) -> str:
    head = ["method", "features", "s/epoch", "epochs (best)", "wall s", "peak MB"]
    head += [f"{m}@{k}" for m in ("Recall", "NDCG") for k in KS] + ["Hit@10"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["method"], r["modalities"], f"{r['epoch_s']:.2f}", f"{r['epochs']} ({r['best_epoch']})",
                 f"{r['wall_s']:.0f}", f"{r['peak_mb']:.0f}"]  # fmt: skip
        cells += [f"{r['test'][f'{m}_at_{k}']:.4f}" for m in ("recall", "ndcg") for k in KS]
        cells.append(f"{r['test']['hit_at_10']:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--epochs", type=int, default=300, help="upper bound; early stopping usually ends sooner")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child mode: run one method, print JSON
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, args.epochs, args.device, args.seed)))
        return
    rows = []
    for method in args.methods:
        cmd = [sys.executable, __file__, "--one", method, "--epochs", str(args.epochs), "--device", args.device,
               "--seed", str(args.seed)]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"{method} failed:\n{done.stderr[-3000:]}")
        line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
        rows.append(json.loads(line.removeprefix("RESULT ")))
        print(f"{method}: done in {rows[-1]['wall_s']:.0f} s", file=sys.stderr)
    print(f"ML-100K, full ranking over all items, {rows[0]['device']}; text features: all-MiniLM-L6-v2 (384-d)")
    print(table(rows))


if __name__ == "__main__":
    main()
