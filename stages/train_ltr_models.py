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


def feature_models(cfg: Config) -> dict[str, list[str]]:
    """The models the ltr reranker of this config reads as features, by kind (none unless it is the reranker and its
    `models` family is on)."""
    if cfg.rerank.rerank_method != "ltr" or "models" not in cfg.ltr.ltr_features:
        return {"retriever": [], "reranker": []}
    kinds = {name: model_kind(name) for name in cfg.ltr.ltr_models}
    return {kind: [n for n, k in kinds.items() if k == kind] for kind in ("retriever", "reranker")}


def body(cfg: Config, args: argparse.Namespace) -> None:
    out = paths().root / "experiments" / "ltr_models" / cfg.data.dataset_code / f"seed{cfg.seed}"
    named = feature_models(cfg)
    methods = named["retriever"]
    if named["reranker"]:
        log.info("not trained here (rerankers: ltr takes their newest registered version): %s", named["reranker"])
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
