"""DVC stage `promote_retriever` (and `recsys promote`): move the registry alias `champion` of
`{dataset}-{retriever|reranker}` to a version that beats the current champion on a validation metric."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from recsys_core import registry, tracking
from recsys_core.config import Config
from recsys_core.io import write_json
from stages.common import paths, run_stage

log = logging.getLogger("recsys.promote")
STAGE_OF = {"retriever": "retrieval", "reranker": "rerank"}


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=sorted(STAGE_OF), help="which registered model to promote")
    parser.add_argument("--dataset", default=None, help="dataset code (default: data.dataset_code)")
    parser.add_argument("--version", type=int, default=None, help="version to promote (default: the candidate)")
    parser.add_argument("--metric", default="val/ndcg_at_10", help="higher is better (default val/ndcg_at_10)")
    parser.add_argument("--force", action="store_true", help="promote even if it does not beat the champion")


def body(cfg: Config, args: argparse.Namespace) -> None:
    root = tracking.project_root(paths().root)
    tracking.configure(root)
    dataset = args.dataset or cfg.data.dataset_code
    name = registry.model_name(dataset, args.kind)
    decision = registry.promote(name, args.version, args.metric, args.force)
    verdict = "promoted to champion" if decision.promoted else "not promoted"
    print(f"{name} version {decision.version}: {verdict} ({decision.reason})")
    if args.dataset is None and args.version is None:  # the pipeline's own record (a DVC output)
        method = cfg.retrieval.retrieval_method if args.kind == "retriever" else cfg.rerank.rerank_method
        out = paths().experiment(STAGE_OF[args.kind], method, dataset, cfg.seed) / "promotion.json"
        registered = out.with_name("registered.json")
        if registered.exists() and json.loads(registered.read_text())["version"] != decision.version:
            log.warning("the candidate alias points at another version than %s records", registered)
        write_json(out, decision.as_dict())


def main(argv: list[str] | None = None) -> int:
    return run_stage("recsys promote", __doc__, body, argv, add_args)


if __name__ == "__main__":
    sys.exit(main())
