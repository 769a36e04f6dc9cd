"""`recsys tiny-model --arch qwen3|t5 --out DIR`: write a randomly initialised model with the real architecture and a
working tokenizer built offline (Qwen3: Qwen's real vocabulary; T5: a small fixed vocabulary), so that the LLM
reranker (`--qwen_model DIR`) or VIP5 (`--vip5_model DIR`) runs end to end without any download. It is a smoke model
for offline pipelines and tests, not a recommender."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ARCHES = ("qwen3", "t5")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recsys tiny-model", description=__doc__)
    parser.add_argument("--arch", choices=ARCHES, default="qwen3", help="qwen3 (the qwen reranker) or t5 (vip5)")
    parser.add_argument("--out", type=Path, required=True, help="folder to write (replaced if it exists)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--vocab", choices=("qwen", "bytes"), default="qwen",
                        help="qwen: Qwen's real BPE vocabulary (default); bytes: 256 byte tokens (fastest)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.arch == "t5":
        from recsys_core.rerank.t5_tiny import write_tiny_t5

        folder, flag = write_tiny_t5(args.out, seed=args.seed), "--vip5_model"
    else:
        from recsys_core.rerank.llm.tiny import write_tiny_qwen3

        folder, flag = write_tiny_qwen3(args.out, seed=args.seed, vocab=args.vocab), "--qwen_model"
    print(f"wrote a random-weight {args.arch} smoke model to {folder} (not a recommender); use it with {flag} {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
