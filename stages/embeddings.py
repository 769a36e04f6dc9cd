"""DVC stage `embeddings`: CLIP image embeddings of the items with a usable image and text embeddings of the
items' title + description (all-MiniLM-L6-v2 or CLIP text), into data/preprocessed/<prepared>/embeddings/,
one file per (modality, encoder) named after the encoder, with index.json saying what was made and skipped."""

from __future__ import annotations

import argparse
import logging
import sys

from recsys_core.config import Config
from recsys_core.data.images import MANIFEST, load_manifest
from recsys_core.data.store import ITEMS, load_prepared
from recsys_core.features.embed import compute_embeddings
from recsys_core.training import resolve_device
from stages.common import paths, run_stage

log = logging.getLogger("recsys.embeddings")


def body(cfg: Config, args: argparse.Namespace) -> None:
    prepared = paths().prepared(cfg.data)
    items = load_prepared(prepared).items
    images_dir = paths().images(cfg.data.dataset_code)
    manifest = load_manifest(images_dir) if (images_dir / MANIFEST).exists() else None
    if manifest is None:
        log.warning("no image manifest in %s (run `recsys images`): image embeddings are skipped", images_dir)
    index = compute_embeddings(prepared, items, images_dir, manifest, cfg.features,
                               device=resolve_device(cfg.training.device))  # fmt: skip
    print(f"\nembeddings of {len(items):,} items ({prepared / ITEMS}) in {prepared / 'embeddings'}:")
    for modality, entry in index["made"].items():
        print(f"  {modality:<6} {entry['file']}  dim {entry['dim']}  items with it: {entry['items_with_feature']:,}")
    for modality, reason in index.get("skipped", {}).items():
        print(f"  {modality:<6} skipped: {reason}")


def main(argv: list[str] | None = None) -> int:
    return run_stage("recsys embeddings", __doc__, body, argv)


if __name__ == "__main__":
    sys.exit(main())
