"""`dvc repro` on a copy of the project: the stages run, outputs are versioned, a second repro does nothing; then each
reranker and retriever switch (`dvc exp run -S ...`) through the registry into the served two-stage model.

The project is built and reproduced once per test session (by whichever xdist worker comes first; the others wait on
a file lock), committed, and each test works on its own copy, so the phases run in parallel on the workers.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, random_log
from filelock import FileLock
from PIL import Image

from recsys_core.features.blip2_tiny import write_tiny_blip2
from recsys_core.rerank.llm.tiny import write_tiny_qwen3
from recsys_core.rerank.llm.tiny_vl import write_tiny_qwen3vl
from recsys_core.rerank.t5_tiny import write_tiny_t5

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# `make exps`: a sweep's changed params and the headline metrics; the columns of the stages' file dependencies
# (paths, hashes 32 characters wide) dropped
EXPS = "exp show --only-changed --drop '^(data|experiments)/|^(Created|State|Executor)$' --md"
COPIED = ("dvc.yaml", "params.yaml", ".dvcignore", "recsys_core", "stages")
PREPARED = "data/preprocessed/custom_min_rating0-min_uc3-min_sc2"
OUTPUTS = ["interactions.parquet", "items.parquet", "users.parquet", "dataset_single_export.csv", "stats.json",
           "gt_candidates.parquet"]  # fmt: skip
TRAINED = ["model.safetensors", "config.json", "retrieved.csv", "retrieved_metrics.json", "history.tsv"]


def sh(cwd, *cmd, stdout_only=False, tracking_uri=None):
    """Run a command; its stdout and stderr (stdout alone with ``stdout_only``: warnings go to stderr)."""
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the project's embedded store: <project>/mlflow.db, unless one is given
    env.pop("MLFLOW_REGISTRY_URI", None)
    env.pop("RECSYS_PROJECT_ROOT", None)
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout if stdout_only else done.stdout + done.stderr


def dvc(cwd, *args, tracking_uri=None):
    return sh(cwd, sys.executable, "-m", "dvc", *args, tracking_uri=tracking_uri)


def recsys(cwd, *args, tracking_uri=None):
    return sh(cwd, sys.executable, "-m", "stages.cli", *args, tracking_uri=tracking_uri)


def commit(project, message):
    sh(project, "git", "add", "-A")
    sh(project, "git", "-c", "user.email=ci@example.com", "-c", "user.name=ci", "commit", "-qm", message)


def make_project(root: Path) -> None:
    """The repository's stages and params on generated data: 40 users, 30 items, titles, images for two thirds."""
    root.mkdir(parents=True)
    for name in COPIED:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, root / name)
    sh(root, "git", "init", "-q")
    dvc(root, "init", "-q")
    dvc(root, "config", "core.analytics", "false")
    rows = random_log(40, 30, (4, 10), seed=31)
    pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"]).to_csv(root / "mine.csv", index=False)
    # Item titles (text embeddings) and local images for two thirds of the items (the images stage, CLIP).
    (root / "imgs").mkdir()
    items = []
    for i in range(30):
        path = ""
        if i % 3:
            path = f"imgs/i{i:03d}.png"
            Image.new("RGB", (64 + i, 48), (8 * i, 255 - 8 * i, 100)).save(root / path)
        items.append({"item": f"i{i:03d}", "title": f"Product {i} of family {i % 4}", "image_path": path})
    pd.DataFrame(items).to_csv(root / "items.csv", index=False)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"].update(dataset_code="custom", custom_interactions="mine.csv", custom_items="items.csv", min_uc=3,
                          min_sc=2)  # fmt: skip
    params["features"].update(clip_pretrained="none", embedding_batch_size=8)  # random CLIP weights: no hub here
    params["candidates"]["rerank_eval_candidates"] = 10
    params["retrieval"].update(retrieval_epochs=3, retrieval_lr=0.01, batch_size_retrieval=32, retrieval_top_k=20)
    # BERT4Rec first (the default is ltr, run below with `dvc exp run`): both paths through one project
    params["rerank"].update(rerank_method="bert4rec", rerank_top_k=10, rerank_epochs=4, rerank_lr=0.01,
                            rerank_batch_size=32)  # fmt: skip
    params["bert4rec"].update(bert_hidden_size=16, bert_num_blocks=1, bert_max_len=16)
    params["lrurec"].update(lru_hidden_size=16, lru_num_blocks=1, lru_max_len=16)
    params["training"]["device"] = "cpu"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="session")
