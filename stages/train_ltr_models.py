"""DVC stage `train_ltr_models`: train and register the retrievers named in `ltr.ltr_models`, so that the `ltr`
reranker finds their newest version of this data when it trains (its `models` feature family).

Each is trained exactly as `recsys train-retrieval --retrieval_method METHOD` would (its own params.yaml section, the
shared retrieval settings), on the train split only, and registered as a version of `{dataset}-retriever` without
the `candidate` alias (a feature model is not up for stage 1's promotion); the outputs go to
experiments/ltr_models/{dataset}/seed{seed}/{method}/, and registered.json there lists the versions.
Rerankers named in `ltr.ltr_models` (bert4rec) are not trained here: register one with `recsys train-rerank` first.
Nothing is trained when the reranker is not `ltr` or its `models` family is off."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys

from recsys_core.config import Config
from recsys_core.io import staged_directory, write_json
from recsys_core.rerank.ltr import model_kind
from stages import train_retrieval
from stages.common import paths, run_stage
from stages.training_common import add_parent_run

log = logging.getLogger("recsys.train_ltr_models")


def wanted(cfg: Config) -> list[str]:
    """The retriever methods the ltr reranker of this config reads as features."""
    if cfg.rerank.rerank_method != "ltr" or "models" not in cfg.ltr.ltr_features:
        return []
    return [name for name in cfg.ltr.ltr_models if model_kind(name) == "retriever"]


def body(cfg: Config, args: argparse.Namespace) -> None:
    out = paths().root / "experiments" / "ltr_models" / cfg.data.dataset_code / f"seed{cfg.seed}"
    methods = wanted(cfg)
    skipped = sorted(set(cfg.ltr.ltr_models) - set(methods)) if cfg.rerank.rerank_method == "ltr" else []
    if skipped:
        log.info("not trained here (rerankers; the ltr stage takes their newest registered version): %s", skipped)
    with staged_directory(out) as scratch:
        registered = {}
        for method in methods:
            own = cfg.model_copy(deep=True)
            own.retrieval.retrieval_method = method
            train_retrieval.body(own, args, out=scratch / method, candidate=False)
            # Finished: its resume point would only fill the DVC cache (a stopped run of this stage starts over).
            shutil.rmtree(scratch / method / "checkpoint", ignore_errors=True)
            registered[method] = json.loads((scratch / method / "registered.json").read_text())
        write_json(scratch / "registered.json", {"models": registered})
    if not methods:
        print("train_ltr_models: nothing to train (ltr.ltr_models names no retriever, or the reranker is not ltr)")


def main(argv: list[str] | None = None) -> int:
    return run_stage("recsys train-ltr-models", __doc__, body, argv, add_parent_run)


if __name__ == "__main__":
    sys.exit(main())
