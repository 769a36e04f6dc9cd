"""DVC stage `captions`: one BLIP-2 caption per item with a usable image (features.caption_model, greedy,
features.caption_max_new_tokens, batches of features.caption_batch_size; fp16 on CUDA) into
data/preprocessed/<prepared>/blip2_captions.parquet (item_id, raw_id, caption, model), for the LLM reranker's
`--qwen_mode caption`. Off unless data.generate_caption is true (`--generate_caption`); a rerun captions only the
items that have no caption yet, and an interrupted run keeps what it made."""

from __future__ import annotations

import argparse
import logging
import sys

from recsys_core.config import Config
from recsys_core.data.store import load_prepared
from recsys_core.features.captions import make_captions
from recsys_core.training import resolve_device
from stages.common import paths, run_stage

log = logging.getLogger("recsys.captions")


def body(cfg: Config, args: argparse.Namespace) -> None:
    prepared = paths().prepared(cfg.data)
    items = load_prepared(prepared).items
    images_dir = paths().images(cfg.data.dataset_code)
    enabled = cfg.data.generate_caption
    device = resolve_device(cfg.training.device) if enabled else "cpu"
    run = make_captions(prepared, items, images_dir, cfg.features, enabled, device=device)
    if not enabled:
        print(f"\ncaptions are off: {run.path} holds {len(run.table):,} captions (--generate_caption turns them on)")
        return
    rate = f" ({run.made / run.seconds:.2f}/s)" if run.made and run.seconds else ""
    print(f"\nBLIP-2 captions of {len(items):,} items ({run.with_image:,} with an image) in {run.path}:")
    print(f"  made now  {run.made:>8,}{rate}")
    print(f"  kept      {run.kept:>8,}")
    if run.unreadable:
        print(f"  unreadable images {run.unreadable:,} (tried again next run)")
    if len(run.table):
        sample = run.table.iloc[0]
        print(f"  e.g. item {sample['item_id']} ({sample['raw_id']}): {sample['caption']!r}")


def main(argv: list[str] | None = None) -> int:
    return run_stage("recsys captions", __doc__, body, argv)


if __name__ == "__main__":
    sys.exit(main())