def built(tmp_path_factory, worker_id) -> tuple[Path, str]:
    """The project after its first `dvc repro`, committed, and what that repro printed: made once per session."""
    shared = tmp_path_factory.getbasetemp()
    shared = shared.parent if worker_id != "master" else shared
    root, log, failed = shared / "dvc-project", shared / "dvc-project.log", shared / "dvc-project.failed"
    with FileLock(str(shared / "dvc-project.lock")):
        if failed.exists():
            pytest.fail(f"building the shared DVC project failed in another worker:\n{failed.read_text()}")
        if not log.exists():
            try:
                make_project(root)
                out = dvc(root, "repro")
                commit(root, "pipeline")
            except BaseException as err:
                failed.write_text(str(err))
                raise
            log.write_text(out)
    return root, log.read_text()


def relocate_store(store: Path, old: str, new: str) -> None:
    """The embedded MLflow store records absolute artifact paths: point a copied store at its own copy."""
    with sqlite3.connect(store) as db:
        for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            columns = db.execute(f"PRAGMA table_info({table})").fetchall()
            for column in [c[1] for c in columns if c[2].upper().startswith(("VARCHAR", "TEXT"))]:
                db.execute(f"UPDATE {table} SET {column} = replace({column}, ?, ?) WHERE instr({column}, ?)",
                           (old, new, old))  # fmt: skip


@pytest.fixture
def project(built, tmp_path) -> Path:
    """This test's own copy of the built project (git, DVC cache, outputs, MLflow store and artifacts)."""
    root = tmp_path / "project"
    shutil.copytree(built[0], root, symlinks=True, ignore=shutil.ignore_patterns("tmp"))  # .dvc/tmp: state, locks
    relocate_store(root / "mlflow.db", str(built[0]), str(root))
    return root


SERVE = """
import mlflow, pandas as pd
mlflow.set_tracking_uri('sqlite:///{project}/mlflow.db')
m = mlflow.pyfunc.load_model('models:/custom_min_rating0-min_uc3-min_sc2-two-stage@champion')
out = m.predict(pd.DataFrame({{'history': [[1, 2, 3]], 'k': [5]}}))
c = mlflow.MlflowClient()
stages = sorted(r.data.tags['stage'] for r in c.search_runs([c.get_experiment_by_name('custom').experiment_id]))
champions = [c.get_model_version_by_alias(f'custom_min_rating0-min_uc3-min_sc2-{{k}}', 'champion').version
             for k in ('retriever', 'reranker', 'two-stage')]
print(len(out['items'][0]), len(out['titles'][0]), stages, champions)
"""


def served(project: Path) -> str:
    """What the registered two-stage champion answers from a fresh process (its last printed line)."""
    return sh("/", sys.executable, "-c", SERVE.format(project=project), stdout_only=True).strip().splitlines()[-1]


def pipeline_registered(project: Path) -> dict:
    return json.loads((project / "experiments/pipeline/custom/seed42/registered.json").read_text())


def promote_reranker_and_serve(project: Path, registered: Path, method: str) -> None:
    """Promote the reranker version a stage registered, evaluate the pipeline with it, and serve it."""
    version = json.loads(registered.read_text())["version"]
    recsys(project, "promote", "reranker", "--version", str(version), "--force")
    recsys(project, "evaluate-pipeline")
    assert pipeline_registered(project)["reranker.method"] == method
    last = served(project)
    assert last.startswith("5 5 "), last


def check_report(project: Path) -> None:
    """The report stage's page: self-contained (plots inline, nothing fetched, no script), on the pipeline's run."""
    import mlflow

    page = (project / "reports/custom/seed42/report.html").read_text()
    assert page.count('src="data:image/png;base64,') >= 4  # candidate recall, gain by history, two training curves
    assert "<script" not in page and 'src="http' not in page and "<link" not in page
    for section in ("Does the reranker help?", "How many true items the retriever keeps at K", "Gain by history"):
        assert section in page
    run_id = pipeline_registered(project)["run_id"]
    client = mlflow.MlflowClient(f"sqlite:///{project}/mlflow.db")
    assert [a.path for a in client.list_artifacts(run_id, "report")] == ["report/report.html"]


