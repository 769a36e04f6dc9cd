"""Promotion compares like with like: versions of one data version and one evaluation protocol; a champion of other
data or of a stale protocol gives way; anything else is refused with the reason. Versions are made directly in a
temporary MLflow store (no training): only their tags matter here."""

from __future__ import annotations

import pytest

from recsys_core import lineage, registry
from recsys_core.errors import LineageError

DATA_A, DATA_B = "aaaaaaaaaaaa", "bbbbbbbbbbbb"
GT = "ground_truth: 50 candidates, uniform negatives, seed 42"


@pytest.fixture
def client(tmp_path, monkeypatch):
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # Both variables through monkeypatch: mlflow.set_*_uri export them, and they must not outlive this test.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return mlflow.MlflowClient()


def make_version(client, name: str, ndcg: float, data: str = DATA_A, **tags) -> int:
    """A registry version with a validation metric, a data version and other tags; alias `candidate`."""
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name)
    all_tags = {lineage.DATA_VERSION_TAG: data, lineage.PREPARED_TAG: f"prep-{data[:4]}",
                f"{registry.METRIC_TAG}val/ndcg_at_10": f"{ndcg:.6f}", **tags}  # fmt: skip
    version = client.create_model_version(name, source="file:///nowhere", tags=all_tags)
    client.set_registered_model_alias(name, registry.CANDIDATE, version.version)
    return int(version.version)


def retrieval_protocol(retriever_version: int, k: int = 50) -> dict[str, str]:
    tags = {"retriever.name": "d-retriever", "retriever.version": str(retriever_version)}
    return {"rerank_mode": "retrieval", lineage.PROTOCOL_TAG: lineage.reranker_protocol("retrieval", tags, k), **tags}


def champion(client, name: str) -> int:
    return int(client.get_model_version_by_alias(name, registry.CHAMPION).version)


def test_a_ground_truth_champion_gives_way_to_the_pipelines_protocol(client):
    make_version(client, "d-retriever", 0.1)
    registry.promote("d-retriever", data_version=DATA_A)
    gt = make_version(client, "d-reranker", 0.40, rerank_mode="ground_truth", protocol=GT)  # 50-item lists: high
    registry.promote("d-reranker", gt, data_version=DATA_A)
    ours = make_version(client, "d-reranker", 0.09, **retrieval_protocol(1))  # bounded by candidate recall: low
    decision = registry.promote("d-reranker", ours, data_version=DATA_A)
    assert decision.promoted and champion(client, "d-reranker") == ours
    assert "stale protocol" in decision.reason and "ground_truth" in decision.reason

    # ... and a ground-truth version never beats a retrieval-mode champion on its incomparable number.
    gt2 = make_version(client, "d-reranker", 0.50, rerank_mode="ground_truth", protocol=GT)
    decision = registry.promote("d-reranker", gt2, data_version=DATA_A)
    assert not decision.promoted and "not comparable" in decision.reason and "--force" in decision.reason
    assert champion(client, "d-reranker") == ours
    tags = client.get_model_version("d-reranker", str(gt2)).tags
    assert tags["promotion.decision"] == "not promoted" and "not comparable" in tags["promotion.reason"]
    assert registry.promote("d-reranker", gt2, force=True, data_version=DATA_A).promoted


def test_lists_of_a_retriever_that_lost_the_champion_alias_are_stale(client):
    make_version(client, "d-retriever", 0.10)
    registry.promote("d-retriever", data_version=DATA_A)
    old = make_version(client, "d-reranker", 0.12, **retrieval_protocol(1))
    registry.promote("d-reranker", old, data_version=DATA_A)
    make_version(client, "d-retriever", 0.11)
    registry.promote("d-retriever", data_version=DATA_A)  # retriever v2 is the champion now
    new = make_version(client, "d-reranker", 0.11, **retrieval_protocol(2))
    decision = registry.promote("d-reranker", new, data_version=DATA_A)
    assert decision.promoted and "stale protocol" in decision.reason

    # Same retriever, another list length: not comparable, refused with the reason.
    other_k = make_version(client, "d-reranker", 0.30, **retrieval_protocol(2, k=20))
    decision = registry.promote("d-reranker", other_k, data_version=DATA_A)
    assert not decision.promoted and "top 20" in decision.reason and "top 50" in decision.reason
    # Same protocol: the metric decides.
    better = make_version(client, "d-reranker", 0.12, **retrieval_protocol(2))
    assert registry.promote("d-reranker", better, data_version=DATA_A).promoted


def test_versions_of_other_data_are_refused_and_champions_of_other_data_give_way(client):
    a = make_version(client, "d-retriever", 0.30, data=DATA_A)
    assert registry.promote("d-retriever", a, data_version=DATA_A).promoted
    b = make_version(client, "d-retriever", 0.05, data=DATA_B)  # worse, but the only one of the current data
    with pytest.raises(LineageError, match=f"data version {DATA_A}"):
        registry.promote("d-retriever", b, data_version=DATA_A, force=True)
    with pytest.raises(LineageError, match="different data"):  # no data context: which one is current?
        registry.promote("d-retriever", b)
    decision = registry.promote("d-retriever", b, data_version=DATA_B)
    assert decision.promoted and "belongs to other data" in decision.reason and DATA_A in decision.reason
    assert champion(client, "d-retriever") == b


def test_versions_without_a_data_version_tag_use_their_md5_tags(client):
    md5s = {"data.interactions.md5": "1" * 32, "data.items.md5": "2" * 32}
    client.create_registered_model("old-retriever")
    v = client.create_model_version("old-retriever", source="file:///nowhere", tags=md5s)
    assert lineage.version_data(v.tags) == lineage.data_version_from_md5("1" * 32, "2" * 32)


def test_the_default_filters_keep_the_short_name_and_others_carry_theirs():
    from recsys_core.config import DataConfig

    assert registry.data_prefix(DataConfig(dataset_code="ml-100k")) == "ml-100k"
    other = registry.data_prefix(DataConfig(dataset_code="ml-100k", min_rating=4))
    assert other == "ml-100k_min_rating4-min_uc5-min_sc5"
    assert registry.model_name(other, "retriever") == "ml-100k_min_rating4-min_uc5-min_sc5-retriever"


def test_a_promotion_that_loses_the_race_for_the_alias_decides_again(client, monkeypatch):
    """Two promotions at once on a server both see no champion; the database lets one alias in and refuses the
    other (PostgreSQL: UniqueViolation on registered_model_alias_pk). The loser compares with the winner."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    ours = make_version(client, "d-retriever", 0.10)
    theirs = make_version(client, "d-retriever", 0.20)
    real = MlflowClient.set_registered_model_alias
    calls = []

    def racing(self, name, alias, version):
        calls.append(version)
        if len(calls) == 1:  # the other process got there first
            real(self, name, alias, theirs)
            raise MlflowException('(psycopg.errors.UniqueViolation) duplicate key value violates unique constraint '
                                  '"registered_model_alias_pk"')  # fmt: skip
        return real(self, name, alias, version)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", racing)
    decision = registry.promote("d-retriever", ours, data_version=DATA_A)
    assert not decision.promoted and decision.champion_before == theirs and champion(client, "d-retriever") == theirs
    assert [int(v) for v in calls] == [ours]  # decided again, and lost on the metric: no second try
