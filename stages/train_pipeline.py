"""`recsys train-pipeline`: the original train_pipeline.py. Stage 1, its promotion, the ltr reranker's feature
models, stage 2, its promotion and the two-stage evaluation, each a child run under one parent MLflow run (children
get the parent by id; MLFLOW_RUN_ID is not passed on, since a nested start would then resume the parent). The data
stages run first if their outputs are missing."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys

from recsys_core import tracking
from recsys_core.config import Config, method_section
from recsys_core.data.store import GT_CANDIDATES
from recsys_core.errors import RecsysError
from stages.common import paths, run_stage

log = logging.getLogger("recsys.train_pipeline")


class StageFailed(RecsysError):
    """A stage of the pipeline exited with an error (its own message is above)."""


CHILD_STOP_GRACE_S = 120.0  # how long a stopped stage may take to end its MLflow run before it is killed


def _run(module: str, flags: list[str]) -> None:
    """Run a stage in its own process group, so that a stop signal reaches it once, from us: it ends its own run
    as KILLED, then ours ends. (Without that, Ctrl-C would reach it twice and subprocess.run would SIGKILL it.)"""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"}
    cmd = [sys.executable, "-m", module, *flags]
    log.info("running %s", " ".join(cmd))
    child = subprocess.Popen(cmd, env=env, process_group=0)
    try:
        code = child.wait()
    except BaseException as stop:
        signum = getattr(stop, "signum", signal.SIGINT if isinstance(stop, KeyboardInterrupt) else signal.SIGTERM)
        child.send_signal(signum)
        try:
            child.wait(timeout=CHILD_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            log.error("%s did not stop within %.0f s of %s; killing it", module, CHILD_STOP_GRACE_S,
                      signal.Signals(signum).name)  # fmt: skip
            child.kill()
            child.wait()
        raise
    if code != 0:
        raise StageFailed(f"`{' '.join(cmd)}` failed; see its message above")


def body(cfg: Config, args: argparse.Namespace) -> None:
    flags = list(args.forward)
    prepared = paths().prepared(cfg.data)
    if not (prepared / GT_CANDIDATES).exists():
        for module in ("stages.download", "stages.prepare", "stages.gt_candidates"):
            _run(module, flags)
    root = tracking.project_root(paths().root)
    name = f"train-pipeline-{cfg.data.dataset_code}-seed{cfg.seed}"
    tags = {"dataset": cfg.data.dataset_code, "stage": "train_pipeline", "seed": str(cfg.seed),
            "method": f"{cfg.retrieval.retrieval_method}+{cfg.rerank.rerank_method}",
            "git_commit": tracking.git_commit(root)}  # fmt: skip
    config = cfg.model_dump(mode="json")
    methods = [method_section(cfg.retrieval.retrieval_method), method_section(cfg.rerank.rerank_method)]
    params = tracking.config_params(config, ["seed", "data", "training", "retrieval", "rerank", *methods])
    tags[tracking.DESCRIPTION_TAG] = (
        f"**{tags['method']}** pipeline on `{cfg.data.dataset_code}`, seed {cfg.seed}: its stages are the child runs "
        "(retriever, reranker, two-stage evaluation), each describing its own numbers and versions."
    )
    with tracking.training_run(root, cfg.data.dataset_code, name, params, tags, config=config) as parent:
        nested = [*flags, "--parent_run_id", parent.info.run_id]
        _run("stages.train_retrieval", nested)
        _run("stages.promote", ["retriever", *flags])
        _run("stages.train_ltr_models", nested)  # the ltr reranker's feature models (ltr.ltr_models), if any
        _run("stages.train_rerank", nested)
        _run("stages.promote", ["reranker", *flags])
        _run("stages.evaluate_pipeline", nested)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)

    def add_args(parser: argparse.ArgumentParser) -> None:
        parser.set_defaults(forward=[a for a in argv if a not in ("-v", "--verbose")])

    return run_stage("recsys train-pipeline", __doc__, body, argv, add_args)


if __name__ == "__main__":
    sys.exit(main())