def test_dvc_repro_then_nothing_to_do(built, project):
    out = built[1]
    assert "Running stage 'prepare'" in out and "Running stage 'gt_candidates'" in out
    prep = project / PREPARED
    assert all((prep / name).exists() for name in OUTPUTS)
    exp = project / "experiments/retrieval/lrurec/custom/seed42"
    assert all((exp / name).exists() for name in [*TRAINED, "registered.json", "promotion.json"])
    assert json.loads((exp / "promotion.json").read_text())["promoted"] is True
    assert (project / "mlflow.db").exists() and (project / "mlartifacts").is_dir()
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"download", "images", "prepare", "embeddings", "captions", "summaries",
                                   "gt_candidates", "train_retrieval", "promote_retriever", "train_ltr_models",
                                   "train_rerank", "promote_reranker", "evaluate_pipeline", "report"}  # fmt: skip
    check_report(project)
    manifest = pd.read_parquet(project / "data/images/custom/manifest.parquet")
    with_image = manifest["raw_id"].str[1:].astype(int) % 3 != 0
    assert (manifest["status"] == "ok").tolist() == with_image.tolist()
    assert set(manifest["status"]) == {"ok", "missing_url"}
    index = json.loads((prep / "embeddings" / "index.json").read_text())
    assert set(index["made"]) == {"image", "text"}, index
    rerank = project / "experiments/rerank/bert4rec/custom/seed42"
    assert all(
        (rerank / n).exists() for n in ("model/model.safetensors", "metrics.json", "history.tsv", "promotion.json")
    )
    pipeline = json.loads((project / "experiments/pipeline/custom/seed42/metrics.json").read_text())
    assert {"test/ndcg_at_10", "test_retrieval_only/ndcg_at_10"} <= set(pipeline)
    registered = pipeline_registered(project)
    assert registered["two_stage_promoted"] and registered["retriever.version"] == "1"
    # The registered two-stage model answers from a fresh process.
    assert served(project) == "5 5 ['pipeline', 'rerank', 'retrieval'] [1, 1, 1]"
    snapshot = {name: (prep / name).read_bytes() for name in OUTPUTS} | {n: (exp / n).read_bytes() for n in TRAINED}

    again = dvc(project, "repro")
    assert "Data and pipelines are up to date" in again and "Running stage" not in again

    # A fresh clone: the lock is there, the outputs and the MLflow store are not. Training from scratch gives the
    # same files, and the new store gets the model registered and promoted (promotion follows every training).
    shutil.rmtree(project / "experiments")
    shutil.rmtree(project / "mlartifacts")
    shutil.rmtree(project / ".dvc" / "cache")  # no cache, no run cache: as after `git clone`
    (project / "mlflow.db").unlink()
    rebuilt = dvc(project, "repro")
    for stage in ("train_retrieval", "promote_retriever", "train_ltr_models", "train_rerank", "promote_reranker",
                  "evaluate_pipeline", "report"):  # fmt: skip
        assert f"Running stage '{stage}'" in rebuilt
    assert {n: (exp / n).read_bytes() for n in TRAINED} == {n: snapshot[n] for n in TRAINED}
    promotion = json.loads((exp / "promotion.json").read_text())
    assert promotion["promoted"] is True and promotion["version"] == 1

    metrics = json.loads(dvc(project, "metrics", "show", "--json"))
    shown = {name for found in next(iter(metrics.values()))["data"].values() for name in found["data"]}
    assert shown == {"val_ndcg@10", "test_ndcg@10", "test_recall@10", "gain@10", "gain_ci", "retriever_val_ndcg@10",
                     "retriever_test_ndcg@10", "reranker_val_ndcg@10"}, shown  # fmt: skip


def test_dvc_metrics_fit_a_screen_and_plots_render_offline(project):
    """`dvc metrics show` lists the headline numbers only; `recsys plots` renders every curve with Vega inline."""
    table = dvc(project, "metrics", "show")
    assert "gain_ci" in table and "retriever_test_ndcg@10" in table and "val_hit_at_20" not in table
    print(table)
    assert max(len(line) for line in table.splitlines()) <= 240, table
    printed = recsys(project, "plots")
    page = (project / "dvc_plots" / "index.html").read_text()
    assert "renders offline" in printed and "cdn.jsdelivr" not in page and "window.vegaEmbed" in page
    for title in ("validation NDCG@10 per epoch", "validation Recall@10 per epoch", "retriever training loss"):
        assert title in page
    for stage in ("rerank/bert4rec", "retrieval/lrurec"):  # both stages' curves (DVC drops the common folder)
        assert f'"filename": "{stage}/custom/seed42/history.tsv"' in page
    shutil.rmtree(project / "dvc_plots")
    dvc(project, "plots", "show")  # plain DVC, now configured with the offline template
    assert "cdn.jsdelivr" not in (project / "dvc_plots" / "index.html").read_text()


