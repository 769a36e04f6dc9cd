"""DVC stage `promote_retriever` (and `recsys promote`): move the registry alias `champion` of
`{dataset}-{retriever|reranker}` to a version that beats the current champion on a validation metric."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from recsys_core import describe, lineage, registry, tracking
from recsys_core.config import Config
from recsys_core.errors import LineageError
from recsys_core.io import write_json
from stages.common import paths, run_stage

log = logging.getLogger("recsys.promote")
STAGE_OF = {"retriever": "retrieval", "reranker": "rerank"}


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=sorted(STAGE_OF), help="which registered model to promote")
    parser.add_argument("--dataset", default=None,
                        help="registered-model prefix (default: from the data flags, e.g. ml-100k)")  # fmt: skip
    parser.add_argument("--version", type=int, default=None, help="version to promote (default: the candidate)")
    parser.add_argument("--metric", default="val/ndcg_at_10", help="higher is better (default val/ndcg_at_10)")
    parser.add_argument("--force", action="store_true", help="promote even if it does not beat the champion")


def body(cfg: Config, args: argparse.Namespace) -> None:
    root = tracking.project_root(paths().root)
    tracking.configure(root)
    own_prefix = registry.data_prefix(cfg.data)
    dataset = args.dataset or own_prefix
    name = registry.model_name(dataset, args.kind)
    pipeline = args.dataset is None and args.version is None  # the DVC stage: promote what this config trained
    prepared = paths().prepared(cfg.data)
    # The data this setting works on: versions of other data are refused, and a champion of other data gives way.
    data_version = lineage.data_version(prepared) if dataset == own_prefix and prepared.exists() else None
    version, record = args.version, None
    if pipeline:
        method = cfg.retrieval.retrieval_method if args.kind == "retriever" else cfg.rerank.rerank_method
        folder = paths().experiment(STAGE_OF[args.kind], method, cfg.data.dataset_code, cfg.seed)
        registered = folder / "registered.json"
        if registered.exists():
            written = json.loads(registered.read_text())
            if written.get("name", name) != name:  # the folder is shared by every filter setting of the dataset
                raise LineageError(
                    f"{registered} names {written['name']} v{written['version']}, a model of another data setting "
                    f"than this one ({name}); train for this setting first (`dvc repro train_{STAGE_OF[args.kind]}`)"
                )
            version = written["version"]
        record = folder / "promotion.json"
    try:
        decision = registry.promote(name, version, args.metric, args.force, data_version)
    except registry.RegistryError as err:
        if pipeline and version is not None:
            raise registry.RegistryError(
                f"{err}. {registered} names version {version}, which this MLflow store does not hold (was the store "
                f"reset?). Train again: `dvc repro --force train_{STAGE_OF[args.kind]}`."
            ) from None
        raise
    describe.record_promotion(name, decision.version, decision.run_id, decision.promoted, decision.reason)
    verdict = "promoted to champion" if decision.promoted else "not promoted"
    print(f"{name} version {decision.version}: {verdict} ({decision.reason})")
    if record is not None:
        write_json(record, decision.as_dict())


def main(argv: list[str] | None = None) -> int:
    return run_stage("recsys promote", __doc__, body, argv, add_args)


if __name__ == "__main__":
    sys.exit(main())
