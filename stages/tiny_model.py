"""`recsys tiny-model --arch qwen3|qwen3vl|t5|blip2 --out DIR`: write a randomly initialised model with the real
architecture and a working tokenizer / processor built offline (Qwen3 and Qwen3-VL: Qwen's real vocabulary; T5 and
BLIP-2: small fixed vocabularies), so that the qwen reranker (`--qwen_model DIR`), the qwen3vl reranker and the
summaries stage (`--qwen3vl_model DIR`, `--summary_model DIR`), VIP5 (`--vip5_model DIR`) or the captions stage
(`--caption_model DIR`) run end to end without any download. It is a smoke model for offline pipelines and tests:
its outputs are noise."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ARCHES = ("qwen3", "qwen3vl", "t5", "blip2")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recsys tiny-model", description=__doc__)
    parser.add_argument(
        "--arch",
        choices=ARCHES,
        default="qwen3",
        help="qwen3 (qwen reranker), qwen3vl (qwen3vl reranker, summaries), t5 (vip5), blip2 (captions)",
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to write (replaced if it exists)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--vocab", choices=("qwen", "bytes"), default="qwen",
                        help="qwen: Qwen's real BPE vocabulary (default); bytes: 256 byte tokens (fastest)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.arch == "t5":
        from recsys_core.rerank.t5_tiny import write_tiny_t5

        folder, flags = write_tiny_t5(args.out, seed=args.seed), "--vip5_model"
    elif args.arch == "qwen3vl":
        from recsys_core.rerank.llm.tiny_vl import write_tiny_qwen3vl

        folder, flags = write_tiny_qwen3vl(args.out, seed=args.seed), "--qwen3vl_model or --summary_model"
    elif args.arch == "blip2":
        from recsys_core.features.blip2_tiny import write_tiny_blip2

        folder, flags = write_tiny_blip2(args.out, seed=args.seed), "--caption_model"
    else:
        from recsys_core.rerank.llm.tiny import write_tiny_qwen3

        folder, flags = write_tiny_qwen3(args.out, seed=args.seed, vocab=args.vocab), "--qwen_model"
    print(f"wrote a random-weight {args.arch} smoke model to {folder} (not a recommender, its outputs are noise); "
          f"use it with {flags} {folder}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