def test_switching_the_retriever_to_bm3(project):
    """`dvc exp run -S retrieval.retrieval_method=bm3` trains BM3 on the image and text embeddings and registers it;
    once promoted it is the pipeline's retriever inside the served two-stage model."""
    switched = dvc(project, "exp", "run", "-S", "retrieval.retrieval_method=bm3")
    assert "Running stage 'train_retrieval'" in switched and "Running stage 'embeddings'" not in switched
    bm3 = project / "experiments/retrieval/bm3/custom/seed42"
    assert all((bm3 / name).exists() for name in [*TRAINED, "registered.json", "promotion.json"])
    assert json.loads((bm3 / "config.json").read_text())["hparams"]["modalities"] == ["image", "text"]
    assert json.loads((bm3 / "registered.json").read_text())["version"] == 2
    recsys(project, "promote", "retriever", "--version", "2", "--force")
    recsys(project, "evaluate-pipeline")
    registered = pipeline_registered(project)
    assert registered["retriever.method"] == "bm3" and registered["retriever.version"] == "2"
    last = served(project)
    assert last.startswith("5 5 "), last


def test_the_ltr_reranker_through_dvc_and_the_registry(project):
    """`dvc exp run -S rerank.rerank_method=ltr` trains and registers EASE (the default `ltr.ltr_models`), fits
    LightGBM on the validation lists of the champion retriever with EASE's scores among the features, carries both,
    and (promoted) serves inside the two-stage model. Then, through the stage alone, the lists of a shadow retriever
    trained one step earlier (``ltr_shifts=1``; other models' scores are refused on them, so without the models
    family)."""
    ltr_run = dvc(project, "exp", "run", "-S", "rerank.rerank_method=ltr")
    assert "Running stage 'train_ltr_models'" in ltr_run and "Running stage 'train_retrieval'" not in ltr_run
    models = json.loads((project / "experiments/ltr_models/custom/seed42/registered.json").read_text())["models"]
    assert list(models) == ["ease"] and models["ease"]["version"] == 2  # the champion LRURec is version 1
    ltr = project / "experiments/rerank/ltr/custom/seed42"
    assert (ltr / "model/ranker.txt").read_text().startswith("tree") and (ltr / "model/retriever").is_dir()
    saved = json.loads((ltr / "model/config.json").read_text())
    assert saved["sources"]["models"]["ease"]["version"] == 2 and "model_ease" in saved["feature_names"]
    assert (ltr / "model/models/ease/model.safetensors").exists()
    promote_reranker_and_serve(project, ltr / "registered.json", "ltr")

    recsys(project, "train-rerank", "--ltr_shifts", "1", "--ltr_features", "retriever", "popularity", "transitions",
           "content", "history")  # fmt: skip
    hparams = json.loads((ltr / "model/config.json").read_text())["hparams"]
    assert hparams["shifts"] == [1] and len(hparams["training_lists"]) == 2 and min(hparams["training_lists"]) > 0
    assert not (ltr / "model/shadow1").exists()  # the shadow is for training only: the served model does not carry it


def test_the_llm_reranker_through_dvc_and_the_registry(project, tmp_path):
    """The LLM reranker on the offline smoke model: `dvc exp run -S rerank.rerank_method=qwen -S llm.qwen_model=DIR`
    trains the LoRA adapter, registers it, and (promoted) it reranks inside the served two-stage model."""
    tiny = write_tiny_qwen3(tmp_path / "smoke" / "qwen3", vocab="bytes")
    llm = dvc(project, "exp", "run", "-S", "rerank.rerank_method=qwen", "-S", f"llm.qwen_model={tiny}",
              "-S", "rerank.rerank_epochs=1")  # fmt: skip
    assert "Running stage 'train_rerank'" in llm and "Running stage 'train_retrieval'" not in llm
    qwen = project / "experiments/rerank/qwen/custom/seed42"
    assert (qwen / "model/adapter/adapter_model.safetensors").exists() and (qwen / "metrics.json").exists()
    promote_reranker_and_serve(project, qwen / "registered.json", "qwen")


