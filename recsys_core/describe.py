"""What a run or a registered version says about itself in the MLflow UI: the method, the data, two or three
headline numbers, the versions it used and the promotion decision, as short markdown with links to the UI's pages
(the UI routes by ``#/...``), so nobody has to read ~60 tags to know what a run is."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from recsys_core.tracking import DESCRIPTION_TAG

STAGE_ROLE = {"retrieval": "retriever (stage 1)", "rerank": "reranker (stage 2)", "pipeline": "two-stage evaluation"}


def headline_k(ks: Iterable[int]) -> int:
    ks = list(ks)
    return 10 if 10 in ks else ks[0]


def headline_names(ks: Iterable[int]) -> tuple[str, ...]:
    """The numbers a version carries and a description quotes: validation NDCG (what promotion compares), test NDCG
    and Recall at 10 (else the first K)."""
    k = headline_k(ks)
    return f"val/ndcg_at_{k}", f"test/ndcg_at_{k}", f"test/recall_at_{k}"


def headline(metrics: Mapping[str, float], ks: Iterable[int]) -> dict[str, float]:
    return {name: float(metrics[name]) for name in headline_names(ks) if name in metrics}


HEADLINE_FILE = "headline.json"  # each stage's DVC metric: a few columns, so `dvc metrics show` fits a screen


def headline_file(metrics: Mapping[str, float], ks: Iterable[int], role: str = "") -> dict[str, float | str]:
    """A stage's DVC metric. The two-stage evaluation's: ``val_ndcg@10``, ``test_ndcg@10``, ``test_recall@10``,
    ``gain@10`` (test NDCG@10 minus retrieval alone) and ``gain_ci`` (its 95% paired interval). The retriever's:
    ``retriever_val_ndcg@10`` and ``retriever_test_ndcg@10``; the reranker's: ``reranker_val_ndcg@10`` (its test
    number is the two-stage one when the pipeline uses it). A training stage's names are its own so that
    `dvc exp show` heads its columns with them, not with file paths (what DVC does with a name two files share).
    The full metrics stay in the stage's other files and in MLflow."""
    k = headline_k(ks)
    if role == "retriever":
        names = {f"val/ndcg_at_{k}": f"{role}_val_ndcg@{k}", f"test/ndcg_at_{k}": f"{role}_test_ndcg@{k}"}
    elif role:
        names = {f"val/ndcg_at_{k}": f"{role}_val_ndcg@{k}"}
    else:
        names = {f"val/ndcg_at_{k}": f"val_ndcg@{k}", f"test/ndcg_at_{k}": f"test_ndcg@{k}",
                 f"test/recall_at_{k}": f"test_recall@{k}"}  # fmt: skip
    out: dict[str, float | str] = {
        short: round(float(metrics[name]), 6) for name, short in names.items() if name in metrics
    }
    gain = f"test_delta/ndcg_at_{k}"
    if gain in metrics:
        out[f"gain@{k}"] = round(float(metrics[gain]), 6)
        out["gain_ci"] = (
            f"[{metrics[f'test_delta_low/ndcg_at_{k}']:+.4f}, {metrics[f'test_delta_high/ndcg_at_{k}']:+.4f}]"
        )
    return out


def version_link(name: str, version: int | str) -> str:
    return f"[{name} v{version}](#/models/{name}/versions/{version})"


def run_link(experiment_id: str, run_id: str, label: str) -> str:
    return f"[{label}](#/experiments/{experiment_id}/runs/{run_id})"


def numbers(metrics: Mapping[str, float]) -> str:
    """``val NDCG@10 0.1234 · test NDCG@10 0.1100 · test Recall@10 0.2000``."""
    parts = []
    for name, value in metrics.items():
        split, metric = name.split("/", 1)
        kind, k = metric.rsplit("_at_", 1)
        parts.append(f"{split} {'NDCG' if kind == 'ndcg' else kind.capitalize()}@{k} {value:.4f}")
    return " · ".join(parts)


def run_description(stage: str, method: str, dataset: str, seed: int | str, data_version: str,
                    metrics: Mapping[str, float], used: Iterable[str] = (), extra: str = "") -> str:  # fmt: skip
    """``**lrurec** retriever (stage 1) on `ml-100k` (data version ...), seed 42`` then the headline numbers; ``used``
    are markdown links to the versions the run built on, ``extra`` one more paragraph (a paired difference)."""
    lines = [f"**{method}** {STAGE_ROLE.get(stage, stage)} on `{dataset}` (data version `{data_version[:12]}`), "
             f"seed {seed}."]  # fmt: skip
    if metrics:
        lines.append(numbers(metrics) + ".")
    if extra:
        lines.append(extra)
    used = list(used)
    if used:
        lines.append("Uses " + ", ".join(used) + ".")
    return "\n\n".join(lines)


def set_descriptions(name: str, version: int | str, run: Any, summary: str, repeated: bool = False) -> None:
    """The run's description names the version it registered (or repeats); the version's names the run."""
    import mlflow

    client = mlflow.MlflowClient()
    how = "Repeats" if repeated else "Registered as"
    client.set_tag(run.info.run_id, DESCRIPTION_TAG, f"{summary}\n\n{how} {version_link(name, version)}.")
    if not repeated:
        trained_by = run_link(run.info.experiment_id, run.info.run_id, run.info.run_name)
        client.update_model_version(name, str(version), description=f"{summary}\n\nMade by run {trained_by}.")


def promotion_line(promoted: bool, reason: str) -> str:
    """The decision as it was taken (the ``champion`` alias says who holds it now)."""
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"Promotion: {'**promoted to champion**' if promoted else 'not promoted'} on {when} ({reason})."


def with_promotion(description: str, promoted: bool, reason: str) -> str:
    """The description with its promotion line replaced (a version promoted again later says so once)."""
    kept = [part for part in (description or "").split("\n\n") if part and not part.startswith("Promotion: ")]
    return "\n\n".join([*kept, promotion_line(promoted, reason)])


def record_promotion(name: str, version: int | str, run_id: str, promoted: bool, reason: str) -> None:
    """The decision on the version's description and on the run that made it."""
    import mlflow

    client = mlflow.MlflowClient()
    current = client.get_model_version(name, str(version))
    client.update_model_version(name, str(version), description=with_promotion(current.description, promoted, reason))
    if run_id:
        tags = client.get_run(run_id).data.tags
        client.set_tag(run_id, DESCRIPTION_TAG, with_promotion(tags.get(DESCRIPTION_TAG, ""), promoted, reason))
