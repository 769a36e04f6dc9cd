"""The `recsys compare` table: seeds aggregated, K above a ranked list's length marked, differences called gains
only when their interval excludes zero."""

import pytest

from recsys_core.leaderboard import NOT_RANKED, Entry, RunRecord, delta_text, format_block, latest_per_seed

KS = (5, 10, 20)


def metrics(value: float, n: int | None = None) -> dict[str, float]:
    out = {f"{split}/{kind}_at_{k}": value + k / 1000 for split in ("val", "test") for kind in ("ndcg", "recall")
           for k in KS}  # fmt: skip
    return out | ({"test/mrr_at_" + str(n): 0.3} if n else {})


def test_several_seeds_show_mean_and_sample_sd_and_reruns_of_a_seed_count_once():
    runs = [RunRecord("a", "1", metrics(0.10), start_time=1), RunRecord("b", "2", metrics(0.20), start_time=2),
            RunRecord("c", "1", metrics(0.30), start_time=3)]  # fmt: skip
    newest = latest_per_seed(runs)
    assert [r.run_id for r in newest] == ["c", "b"]  # seed 1's rerun replaces its first run
    table = format_block("t", [Entry("retrieval lrurec", newest, "v2")], KS)
    # test NDCG@10 of seeds 1 and 2: 0.31 and 0.21 -> mean 0.26, sample sd 0.0707
    assert "0.2600±0.0707" in table and "1,2" in table
    single = format_block("t", [Entry("retrieval lrurec", newest[:1])], KS)
    assert "0.3100" in single and "±" not in single


def test_k_above_the_ranked_list_is_marked_not_shown():
    table = format_block("t", [Entry("pipeline lrurec+ltr", [RunRecord("p", "42", metrics(0.1, n=10))])], KS)
    test_row = next(line for line in table.splitlines()[2:] if " test " in line)  # after the header
    assert test_row.count(NOT_RANKED) == 2  # NDCG@20 and Recall@20 of a 10-item list
    assert "0.1100" in test_row and "0.1200" not in test_row  # @10 shown, @20 (0.12) not
    assert "K is above the length of the ranked list" in table
    full = format_block("t", [Entry("retrieval lrurec", [RunRecord("r", "42", metrics(0.1))])], KS)
    assert NOT_RANKED not in full and "0.1200" in full


@pytest.mark.parametrize(
    ("low", "high", "verdict"), [(0.002, 0.02, "gain"), (-0.001, 0.02, "not significant"), (-0.02, -0.001, "loss")]
)
def test_a_difference_is_a_gain_only_when_its_interval_excludes_zero(low, high, verdict):
    found = {"test_delta/ndcg_at_10": 0.01, "test_delta_low/ndcg_at_10": low, "test_delta_high/ndcg_at_10": high}
    assert delta_text(found).endswith(verdict)
    assert delta_text(found).startswith("+0.0100 [")
    assert delta_text({"test/ndcg_at_10": 0.1}) == ""


def test_the_stage_tables_mark_k_above_the_list_length():
    from recsys_core.metrics import METRICS, format_table

    row = {f"{m}_at_{k}": k / 100 for m in METRICS for k in KS}
    table = format_table({"two-stage": row}, KS, list_length=10)
    assert table.count("n/a") == len(METRICS) + 1 and "0.2000" not in table and "0.1000" in table
    assert "n/a" not in format_table({"two-stage": row}, KS, list_length=20)


def test_champions_of_a_dataset_leave_out_a_named_dataset_that_shares_its_prefix(tmp_path, monkeypatch):
    """`custom`'s table holds `custom-retriever` and `custom_min_rating...-retriever`, never `custom-shoes-...`."""
    import mlflow

    from stages.compare import champion_entries

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    client = mlflow.MlflowClient()
    names = ("custom-retriever", "custom_min_rating4-min_uc5-min_sc5-retriever", "custom-shoes-retriever")
    for name in names:
        with mlflow.start_run() as run:
            mlflow.set_tags({"method": "lrurec", "seed": "42", "prepared_dir": name.removesuffix("-retriever")})
            mlflow.log_metric("test/ndcg_at_10", 0.1)
        client.create_registered_model(name)
        version = client.create_model_version(name, f"runs:/{run.info.run_id}/model", run.info.run_id)
        client.set_registered_model_alias(name, "champion", version.version)
    found = champion_entries(client, "custom")
    assert sorted(found) == ["custom", "custom_min_rating4-min_uc5-min_sc5"]
    assert all(entry.label == "champion retriever: lrurec" for entries in found.values() for entry in entries)