def test_vip5_through_dvc_then_ground_truth_mode(project, tmp_path):
    """VIP5 on the offline T5 smoke model, visual tokens from the items' CLIP features: retrieval mode through DVC,
    the registry and the served two-stage model; then ground-truth mode through the stage alone."""
    t5 = write_tiny_t5(tmp_path / "smoke" / "t5")
    vip5_run = dvc(project, "exp", "run", "-S", "rerank.rerank_method=vip5", "-S", f"vip5.vip5_model={t5}",
                   "-S", "rerank.rerank_epochs=1")  # fmt: skip
    assert "Running stage 'train_rerank'" in vip5_run and "Running stage 'train_retrieval'" not in vip5_run
    vip5 = project / "experiments/rerank/vip5/custom/seed42"
    assert (vip5 / "model/model.safetensors").exists() and (vip5 / "model/features.safetensors").exists()
    assert json.loads((vip5 / "metrics.json").read_text())["mode"] == "retrieval"
    promote_reranker_and_serve(project, vip5 / "registered.json", "vip5")
    recsys(project, "train-rerank", "--rerank_mode", "ground_truth")
    metrics = json.loads((vip5 / "metrics.json").read_text())
    assert metrics["mode"] == "ground_truth" and metrics["users"] > 0 and "test/ndcg_at_10" in metrics


def test_captions_summaries_and_qwen3vl_raw_image_served(project, tmp_path):
    """Vision-language on smoke models: BLIP-2 captions and Qwen3-VL summaries as DVC stages, then the qwen3vl
    reranker in raw_image mode (promoted and served: its images travel with the model), then a text mode through
    DVC, which does not make the generated tables again."""
    blip2, vl = write_tiny_blip2(tmp_path / "smoke" / "blip2"), write_tiny_qwen3vl(tmp_path / "smoke" / "qwen3vl")
    made = dvc(project, "exp", "run", "-S", "data.generate_caption=true", "-S", f"features.caption_model={blip2}",
               "-S", "data.generate_semantic_summary=true", "-S", f"features.summary_model={vl}",
               "-S", "features.summary_max_new_tokens=16", "-S", "rerank.rerank_method=qwen3vl",
               "-S", f"llm.qwen3vl_model={vl}", "-S", "llm.qwen_mode=raw_image", "-S", "rerank.rerank_epochs=1")  # fmt: skip
    for stage in ("captions", "summaries", "train_rerank"):
        assert f"Running stage '{stage}'" in made, stage
    manifest = pd.read_parquet(project / "data/images/custom/manifest.parquet")
    with_images = set(manifest.loc[manifest["status"] == "ok", "raw_id"])
    captions = pd.read_parquet(project / PREPARED / "blip2_captions.parquet")
    assert set(captions["raw_id"]) == with_images and captions["caption"].str.len().gt(0).all()
    summaries = pd.read_parquet(project / PREPARED / "semantic_summaries.parquet")
    assert with_images <= set(summaries["raw_id"]) and summaries["semantic_summary_small"].str.len().gt(0).all()
    vl_out = project / "experiments/rerank/qwen3vl/custom/seed42"
    assert (vl_out / "model/adapter/adapter_model.safetensors").exists() and any((vl_out / "model/images").iterdir())
    version = json.loads((vl_out / "registered.json").read_text())["version"]
    promote_reranker_and_serve(project, vl_out / "registered.json", "qwen3vl")
    again = dvc(project, "exp", "run", "-S", "llm.qwen_mode=semantic_summary")
    assert "Running stage 'train_rerank'" in again and "Running stage 'summaries'" not in again
    assert json.loads((vl_out / "registered.json").read_text())["version"] > version


def test_qwen3vl_in_the_other_text_modes(project, tmp_path):
    """The captions and summaries made by the stages alone, then the qwen3vl reranker in the three other text
    modes, each a new registered version."""
    blip2, vl = write_tiny_blip2(tmp_path / "smoke" / "blip2"), write_tiny_qwen3vl(tmp_path / "smoke" / "qwen3vl")
    recsys(project, "captions", "--generate_caption", "--caption_model", str(blip2))
    recsys(project, "summaries", "--generate_semantic_summary", "--summary_model", str(vl),
           "--summary_max_new_tokens", "16")  # fmt: skip
    vl_out = project / "experiments/rerank/qwen3vl/custom/seed42"
    version = 0
    for mode in ("text_only", "caption", "semantic_summary_small"):
        recsys(project, "train-rerank", "--rerank_method", "qwen3vl", "--qwen3vl_model", str(vl), "--qwen_mode", mode,
               "--rerank_epochs", "1")  # fmt: skip
        run = json.loads((vl_out / "registered.json").read_text())
        assert run["version"] > version, mode
        version = run["version"]


