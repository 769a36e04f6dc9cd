"""Per-user evaluation records: every evaluation writes one row per user (user, target, the target's 0-based rank or
-1 for a miss, and each metric at each K), so that any two evaluations of the same users can be paired later
(``recsys compare RUN_A RUN_B``, the benchmarks) instead of comparing two averages.

Files are CSV (readable anywhere, nothing executable), logged as MLflow artifacts under ``per_user/``:
``{split}.csv`` is the run's own system, ``{split}_{baseline}.csv`` another system on the same users and lists
(``test_retrieval_only.csv``: the retriever's order of the reranked lists).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from recsys_core.errors import LineageError
from recsys_core.metrics import metrics_from_ranks
from recsys_core.significance import PairedDelta, paired_bootstrap

ARTIFACT_DIR = "per_user"
MISS = -1


def records(users, targets, ranks, ks: Iterable[int], mrr_name: str = "mrr") -> pd.DataFrame:
    """One row per user; ``ranks`` are 0-based with inf (or any non-finite value) for a miss."""
    ranks_t = torch.as_tensor(np.asarray(ranks, dtype=np.float64))
    values = metrics_from_ranks(ranks_t, ks)
    finite = torch.isfinite(ranks_t)
    frame = pd.DataFrame({
        "user_id": np.asarray(users, dtype=np.int64),
        "target": np.asarray(targets, dtype=np.int64),
        "rank": np.where(finite.numpy(), np.nan_to_num(ranks_t.numpy(), posinf=MISS), MISS).astype(np.int64),
    })  # fmt: skip
    for name, column in values.items():
        frame[mrr_name if name == "mrr" else name] = column.numpy()
    return frame


def write(folder: Path, name: str, frame: pd.DataFrame) -> Path:
    """``folder/per_user/{name}.csv`` (6 significant digits, a fixed column order: the same inputs give the same
    bytes)."""
    out = Path(folder) / ARTIFACT_DIR
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.csv"
    frame.to_csv(path, index=False, float_format="%.6g")
    return path


def log(tables: dict[str, pd.DataFrame]) -> None:
    """Log ``{name: records}`` to the active MLflow run under ``per_user/`` (not into a DVC output folder)."""
    import tempfile

    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        for name, table in tables.items():
            write(Path(tmp), name, table)
        mlflow.log_artifacts(str(Path(tmp) / ARTIFACT_DIR), ARTIFACT_DIR)


def from_lists(result, cset, ks: Iterable[int]) -> pd.DataFrame:
    """Records of a candidate-list evaluation (a RerankResult on a CandidateSet): MRR over the list as mrr_at_{N}."""
    return records(cset.users, cset.targets, result.ranks, ks, f"mrr_at_{cset.candidates.shape[1]}")


def download(run_id: str, name: str, label: str = "") -> pd.DataFrame:
    """A run's per-user results ``per_user/{name}.csv``, from its MLflow artifacts."""
    import tempfile

    import mlflow

    from recsys_core.errors import MissingArtifactError

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"{ARTIFACT_DIR}/{name}.csv",
                                                       dst_path=tmp)  # fmt: skip
        except Exception:  # noqa: BLE001 - MLflow raises several kinds for an absent artifact
            raise MissingArtifactError(
                f"{label or 'the run'} (run {run_id}) has no per-user results {name!r} at {mlflow.get_tracking_uri()}: "
                "it was evaluated before they were logged, by another split, or with another store; evaluate it again"
            ) from None
        return read(Path(path))


def read(path: Path) -> pd.DataFrame:
    return normalise(pd.read_csv(path), str(path))


def normalise(frame: pd.DataFrame, origin: str = "the table") -> pd.DataFrame:
    """The records checked for their key columns and sorted by user (so two files pair row by row)."""
    missing = {"user_id", "target", "rank"} - set(frame.columns)
    if missing:
        raise LineageError(f"{origin} is not a per-user results file: it lacks {sorted(missing)}")
    return frame.sort_values("user_id", kind="stable").reset_index(drop=True)


def pair(a: pd.DataFrame, b: pd.DataFrame, label_a: str = "A", label_b: str = "B") -> None:
    """Stop unless both files hold the same users with the same targets (then their rows pair one to one)."""
    if len(a) != len(b) or not np.array_equal(a["user_id"].to_numpy(), b["user_id"].to_numpy()):
        only_a = sorted(set(a["user_id"]) - set(b["user_id"]))[:5]
        only_b = sorted(set(b["user_id"]) - set(a["user_id"]))[:5]
        raise LineageError(
            f"{label_a} and {label_b} were evaluated on different users ({len(a)} and {len(b)}; only in {label_a}: "
            f"{only_a}, only in {label_b}: {only_b}): compare runs of the same prepared data and split"
        )
    wrong = np.flatnonzero(a["target"].to_numpy() != b["target"].to_numpy())
    if len(wrong):
        user = int(a["user_id"].iloc[wrong[0]])
        raise LineageError(
            f"{label_a} and {label_b} hold different targets for {len(wrong)} users (user {user}: "
            f"{int(a['target'].iloc[wrong[0]])} against {int(b['target'].iloc[wrong[0]])}): they were evaluated on "
            "different splits or data; compare runs of the same prepared data"
        )


def compare(a: pd.DataFrame, b: pd.DataFrame, metrics: Iterable[str], label_a: str = "A",
            label_b: str = "B") -> dict[str, PairedDelta]:  # fmt: skip
    """B minus A for each metric, paired by user (after checking users and targets match)."""
    a, b = normalise(a, label_a), normalise(b, label_b)
    pair(a, b, label_a, label_b)
    out = {}
    for metric in metrics:
        if metric not in a or metric not in b:
            raise LineageError(f"{metric} is not in both per-user files (A has {list(a.columns[3:])})")
        out[metric] = paired_bootstrap(a[metric].to_numpy(), b[metric].to_numpy())
    return out


def delta_table(deltas: dict[str, PairedDelta], label_a: str, label_b: str) -> str:
    """A readable table: metric, A, B, delta (relative), 95% interval, p, verdict."""
    head = ["metric", label_a, label_b, "delta", "95% CI", "p", "verdict"]
    rows = [head] + [[m, f"{d.mean_a:.4f}", f"{d.mean_b:.4f}",
                      f"{d.delta:+.4f} ({d.relative:+.1%})" if d.mean_a else f"{d.delta:+.4f}",
                      f"[{d.low:+.4f}, {d.high:+.4f}]", f"{d.p_value:.4f}", d.verdict]
                     for m, d in deltas.items()]  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)
