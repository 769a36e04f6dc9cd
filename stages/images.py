"""DVC stage `images`: download every item image of the dataset (the items that survive the rating, text and k-core
filters) into data/images/{code}/, resized to fit features.image_size, with manifest.parquet giving each item's
status. It runs before `prepare` so that `--use_image` can drop the items without a usable image; a second run
fetches only what is not done yet."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from recsys_core.config import Config
from recsys_core.data.images import STATUSES, download_images
from recsys_core.data.preprocess import preprocess
from recsys_core.data.sources import get_source
from stages.common import paths, run_stage

log = logging.getLogger("recsys.images")


def body(cfg: Config, args: argparse.Namespace) -> None:
    code = cfg.data.dataset_code
    raw = get_source(code).load(paths().raw(code), cfg.data)
    # The item pool before the image filter: the images --use_image decides on.
    pool = preprocess(raw, cfg.data.model_copy(update={"use_image": False})).items
    base_dir = Path(cfg.data.custom_items).resolve().parent if cfg.data.custom_items else paths().raw(code)
    dest = paths().images(code)
    manifest = download_images(pool[["raw_id", "image_url", "image_path"]], dest, cfg.features, base_dir=base_dir)
    counts = manifest[manifest["raw_id"].isin(set(pool["raw_id"]))]["status"].value_counts()
    print(f"\nimages of {code} ({len(pool):,} items) in {dest}:")
    for status in STATUSES:
        print(f"  {status:<12} {int(counts.get(status, 0)):>8,}")


def main(argv: list[str] | None = None) -> int:
    return run_stage("recsys images", __doc__, body, argv)


if __name__ == "__main__":
    sys.exit(main())
