"""Benchmark helper: B minus A over several seeds, on the same users, from per-user result files.

Each seed's run writes one CSV per system (`bench/pipeline.py --per_user_dir DIR`, or a run's `per_user/*.csv`
artifact). This script pairs A and B seed by seed (same users and targets, checked), prints each seed's paired
difference with its 95% bootstrap interval over users, then the difference of the users' metrics averaged over the
seeds (the seed-to-seed noise averages out, the users stay paired) and a 95% t interval of the per-seed differences.
A gain or a loss only when the interval excludes zero.

    .venv/bin/python bench/pooled_compare.py --a s42/length.csv s43/length.csv --b s42/random.csv s43/random.csv
        [--metrics ndcg_at_10 recall_at_10] [--labels length random]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys_core import per_user  # noqa: E402
from recsys_core.significance import paired_bootstrap  # noqa: E402


def interval(delta) -> str:
    return f"{delta.delta:+.4f} [{delta.low:+.4f}, {delta.high:+.4f}] {delta.verdict}"


def run_names(files: list[Path]) -> list[str]:
    """A run is named after its folder (e.g. seed42), or its path when folders repeat."""
    names = [f.parent.name for f in files]
    return names if len(set(names)) == len(names) and all(names) else [str(f) for f in files]


def seed_interval(differences: list[float]) -> str:
    """Mean of the per-seed differences with its 95% t interval (needs two seeds or more)."""
    if len(differences) < 2:
        return "(one seed)"
    mean, sem = float(np.mean(differences)), float(stats.sem(differences))
    half = float(stats.t.ppf(0.975, len(differences) - 1)) * sem
    return f"{mean:+.4f} [{mean - half:+.4f}, {mean + half:+.4f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", nargs="+", type=Path, required=True, help="system A's per-user CSV, one per seed")
    parser.add_argument("--b", nargs="+", type=Path, required=True, help="system B's, in the same seed order")
    parser.add_argument("--metrics", nargs="+", default=["ndcg_at_10", "recall_at_10"])
    parser.add_argument("--labels", nargs=2, default=["A", "B"])
    args = parser.parse_args()
    if len(args.a) != len(args.b):
        sys.exit(f"--a has {len(args.a)} files and --b {len(args.b)}: give one file of each system per seed")
    label_a, label_b = args.labels
    pairs = []
    for file_a, file_b in zip(args.a, args.b, strict=True):
        a = per_user.normalise(pd.read_csv(file_a), f"{label_a} ({file_a})")
        b = per_user.normalise(pd.read_csv(file_b), f"{label_b} ({file_b})")
        per_user.pair(a, b, str(file_a), str(file_b))  # same users and targets, or a clear error
        if pairs:  # and the same as the first run's, so the seeds average user by user
            per_user.pair(pairs[0][0], a, str(args.a[0]), str(file_a))
        pairs.append((a, b))
    rows = []
    for metric in args.metrics:
        row = {"metric": metric, label_a: np.mean([a[metric].mean() for a, _ in pairs]),
               label_b: np.mean([b[metric].mean() for _, b in pairs])}  # fmt: skip
        for name, (a, b) in zip(run_names(args.a), pairs, strict=True):
            row[name] = interval(paired_bootstrap(a[metric].to_numpy(), b[metric].to_numpy()))
        mean_a = sum(a[metric].to_numpy() for a, _ in pairs) / len(pairs)
        mean_b = sum(b[metric].to_numpy() for _, b in pairs) / len(pairs)
        row["runs averaged (users)"] = interval(paired_bootstrap(mean_a, mean_b))
        row["over runs (t)"] = seed_interval([b[metric].mean() - a[metric].mean() for a, b in pairs])
        rows.append(row)
    print(f"{label_b} minus {label_a}, {len(pairs)} run(s), 95% intervals (bootstrap: users resampled 10,000 times)")
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4f"))


if __name__ == "__main__":
    main()
