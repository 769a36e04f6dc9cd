"""Benchmark: VIP5 scoring throughput (candidates per second) and peak memory, with random weights.

Each list is scored as the reranker does it: the prompt (10 history items, the candidates, 2 visual tokens after each
id) is encoded once and one decoder pass reads the B*K id texts (each prompt's K targets packed into one sequence).
Prompts use the offline T5-style tokenizer (item ids split like T5's: ``▁item _ 16 82``) with 512-d random item
features for an ML-100K-sized catalogue (1,682 items), at 20 and 50 candidates.

    .venv/bin/python bench/vip5.py                               # t5-small's published size, random weights, CPU
    .venv/bin/python bench/vip5.py --size tiny --users 64        # the offline smoke model's size
    .venv/bin/python bench/vip5.py --device cuda --users 512

Peak RSS is the process's high-water mark so far (it only grows: the 50-candidate row includes the 20-candidate
run); on CUDA the allocator's peak is reset for each row.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys_core.rerank.t5_tiny import T5_SMALL_SIZES, build_t5_tokenizer, tiny_t5_config  # noqa: E402
from recsys_core.rerank.vip5 import VIP5Reranker  # noqa: E402

N_ITEMS, FEATURE_DIM, HISTORY = 1682, 512, 10


def write_model(size: str, folder: Path) -> Path:
    """Random weights at the chosen size (t5-small: d_model 512, d_ff 2048, 6+6 layers, 8 heads, vocab 32128)."""
    from transformers import T5ForConditionalGeneration

    tokenizer = build_t5_tokenizer()
    sizes = dict(T5_SMALL_SIZES) if size == "t5-small" else {}
    vocab = sizes.pop("vocab_size", -(-len(tokenizer) // 64) * 64)
    torch.manual_seed(0)
    T5ForConditionalGeneration(tiny_t5_config(vocab, **sizes)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def run(reranker: VIP5Reranker, k: int, users: int, device: torch.device, rng: np.random.Generator) -> dict:
    histories = [rng.choice(np.arange(1, N_ITEMS + 1), HISTORY, replace=False) for _ in range(users)]
    cands = np.stack([rng.choice(np.arange(1, N_ITEMS + 1), k, replace=False) for _ in range(users)])
    tokens = np.mean([len(reranker.prompts.build(h, c).ids) for h, c in zip(histories, cands, strict=True)])
    reranker.score(histories[:2], cands[:2])  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    scores = reranker.score(histories, cands)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - began
    assert torch.isfinite(scores).all()
    gpu = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    return {"k": k, "users": users, "tokens": tokens, "seconds": seconds, "users_s": users / seconds,
            "cands_s": users * k / seconds, "rss": peak_rss_mb(), "gpu": gpu}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    parser.add_argument("--users", type=int, default=32, help="lists scored per row")
    parser.add_argument("--size", choices=("tiny", "t5-small"), default="t5-small")
    parser.add_argument("--batch", type=int, default=16, help="lists per encoder/decoder pass (rerank_batch_size)")
    parser.add_argument("--candidates", type=int, nargs="+", default=[20, 50])
    args = parser.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_model(args.size, Path(tmp) / args.size)
        hparams = {"model": str(folder), "feature": "image", "feature_dim": FEATURE_DIM, "encoder": "random",
                   "image_feature_size_ratio": 2, "reduction_factor": 8, "unfreeze_layer_norms": False,
                   "max_history": HISTORY, "max_length": 512, "score_batch_size": args.batch}  # fmt: skip
        features = torch.randn(N_ITEMS + 1, FEATURE_DIM)
        features[0] = 0
        reranker = VIP5Reranker(N_ITEMS, hparams, device, features=features)
        params = sum(p.numel() for p in reranker.model.parameters())
        trained = sum(p.numel() for p in reranker.trainable.parameters())
        rows = [run(reranker, k, args.users, device, np.random.default_rng(k)) for k in args.candidates]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"VIP5 scoring, {args.size} random weights ({params / 1e6:.1f} M parameters, {trained / 1e6:.2f} M trained), "
          f"{where}, {args.batch} lists per pass")  # fmt: skip
    print(f"{'K':>4} {'users':>6} {'prompt tok':>10} {'seconds':>8} {'users/s':>8} {'cands/s':>8} {'peak RSS MB':>11} "
          f"{'GPU peak MB':>11}")  # fmt: skip
    for r in rows:
        gpu = f"{r['gpu']:.0f}" if r["gpu"] is not None else "-"
        print(f"{r['k']:>4} {r['users']:>6} {r['tokens']:>10.0f} {r['seconds']:>8.2f} {r['users_s']:>8.2f} "
              f"{r['cands_s']:>8.1f} {r['rss']:>11.0f} {gpu:>11}")  # fmt: skip


if __name__ == "__main__":
    main()
