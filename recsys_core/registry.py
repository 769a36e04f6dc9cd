"""Model registry: every trained model becomes a version of ``{dataset}-{kind}`` with the alias ``candidate``;
``promote`` moves ``champion`` to a version that beats the current one and writes the decision on the version.

Aliases only: MLflow's model stages are deprecated.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from recsys_core.errors import MissingArtifactError, RecsysError

log = logging.getLogger(__name__)

KINDS = ("retriever", "reranker", "two-stage")
CANDIDATE, CHAMPION = "candidate", "champion"
METRIC_TAG = "metric."


class RegistryError(RecsysError):
    """A registered model, version or metric that the registry does not hold."""


def model_name(dataset: str, kind: str) -> str:
    if kind not in KINDS:
        raise RegistryError(f"unknown model kind {kind!r}; use one of {', '.join(KINDS)}")
    return f"{dataset}-{kind}"


def register(model_uri: str, name: str, tags: dict[str, str], metrics: dict[str, float]) -> int:
    """A new version of ``name`` from ``model_uri``, tagged with ``tags`` and its metrics; alias ``candidate``."""
    import mlflow
    from mlflow import MlflowClient

    all_tags = {**tags, **{METRIC_TAG + k: f"{v:.6f}" for k, v in metrics.items()}}
    version = mlflow.register_model(model_uri, name, tags=all_tags)
    MlflowClient().set_registered_model_alias(name, CANDIDATE, version.version)
    log.info("registered %s version %s (alias %s)", name, version.version, CANDIDATE)
    return int(version.version)


def _version_by_alias(client, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def metric_of(version, metric: str) -> float:
    """A version's metric: from its tags (written at registration), else from the run that produced it."""
    from mlflow import MlflowClient

    tag = version.tags.get(METRIC_TAG + metric)
    if tag is not None:
        return float(tag)
    if version.run_id:
        run_metrics = MlflowClient().get_run(version.run_id).data.metrics
        if metric in run_metrics:
            return float(run_metrics[metric])
    available = sorted(k[len(METRIC_TAG) :] for k in version.tags if k.startswith(METRIC_TAG))
    raise RegistryError(f"version {version.version} of {version.name} has no metric {metric!r}; it has: {available}")


@dataclass
class Decision:
    name: str
    version: int
    metric: str
    value: float
    champion_before: int | None
    champion_value: float | None
    promoted: bool
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


def promote(name: str, version: int | None = None, metric: str = "val/ndcg_at_10", force: bool = False) -> Decision:
    """Move ``champion`` to ``version`` (default: the ``candidate``) if it beats the current champion on ``metric``
    (higher is better), there is no champion yet, or ``force``. The decision is written on the version's tags."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    if version is None:
        chosen = _version_by_alias(client, name, CANDIDATE)
        if chosen is None:
            raise RegistryError(f"{name} has no '{CANDIDATE}' version; train a model first or give --version")
    else:
        try:
            chosen = client.get_model_version(name, str(version))
        except MlflowException:
            raise RegistryError(f"{name} has no version {version}") from None
    value = metric_of(chosen, metric)
    current = _version_by_alias(client, name, CHAMPION)
    current_value = metric_of(current, metric) if current is not None else None
    if current is not None and int(current.version) == int(chosen.version):
        promoted, reason = False, f"version {chosen.version} is already the champion"
    elif current is None:
        promoted, reason = True, "no champion yet"
    elif force:
        promoted, reason = True, f"forced over version {current.version} ({metric} {current_value:.4f})"
    elif value > current_value:
        promoted, reason = True, f"{metric} {value:.4f} beats version {current.version}'s {current_value:.4f}"
    else:
        promoted, reason = False, f"{metric} {value:.4f} does not beat version {current.version}'s {current_value:.4f}"
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, chosen.version)
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    for key, val in {"promotion.decision": "promoted" if promoted else "not promoted", "promotion.reason": reason,
                     "promotion.metric": metric, "promotion.time": stamp}.items():  # fmt: skip
        client.set_model_version_tag(name, chosen.version, key, val)
    decision = Decision(name, int(chosen.version), metric, value, int(current.version) if current else None,
                        current_value, promoted, reason)  # fmt: skip
    log.info("%s v%s: %s (%s)", name, chosen.version, "promoted to champion" if promoted else "not promoted", reason)
    return decision


def champion_uri(dataset: str, kind: str) -> str:
    return f"models:/{model_name(dataset, kind)}@{CHAMPION}"


def load_version(dataset: str, kind: str, version: int | None):
    """The recsys model behind a registered version (default: the champion) and that version's record."""
    import mlflow
    from mlflow.exceptions import MlflowException

    name = model_name(dataset, kind)
    client = mlflow.MlflowClient()
    try:
        record = (client.get_model_version(name, str(version)) if version is not None
                  else client.get_model_version_by_alias(name, CHAMPION))  # fmt: skip
    except MlflowException:
        which = f"version {version}" if version is not None else "a champion"
        raise MissingArtifactError(
            f"{name} has no {which}: train and promote it first (`recsys promote {kind}`)"
        ) from None
    wrapper = mlflow.pyfunc.load_model(f"models:/{name}/{record.version}").unwrap_python_model()
    model = wrapper.retriever if kind == "retriever" else wrapper.reranker
    return model, record
