"""The comparison table `recsys compare` prints: one entry per system (a champion, a method's latest runs, a chosen
run), validation and test NDCG / Recall at every K, mean and spread over seeds, and the paired difference against
retrieval alone where the run has one. Pure functions of run records, so the table is tested without a store."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from recsys_core.significance import verdict

SPLITS = ("val", "test")
KINDS = ("ndcg", "recall")
_LIST_MRR = re.compile(r"test/mrr_at_(\d+)")
NOT_RANKED = "n/a"


@dataclass
class RunRecord:
    """What the table needs from one MLflow run."""

    run_id: str
    seed: str
    metrics: Mapping[str, float]
    start_time: int = 0


@dataclass
class Entry:
    """One system in the table: ``runs`` are its runs on different seeds (newest first)."""

    label: str
    runs: list[RunRecord]
    note: str = ""  # version, champion mark

    @property
    def list_length(self) -> int | None:
        """N of a run that ranks lists of N items (rerankers, two-stage models; their MRR is ``mrr_at_N``): K above
        N repeats the value at N, so those cells are not shown."""
        found = [int(m.group(1)) for name in self.runs[0].metrics if (m := _LIST_MRR.fullmatch(name))]
        return min(found) if found else None


def latest_per_seed(runs: Iterable[RunRecord]) -> list[RunRecord]:
    """The newest run of each seed, newest first: reruns of one seed are not extra seeds."""
    newest: dict[str, RunRecord] = {}
    for run in sorted(runs, key=lambda r: -r.start_time):
        newest.setdefault(run.seed, run)
    return list(newest.values())


def cell(values: Sequence[float]) -> str:
    """``0.1234`` for one run, ``0.1234±0.0040`` (mean ± sample standard deviation) for several seeds."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{np.mean(values):.4f}±{np.std(values, ddof=1):.4f}"


def delta_text(metrics: Mapping[str, float], k: int = 10) -> str:
    """A pipeline run's two-stage minus retrieval-alone test NDCG@k on the same users, with its 95% interval."""
    names = [f"test_delta{part}/ndcg_at_{k}" for part in ("", "_low", "_high")]
    if not all(name in metrics for name in names):
        return ""
    mean, low, high = (metrics[name] for name in names)
    called = verdict(low, high)
    return f"{mean:+.4f} [{low:+.4f}, {high:+.4f}] {'not significant' if called not in ('gain', 'loss') else called}"


def entry_rows(entry: Entry, ks: Sequence[int]) -> list[list[str]]:
    """Two rows (val, test): the label and seeds on the first, the paired difference on the test row."""
    n = entry.list_length
    seeds = ",".join(run.seed for run in entry.runs)
    rows = []
    for split in SPLITS:
        cells = []
        for kind in KINDS:
            for k in ks:
                values = [run.metrics[f"{split}/{kind}_at_{k}"] for run in entry.runs
                          if f"{split}/{kind}_at_{k}" in run.metrics]  # fmt: skip
                cells.append(NOT_RANKED if n is not None and k > n else cell(values))
        first = split == SPLITS[0]
        delta = "" if first else delta_text(entry.runs[0].metrics)
        if delta and len(entry.runs) > 1:
            delta += f" (seed {entry.runs[0].seed})"
        rows.append([entry.label if first else "", entry.note if first else "", seeds if first else "",
                     f"{n}" if first and n else "", split, *cells, delta])  # fmt: skip
    return rows


def header(ks: Sequence[int]) -> list[str]:
    names = {"ndcg": "NDCG", "recall": "Recall"}
    return ["system", "version", "seeds", "list", "split", *(f"{names[kind]}@{k}" for kind in KINDS for k in ks),
            "two-stage - retrieval NDCG@10 [95% CI]"]  # fmt: skip


def format_block(title: str, entries: Sequence[Entry], ks: Sequence[int]) -> str:
    """A titled table; a footnote explains the cells left out because K exceeds the ranked list."""
    if not entries:
        return f"{title}\n  (none)"
    table = [header(ks)] + [row for entry in entries for row in entry_rows(entry, ks)]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = [title] + ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table]
    if any(NOT_RANKED in row for row in table):
        lines.append(f"  {NOT_RANKED}: K is above the length of the ranked list (column `list`); the value would "
                     "repeat the one at that length.")  # fmt: skip
    return "\n".join(lines)
