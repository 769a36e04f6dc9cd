"""DVC stage `gt_candidates`: for each user and for validation and test, the true item + (N-1) unseen negatives,
N = rerank_eval_candidates, fixed by the seed."""

from __future__ import annotations

import argparse
import logging
import sys

from recsys_core.candidates import build_gt_candidates, save_gt_candidates
from recsys_core.config import Config
from recsys_core.data.store import GT_CANDIDATES, load_prepared
from stages.common import paths, run_stage

log = logging.getLogger("recsys.gt_candidates")


def body(cfg: Config, args: argparse.Namespace) -> None:
    folder = paths().prepared(cfg.data)
    dataset = load_prepared(folder)
    n, strategy = cfg.candidates.rerank_eval_candidates, cfg.candidates.negative_sampling
    table = build_gt_candidates(dataset, n, cfg.seed, strategy)
    meta = {"rerank_eval_candidates": n, "negative_sampling": strategy, "seed": cfg.seed}
    save_gt_candidates(table, folder / GT_CANDIDATES, meta)
    log.info("%d candidate lists of %d items (%s negatives, seed %d) -> %s", len(table), n, strategy, cfg.seed,
             folder / GT_CANDIDATES)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    return run_stage("recsys gt-candidates", __doc__, body, argv)


if __name__ == "__main__":
    sys.exit(main())
