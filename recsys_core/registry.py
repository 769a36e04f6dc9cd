"""Model registry: every trained model becomes a version of ``{prefix}-{kind}`` with the alias ``candidate``;
``promote`` moves ``champion`` to a version that beats the current one and writes the decision on the version.

The prefix names the prepared data: the dataset code for the default filters (``ml-100k-retriever``), the prepared
folder's name for any other setting (``ml-100k_min_rating4-min_uc5-min_sc5-retriever``), so that several filter
settings of one dataset keep their own champions in one store. Within a name, promotion still compares only versions
of the same data version and the same evaluation protocol (``recsys_core.lineage``).

Aliases only: MLflow's model stages are deprecated.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from recsys_core import lineage
from recsys_core.config import DataConfig, prepared_dir_name
from recsys_core.errors import LineageError, MissingArtifactError, RecsysError, lost_insert_race

log = logging.getLogger(__name__)

KINDS = ("retriever", "reranker", "two-stage")
CANDIDATE, CHAMPION = "candidate", "champion"
ALIAS_RACE_TRIES = 3
METRIC_TAG = "metric."


class RegistryError(RecsysError):
    """A registered model, version or metric that the registry does not hold."""


def data_prefix(data: DataConfig) -> str:
    """The registered-model prefix of a data setting: the dataset code for the default filters, else the prepared
    folder's name."""
    default = DataConfig()
    filters = ("min_rating", "min_uc", "min_sc")
    if all(getattr(data, f) == getattr(default, f) for f in filters):
        return data.dataset_code
    return prepared_dir_name(data)


def model_name(prefix: str, kind: str) -> str:
    if kind not in KINDS:
        raise RegistryError(f"unknown model kind {kind!r}; use one of {', '.join(KINDS)}")
    return f"{prefix}-{kind}"


def register(model_uri: str, name: str, tags: dict[str, str], metrics: dict[str, float], candidate: bool = True) -> int:
    """A new version of ``name`` from ``model_uri``, tagged with ``tags`` and its metrics; alias ``candidate``
    unless ``candidate`` is false (a model registered for another's use, such as the ltr reranker's feature models,
    is not up for promotion)."""
    import mlflow
    from mlflow import MlflowClient

    all_tags = {**tags, **{METRIC_TAG + k: f"{v:.6f}" for k, v in metrics.items()}}
    version = mlflow.register_model(model_uri, name, tags=all_tags)
    if candidate:
        _point_candidate(MlflowClient(), name, int(version.version))
    log.info("registered %s version %s%s", name, version.version, f" (alias {CANDIDATE})" if candidate else "")
    return int(version.version)


def _point_candidate(client, name: str, version: int) -> None:
    """Move ``candidate`` to ``version`` unless a newer version already holds it. Two stages registering at once
    (queued sweeps) both insert the alias and the database lets one in; the other looks again."""
    from mlflow.exceptions import MlflowException

    for attempt in range(ALIAS_RACE_TRIES):
        current = _version_by_alias(client, name, CANDIDATE)
        if current is not None and int(current.version) > version:
            return
        try:
            client.set_registered_model_alias(name, CANDIDATE, str(version))
            return
        except MlflowException as err:
            if attempt == ALIAS_RACE_TRIES - 1 or not lost_insert_race(err):
                raise
            log.info("another process set %s's %s alias at the same moment: looking again", name, CANDIDATE)


def version_with_fingerprint(name: str, fingerprint: str):
    """The newest version of ``name`` trained with this checkpoint fingerprint (settings, data, code), or None."""
    from mlflow import MlflowClient

    found = [v for v in MlflowClient().search_model_versions(f"name = '{name}'")
             if v.tags.get(lineage.FINGERPRINT_TAG) == fingerprint]  # fmt: skip
    return max(found, key=lambda v: int(v.version)) if found else None


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
    # The runs behind the decision: which training this version is, and which one is champion now. The later DVC
    # stages depend on this file, so a new training (or another store) reruns them even when the numbers tie.
    run_id: str = ""
    champion_run_id: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def _comparison(
    client, chosen, current, metric: str, value: float, current_value: float | None, force: bool
) -> tuple[bool, str]:
    """Whether ``chosen`` replaces the champion ``current`` (same data), and why: numbers of one evaluation protocol
    are compared; a champion whose protocol is stale (ground-truth lists, or the lists of a retriever that is no
    longer the champion) gives way to a version on the current protocol; other protocol changes need ``force``."""
    ours, theirs = chosen.tags.get(lineage.PROTOCOL_TAG), current.tags.get(lineage.PROTOCOL_TAG)
    if force:
        return True, f"forced over version {current.version} ({metric} {current_value:.4f})"
    if ours != theirs:
        if _stale(client, current, chosen):
            return True, (f"the champion v{current.version} was evaluated on a stale protocol ({theirs}); this version "
                          f"on the current one ({ours})")  # fmt: skip
        return False, (f"not comparable with the champion v{current.version}: it was evaluated on {theirs!r}, this "
                       f"version on {ours!r}; promote it with --force to switch protocols")  # fmt: skip
    if value > current_value:
        return True, f"{metric} {value:.4f} beats version {current.version}'s {current_value:.4f}"
    return False, f"{metric} {value:.4f} does not beat version {current.version}'s {current_value:.4f}"


