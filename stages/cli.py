"""The `recsys` command: one sub-command per stage, each taking the original flag names."""

from __future__ import annotations

import argparse
import sys

import yaml

from recsys_core.config import Config
from stages import (
    captions,
    compare,
    doctor,
    download,
    embeddings,
    evaluate_pipeline,
    gt_candidates,
    images,
    plots,
    prepare,
    promote,
    report,
    show_stats,
    summaries,
    tiny_model,
    tracking_cmd,
    train_ltr_models,
    train_pipeline,
    train_rerank,
    train_retrieval,
    ui,
)
from stages.common import run_stage


def _data_prepare(argv: list[str]) -> int:
    """The original data_prepare.py: download, images, prepare, captions and summaries (with --generate_caption /
    --generate_semantic_summary; otherwise they load nothing) and ground-truth candidates in one go (outside DVC)."""
    for stage in (download, images, prepare, captions, summaries, gt_candidates):
        code = stage.main(argv)
        if code:
            return code
    return 0


def _params(argv: list[str]) -> int:
    def body(cfg: Config, args: argparse.Namespace) -> None:
        print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="")

    return run_stage("recsys params", "Print the resolved configuration (params.yaml + flags).", body, argv)


COMMANDS = {
    "download": (download.main, "fetch the raw dataset files"),
    "images": (images.main, "download and resize the item images into data/images/{dataset}/"),
    "prepare": (prepare.main, "filter, k-core, split; write data/preprocessed/..."),
    "embeddings": (embeddings.main, "CLIP image and text embeddings of the prepared items"),
    "captions": (captions.main, "BLIP-2 captions of the item images (--generate_caption) into blip2_captions.parquet"),
    "summaries": (
        summaries.main,
        "Qwen3-VL semantic summaries (--generate_semantic_summary) into semantic_summaries.parquet",
    ),
    "gt-candidates": (gt_candidates.main, "sample ground-truth candidate lists"),
    "data-prepare": (_data_prepare, "download, images, prepare, captions, summaries, gt-candidates (data_prepare.py)"),
    "train-retrieval": (train_retrieval.main, "train the stage-1 retriever, evaluate, log to MLflow, register"),
    "train-ltr-models": (train_ltr_models.main, "train and register the retrievers named in ltr.ltr_models"),
    "train-rerank": (train_rerank.main, "train the stage-2 reranker, evaluate on candidate lists, register"),
    "evaluate-pipeline": (evaluate_pipeline.main, "run the champion retriever + reranker, register the two-stage"),
    "train-pipeline": (train_pipeline.main, "stage 1, stage 2 and the evaluation under one MLflow parent run"),
    "compare": (compare.main, "champions and latest runs per method, val/test @K, seeds, paired differences"),
    "plots": (plots.main, "`dvc plots show` rendered offline (dvc_plots/); plain `dvc plots show` too afterwards"),
    "report": (report.main, "offline HTML report of the last two-stage evaluation (reports/), logged to MLflow"),
    "doctor": (doctor.main, "list MLflow runs left RUNNING by a killed process; --close ends them as KILLED"),
    "tracking": (tracking_cmd.main, "start|stop|status the team's MLflow tracking server on PostgreSQL (.tracking/)"),
    "ui": (ui.main, "the MLflow UI on this clone's store (127.0.0.1:5000), opening on the training runs"),
    "promote": (promote.main, "promote a registered retriever/reranker version to champion"),
    "stats": (show_stats.main, "print the prepared dataset's statistics"),
    "params": (_params, "print the resolved configuration"),
    "tiny-model": (
        tiny_model.main,
        "write a random-weight smoke model (qwen3, qwen3vl, t5, blip2) with its tokenizer, offline",
    ),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        listing = "\n".join(f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items())
        print(f"usage: recsys <command> [flags]\n\ncommands:\n{listing}\n\n`recsys <command> --help` lists the flags.")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, *rest = argv
    return COMMANDS[command][0](rest)


if __name__ == "__main__":
    sys.exit(main())
