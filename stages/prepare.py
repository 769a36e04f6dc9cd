"""DVC stage `prepare`: raw files -> data/preprocessed/{code}_min_rating{r}-min_uc{u}-min_sc{s}/ (k-core, ids,
leave-one-out split), written atomically; prints the dataset statistics. With --use_image, items without a usable
image (the images stage's manifest) are dropped before the k-core."""

from __future__ import annotations

import argparse
import logging
import sys

from recsys_core.config import Config
from recsys_core.data.images import load_manifest, usable_raw_ids
from recsys_core.data.preprocess import ItemFilter, preprocess
from recsys_core.data.sources import get_source
from recsys_core.data.store import save_prepared
from stages.common import paths, run_stage
from stages.show_stats import format_stats

log = logging.getLogger("recsys.prepare")


def body(cfg: Config, args: argparse.Namespace) -> None:
    code = cfg.data.dataset_code
    raw = get_source(code).load(paths().raw(code), cfg.data)
    filters: list[ItemFilter] = []
    if cfg.data.use_image:
        usable = usable_raw_ids(load_manifest(paths().images(code)))
        filters.append(("use_image", lambda items: items["raw_id"].astype(str).isin(usable).to_numpy()))
    dataset = preprocess(raw, cfg.data, item_filters=filters)
    dataset.stats["params"] = cfg.data.model_dump(mode="json")
    dest = paths().prepared(cfg.data)
    save_prepared(dataset, dest)
    log.info("prepared dataset written to %s", dest)
    print(format_stats(dataset.stats, dest))


def main(argv: list[str] | None = None) -> int:
    return run_stage("recsys prepare", __doc__, body, argv)


if __name__ == "__main__":
    sys.exit(main())