def _stale(client, current, chosen) -> bool:
    """The champion's lists are not what the pipeline ranks now, while the chosen version's are."""
    mode, theirs = chosen.tags.get("rerank_mode"), current.tags.get("rerank_mode")
    if mode != "retrieval" or not chosen.tags.get("retriever.name"):
        return False
    if theirs == "ground_truth":
        return True
    retriever = _version_by_alias(client, chosen.tags["retriever.name"], CHAMPION)
    if retriever is None or str(retriever.version) != chosen.tags.get("retriever.version"):
        return False
    return theirs == "retrieval" and current.tags.get("retriever.version") != str(retriever.version)


def _decide(client, chosen, metric: str, value: float, force: bool, data_version: str | None):
    """(current champion, its value, promoted?, why) for ``chosen`` against the champion as it is now."""
    ours = lineage.version_data(chosen.tags)
    current = _version_by_alias(client, chosen.name, CHAMPION)
    current_value = None
    if current is not None and lineage.version_data(current.tags) == ours:
        current_value = metric_of(current, metric)
    if current is not None and int(current.version) == int(chosen.version):
        return current, current_value, False, f"version {chosen.version} is already the champion"
    if current is None:
        return current, current_value, True, "no champion yet"
    if current_value is None:
        if data_version is None and not force:
            raise LineageError(
                f"{lineage.describe(chosen)} and the champion {lineage.describe(current)} belong to different data; "
                "promote from the data setting you work on (run `recsys promote` with its flags), or use --force"
            )
        return current, current_value, True, f"the champion {lineage.describe(current)} belongs to other data: replaced"
    promoted, reason = _comparison(client, chosen, current, metric, value, current_value, force)
    return current, current_value, promoted, reason


def promote(name: str, version: int | None = None, metric: str = "val/ndcg_at_10", force: bool = False,
            data_version: str | None = None) -> Decision:  # fmt: skip
    """Move ``champion`` to ``version`` (default: the ``candidate``) if it beats the current champion on ``metric``
    (higher is better), there is no champion yet, or ``force``. The decision is written on the version's tags.

    ``data_version`` is the prepared data the caller works on: a version of other data is refused (even forced), and
    a champion of other data gives way. Without it, a champion of other data than the version's stops the promotion.
    """
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
    ours = lineage.version_data(chosen.tags)
    if data_version is not None and ours != data_version:
        raise LineageError(
            f"{lineage.describe(chosen)} was not trained on the prepared data of this setting (data version "
            f"{data_version}); promote a version of this data, or retrain (`dvc repro`)"
        )
    value = metric_of(chosen, metric)
    for attempt in range(ALIAS_RACE_TRIES):
        current, current_value, promoted, reason = _decide(client, chosen, metric, value, force, data_version)
        if not promoted:
            break
        try:
            client.set_registered_model_alias(name, CHAMPION, chosen.version)
            break
        except MlflowException as err:
            # Two promotions at once (queued sweeps): both saw no champion and both insert the alias; the database
            # lets one in. The other decides again against the champion that won.
            if attempt == ALIAS_RACE_TRIES - 1 or not lost_insert_race(err):
                raise
            log.info("another process set %s's champion at the same moment: deciding again", name)
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    for key, val in {"promotion.decision": "promoted" if promoted else "not promoted", "promotion.reason": reason,
                     "promotion.metric": metric, "promotion.time": stamp}.items():  # fmt: skip
        client.set_model_version_tag(name, chosen.version, key, val)
    champion_run = chosen.run_id if promoted or current is None else current.run_id
    decision = Decision(name, int(chosen.version), metric, value, int(current.version) if current else None,
                        current_value, promoted, reason, chosen.run_id or "", champion_run or "")  # fmt: skip
    log.info("%s v%s: %s (%s)", name, chosen.version, "promoted to champion" if promoted else "not promoted", reason)
    return decision


def champion_uri(prefix: str, kind: str) -> str:
    return f"models:/{model_name(prefix, kind)}@{CHAMPION}"


def get_version(prefix: str, kind: str, version: int | None, prepared=None):
    """A registered version's record (default: the champion); with ``prepared`` (a prepared folder), only a version
    trained on that folder's data is accepted."""
    import mlflow
    from mlflow.exceptions import MlflowException

    name = model_name(prefix, kind)
    client = mlflow.MlflowClient()
    try:
        record = (client.get_model_version(name, str(version)) if version is not None
                  else client.get_model_version_by_alias(name, CHAMPION))  # fmt: skip
    except MlflowException:
        which = f"version {version}" if version is not None else "a champion"
        raise MissingArtifactError(
            f"{name} has no {which}: train and promote it first (`recsys promote {kind}`)"
        ) from None
    if prepared is not None:
        stage = "train_retrieval" if kind == "retriever" else "train_rerank"
        fix = (
            f"Train one on this data and promote it (`dvc repro {stage}`, or `recsys train-{stage[6:]}` then "
            f"`recsys promote {kind}` with the same data flags), or prepare the data it was trained on again."
        )
        lineage.require_same_data(record, lineage.data_version(prepared), prepared, fix)
    return record


def load_version(prefix: str, kind: str, version: int | None, prepared=None):
    """The recsys model behind a registered version (default: the champion) and that version's record; with
    ``prepared``, only a version of that folder's data."""
    import mlflow

    record = get_version(prefix, kind, version, prepared)
    name = record.name
    wrapper = mlflow.pyfunc.load_model(f"models:/{name}/{record.version}").unwrap_python_model()
    model = wrapper.retriever if kind == "retriever" else wrapper.reranker
    return model, record
