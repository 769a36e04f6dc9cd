"""DVC stage `summaries`: Qwen3-VL (features.summary_model) describes each item from its image and title (category,
type, colour, style, brand, notable features) into data/preprocessed/<prepared>/semantic_summaries.parquet (item_id,
raw_id, semantic_summary, semantic_summary_small, source, model), for the LLM reranker's `--qwen_mode
semantic_summary` / `semantic_summary_small`. Greedy, batches of features.semantic_summary_batch_size, images bounded
by features.vl_min_pixels / vl_max_pixels; items without an image are summarised from their title (source `title`).
Off unless data.generate_semantic_summary is true (`--generate_semantic_summary`); a rerun summarises only the items
that have no summary by the current model yet, and an interrupted run keeps what it made."""

from __future__ import annotations

import argparse
import logging
import sys

from recsys_core.config import Config
from recsys_core.data.images import image_files
from recsys_core.data.store import load_prepared
from recsys_core.features.summaries import ENABLE_FLAGS, KINDS, SOURCES, SUMMARIES, build_summaries
from stages.common import paths, run_stage

log = logging.getLogger("recsys.summaries")


def body(cfg: Config, args: argparse.Namespace) -> None:
    prepared = paths().prepared(cfg.data)
    items = load_prepared(prepared).items
    enabled = cfg.data.generate_semantic_summary
    images = image_files(items, paths().images(cfg.data.dataset_code)) if enabled else {}
    if enabled and not images:
        log.warning("no item of %s has a usable image (run `recsys images` for a dataset with image URLs): every "
                    "item is summarised from its title alone", cfg.data.dataset_code)  # fmt: skip
    device = "cpu"
    if enabled:
        from recsys_core.training import resolve_device

        device = resolve_device(cfg.training.device)
    run = build_summaries(prepared, items, images, cfg.features, enabled, device=device)
    path = prepared / SUMMARIES
    if not enabled:
        print(f"\nsemantic summaries are off: {path} holds {len(run.table):,} rows; turn them on with {ENABLE_FLAGS}")
        return
    print(f"\nsemantic summaries of {len(items):,} items ({len(images):,} with an image) by "
          f"{cfg.features.summary_model} in {path}:")  # fmt: skip
    print(f"  made now  {run.generated:>8,}")
    print(f"  kept      {run.kept:>8,}")
    counts = run.table["source"].value_counts()
    for source in SOURCES:
        print(f"  source {source:<12} {int(counts.get(source, 0)):>8,}")
    for kind in KINDS:
        rate = run.items_per_second(kind)
        if rate:
            print(f"  {kind:<24} {rate:.2f} items/s")
    if run.unreadable_images:
        print(f"  unreadable images {run.unreadable_images:,} (summarised from the title; tried again next run)")
    made = run.table[run.table["semantic_summary"].str.len() > 0]
    if len(made):
        sample = made.iloc[0]
        print(f"  e.g. item {sample['item_id']} ({sample['raw_id']}): {sample['semantic_summary_small']!r}")


def main(argv: list[str] | None = None) -> int:
    return run_stage("recsys summaries", __doc__, body, argv)


if __name__ == "__main__":
    sys.exit(main())
