"""Print the prepared dataset's statistics (stats.json) and, once trained, the retriever's metrics and the two-stage
results next to retrieval alone; `make run` ends with it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from recsys_core.config import Config
from recsys_core.data.store import STATS
from recsys_core.errors import MissingArtifactError
from recsys_core.metrics import format_table
from stages.common import paths, run_stage


def format_stats(stats: dict, folder: Path) -> str:
    lines = [
        f"Dataset statistics: {folder}",
        f"  source               {stats.get('source', '')}",
        f"  users                {stats['users']:,}",
        f"  items                {stats['items']:,}",
        f"  interactions         {stats['interactions']:,}",
        f"  avg sequence length  {stats['avg_sequence_length']:.2f} "
        f"(min {stats['min_sequence_length']}, max {stats['max_sequence_length']})",
        f"  density              {stats['density']:.4%}",
        "  split                " + ", ".join(f"{k} {v:,}" for k, v in stats["split_interactions"].items()),
        "  counts after each step:",
        f"    {'step':<26}{'users':>10}{'items':>10}{'interactions':>14}",
    ]
    for step in stats["filters"]:
        lines.append(f"    {step['step']:<26}{step['users']:>10,}{step['items']:>10,}{step['interactions']:>14,}")
    for bad in stats.get("malformed_lines", []):
        lines.append(f"  malformed lines skipped in {bad['file']}: {bad['malformed']} of {bad['lines']}")
    return "\n".join(lines)


def body(cfg: Config, args: argparse.Namespace) -> None:
    folder = paths().prepared(cfg.data)
    if not (folder / STATS).exists():
        raise MissingArtifactError(f"{folder / STATS} is missing; run `make run` or `recsys prepare` first")
    print(format_stats(json.loads((folder / STATS).read_text(encoding="utf-8")), folder))
    method = cfg.retrieval.retrieval_method
    metrics_file = paths().experiment("retrieval", method, cfg.data.dataset_code, cfg.seed) / "retrieved_metrics.json"
    if metrics_file.exists():
        found = json.loads(metrics_file.read_text(encoding="utf-8"))
        ks = cfg.training.metric_ks
        rows = {split: {k.split("/", 1)[1]: v for k, v in found.items() if k.startswith(split + "/")}
                for split in ("val", "test")}  # fmt: skip
        print(f"\nRetriever {method}: full ranking over {found['items']:,} items, all {found['users']:,} users "
              f"(best epoch {found['best_epoch']} of {found['epochs_run']})")  # fmt: skip
        print(format_table({"validation": rows["val"], "test": rows["test"]}, ks))
    results = paths().root / "experiments" / "pipeline" / cfg.data.dataset_code / f"seed{cfg.seed}" / "results.txt"
    if results.exists():
        print("\n" + results.read_text(encoding="utf-8").rstrip())


def main(argv: list[str] | None = None) -> int:
    return run_stage("recsys stats", __doc__, body, argv)


if __name__ == "__main__":
    sys.exit(main())
