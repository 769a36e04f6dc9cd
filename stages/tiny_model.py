"""`recsys tiny-model --arch qwen3 --out DIR`: write a randomly initialised model with the real architecture and a
working tokenizer (Qwen's real vocabulary, built offline), so that the LLM reranker runs end to end without any
download: `--qwen_model DIR`. It is a smoke model for offline pipelines and tests, not a recommender."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ARCHES = ("qwen3",)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recsys tiny-model", description=__doc__)
    parser.add_argument("--arch", choices=ARCHES, default="qwen3", help="architecture (default qwen3)")
    parser.add_argument("--out", type=Path, required=True, help="folder to write (replaced if it exists)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--vocab", choices=("qwen", "bytes"), default="qwen",
                        help="qwen: Qwen's real BPE vocabulary (default); bytes: 256 byte tokens (fastest)")  # fmt: skip
    args = parser.parse_args(argv)
    from recsys_core.rerank.llm.tiny import write_tiny_qwen3

    folder = write_tiny_qwen3(args.out, seed=args.seed, vocab=args.vocab)
    print(f"wrote a random-weight {args.arch} smoke model to {folder} (not a recommender); "
          f"use it with --qwen_model {folder}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