def test_push_then_a_second_clone_pulls_everything_and_has_nothing_to_do(project, tmp_path):
    """The team's DVC remote: one clone pushes, a `git clone` elsewhere pulls the data, candidates and models and
    recomputes nothing; the champion it would serve is the one its pulled files name."""
    remote = tmp_path / "remote"
    dvc(project, "remote", "add", "-d", "storage", str(remote))
    commit(project, "a default remote")
    dvc(project, "push")
    assert "in sync" in dvc(project, "status", "--cloud")
    clone = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(project), str(clone))
    assert not (clone / PREPARED / "interactions.parquet").exists()
    dvc(clone, "pull")
    assert "up to date" in dvc(clone, "status")
    again = dvc(clone, "repro")
    assert "Data and pipelines are up to date" in again and "Running stage" not in again
    for name in (f"{PREPARED}/interactions.parquet", f"{PREPARED}/gt_candidates.parquet",
                 "experiments/retrieval/lrurec/custom/seed42/model.safetensors",
                 "experiments/rerank/bert4rec/custom/seed42/model/model.safetensors"):  # fmt: skip
        assert (clone / name).read_bytes() == (project / name).read_bytes(), name
    assert pipeline_registered(clone) == pipeline_registered(project)
    assert served(project) == "5 5 ['pipeline', 'rerank', 'retrieval'] [1, 1, 1]"


def test_a_queued_sweep_runs_in_parallel_workers_against_the_tracking_server(project, tracking_server):
    """`dvc exp run --queue -S ...` twice, `dvc queue start -j 2`: both experiments run at once in DVC's workers,
    every MLflow run they make carries its DVC experiment's name, and `recsys compare --sweep` shows them as one
    table."""
    import mlflow

    url, _ = tracking_server
    sweep = {"lr-1e-3": 0.001, "lr-3e-2": 0.03}  # a setting that moves the retriever's numbers (3 epochs: 0.01)
    for name, lr in sweep.items():
        dvc(project, "exp", "run", "--queue", "-n", name, "-S", f"retrieval.retrieval_lr={lr}", tracking_uri=url)
    try:
        dvc(project, "queue", "start", "-j", "2", tracking_uri=url)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            status = dvc(project, "queue", "status")
            if "Queued" not in status and "Running" not in status:
                break
            time.sleep(3)
    finally:
        dvc(project, "queue", "stop", "--kill")
    failed = [line.split()[1] for line in status.splitlines() if line.endswith("Failed")]
    logs = "\n".join(dvc(project, "queue", "logs", name) for name in failed)
    assert status.count("Success") == 2, f"{status}\n{logs[-6000:]}"
    client = mlflow.MlflowClient(tracking_uri=url, registry_uri=url)
    runs = client.search_runs([client.get_experiment_by_name("custom").experiment_id])
    stages: dict[str, set] = {}
    for run in runs:
        stages.setdefault(run.data.tags.get("dvc.experiment"), set()).add(run.data.tags["stage"])
    assert stages == {name: {"retrieval", "rerank", "pipeline"} for name in sweep}, stages
    assert all(run.data.tags.get("dvc.baseline_rev") for run in runs)
    table = recsys(project, "compare", "--sweep", tracking_uri=url)
    assert "lr-1e-3" in table and "lr-3e-2" in table and "two-stage - retrieval NDCG@10" in table, table
    # `make exps`: DVC's own view of the sweep, the changed param and the headline numbers, one screen wide
    exps = re.search(r"^exps:.*\n\t(.*)\n", (REPO / "Makefile").read_text(), re.M).group(1).replace("$$", "$")
    assert EXPS in exps, exps
    shown = dvc(project, *shlex.split(EXPS))
    print(shown)
    assert "retrieval.retrieval_lr" in shown and "lr-3e-2" in shown and "retriever_val_ndcg@10" in shown, shown
    assert max(len(line) for line in shown.splitlines()) <= 220, shown  # a full-width terminal on a 1920-px screen
