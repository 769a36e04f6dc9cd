"""`dvc repro` on a copy of the project: the stages run, outputs are versioned, a second repro does nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from conftest import REPO, random_log
from PIL import Image

from recsys_core.features.blip2_tiny import write_tiny_blip2
from recsys_core.rerank.llm.tiny import write_tiny_qwen3
from recsys_core.rerank.llm.tiny_vl import write_tiny_qwen3vl
from recsys_core.rerank.t5_tiny import write_tiny_t5

pytestmark = pytest.mark.slow

COPIED = ("dvc.yaml", "params.yaml", ".dvcignore", "recsys_core", "stages")


def sh(cwd, *cmd, stdout_only=False):
    """Run a command; its stdout and stderr (stdout alone with ``stdout_only``: warnings go to stderr)."""
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the project's embedded store: <project>/mlflow.db
    env.pop("MLFLOW_REGISTRY_URI", None)
    env.pop("RECSYS_PROJECT_ROOT", None)
    # every core for the stages: under xdist the worker runs on one math thread, and this test outlasts the others
    env.update(OMP_NUM_THREADS=str(os.cpu_count() or 1), MKL_NUM_THREADS=str(os.cpu_count() or 1))
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout if stdout_only else done.stdout + done.stderr


@pytest.fixture
def project(tmp_path):
    for name in COPIED:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, tmp_path / name)
    sh(tmp_path, "git", "init", "-q")
    sh(tmp_path, sys.executable, "-m", "dvc", "init", "-q")
    sh(tmp_path, sys.executable, "-m", "dvc", "config", "core.analytics", "false")
    rows = random_log(40, 30, (4, 10), seed=31)
    pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"]).to_csv(tmp_path / "mine.csv", index=False)
    # Item titles (text embeddings) and local images for two thirds of the items (the images stage, CLIP).
    (tmp_path / "imgs").mkdir()
    items = []
    for i in range(30):
        path = ""
        if i % 3:
            path = f"imgs/i{i:03d}.png"
            Image.new("RGB", (64 + i, 48), (8 * i, 255 - 8 * i, 100)).save(tmp_path / path)
        items.append({"item": f"i{i:03d}", "title": f"Product {i} of family {i % 4}", "image_path": path})
    pd.DataFrame(items).to_csv(tmp_path / "items.csv", index=False)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
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
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return tmp_path


@pytest.mark.timeout(1500)  # the whole platform through DVC: every stage and every reranker on smoke models
def test_dvc_repro_then_nothing_to_do(project, tmp_path_factory):
    out = sh(project, sys.executable, "-m", "dvc", "repro")
    assert "Running stage 'prepare'" in out and "Running stage 'gt_candidates'" in out
    prep = project / "data/preprocessed/custom_min_rating0-min_uc3-min_sc2"
    outputs = ["interactions.parquet", "items.parquet", "users.parquet", "dataset_single_export.csv", "stats.json",
               "gt_candidates.parquet"]  # fmt: skip
    assert all((prep / name).exists() for name in outputs)
    exp = project / "experiments/retrieval/lrurec/custom/seed42"
    trained = ["model.safetensors", "config.json", "retrieved.csv", "retrieved_metrics.json", "history.tsv"]
    assert all((exp / name).exists() for name in [*trained, "registered.json", "promotion.json"])
    assert json.loads((exp / "promotion.json").read_text())["promoted"] is True
    assert (project / "mlflow.db").exists() and (project / "mlartifacts").is_dir()
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"download", "images", "prepare", "embeddings", "captions", "summaries",
                                   "gt_candidates", "train_retrieval", "promote_retriever", "train_rerank",
                                   "promote_reranker", "evaluate_pipeline"}  # fmt: skip
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
    registered = json.loads((project / "experiments/pipeline/custom/seed42/registered.json").read_text())
    assert registered["two_stage_promoted"] and registered["retriever.version"] == "1"
    # The registered two-stage model answers from a fresh process.
    script = (
        "import mlflow, pandas as pd\n"
        f"mlflow.set_tracking_uri('sqlite:///{project}/mlflow.db')\n"
        "m = mlflow.pyfunc.load_model('models:/custom_min_rating0-min_uc3-min_sc2-two-stage@champion')\n"
        "out = m.predict(pd.DataFrame({'history': [[1, 2, 3]], 'k': [5]}))\n"
        "c = mlflow.MlflowClient()\n"
        "stages = sorted(r.data.tags['stage'] for r in c.search_runs([c.get_experiment_by_name('custom').experiment_id]))\n"
        "champions = [c.get_model_version_by_alias(f'custom_min_rating0-min_uc3-min_sc2-{k}', 'champion').version\n"
        "             for k in ('retriever', 'reranker', 'two-stage')]\n"
        "print(len(out['items'][0]), len(out['titles'][0]), stages, champions)\n"
    )
    last = sh("/", sys.executable, "-c", script, stdout_only=True).strip().splitlines()[-1]
    assert last == "5 5 ['pipeline', 'rerank', 'retrieval'] [1, 1, 1]", last
    snapshot = {name: (prep / name).read_bytes() for name in outputs} | {n: (exp / n).read_bytes() for n in trained}

    again = sh(project, sys.executable, "-m", "dvc", "repro")
    assert "Data and pipelines are up to date" in again and "Running stage" not in again

    # A fresh clone: the lock is there, the outputs and the MLflow store are not. Training from scratch gives the
    # same files, and the new store gets the model registered and promoted (promotion follows every training).
    shutil.rmtree(project / "experiments")
    shutil.rmtree(project / "mlartifacts")
    shutil.rmtree(project / ".dvc" / "cache")  # no cache, no run cache: as after `git clone`
    (project / "mlflow.db").unlink()
    rebuilt = sh(project, sys.executable, "-m", "dvc", "repro")
    for stage in ("train_retrieval", "promote_retriever", "train_rerank", "promote_reranker", "evaluate_pipeline"):
        assert f"Running stage '{stage}'" in rebuilt
    assert {n: (exp / n).read_bytes() for n in trained} == {n: snapshot[n] for n in trained}
    promotion = json.loads((exp / "promotion.json").read_text())
    assert promotion["promoted"] is True and promotion["version"] == 1

    metrics = sh(project, sys.executable, "-m", "dvc", "metrics", "show", "--json")
    assert '"interactions"' in metrics

    # Switching the retriever: `dvc exp run -S retrieval.retrieval_method=bm3` trains BM3 on the image and text
    # embeddings and registers it; once promoted it is the pipeline's retriever inside the served two-stage model.
    sh(project, "git", "add", "-A")
    sh(project, "git", "-c", "user.email=ci@example.com", "-c", "user.name=ci", "commit", "-qm", "pipeline")
    switched = sh(project, sys.executable, "-m", "dvc", "exp", "run", "-S", "retrieval.retrieval_method=bm3")
    assert "Running stage 'train_retrieval'" in switched and "Running stage 'embeddings'" not in switched
    bm3 = project / "experiments/retrieval/bm3/custom/seed42"
    assert all((bm3 / name).exists() for name in [*trained, "registered.json", "promotion.json"])
    assert json.loads((bm3 / "config.json").read_text())["hparams"]["modalities"] == ["image", "text"]
    assert json.loads((bm3 / "registered.json").read_text())["version"] == 2
    sh(project, sys.executable, "-m", "stages.cli", "promote", "retriever", "--version", "2", "--force")
    sh(project, sys.executable, "-m", "stages.cli", "evaluate-pipeline")
    registered = json.loads((project / "experiments/pipeline/custom/seed42/registered.json").read_text())
    assert registered["retriever.method"] == "bm3" and registered["retriever.version"] == "2"
    last = sh("/", sys.executable, "-c", script, stdout_only=True).strip().splitlines()[-1]
    assert last.startswith("5 5 "), last

    # The learning-to-rank reranker: `dvc exp run -S rerank.rerank_method=ltr` fits LightGBM on the validation lists
    # of the champion retriever (BM3 now), carries that retriever, and (promoted) serves inside the two-stage model.
    sh(project, "git", "add", "-A")
    sh(project, "git", "-c", "user.email=ci@example.com", "-c", "user.name=ci", "commit", "-qm", "bm3")
    ltr_run = sh(project, sys.executable, "-m", "dvc", "exp", "run", "-S", "rerank.rerank_method=ltr")
    assert "Running stage 'train_rerank'" in ltr_run and "Running stage 'train_retrieval'" not in ltr_run
    ltr = project / "experiments/rerank/ltr/custom/seed42"
    assert (ltr / "model/ranker.txt").read_text().startswith("tree") and (ltr / "model/retriever").is_dir()
    version = json.loads((ltr / "registered.json").read_text())["version"]
    sh(project, sys.executable, "-m", "stages.cli", "promote", "reranker", "--version", str(version), "--force")
    sh(project, sys.executable, "-m", "stages.cli", "evaluate-pipeline")
    registered = json.loads((project / "experiments/pipeline/custom/seed42/registered.json").read_text())
    assert registered["reranker.method"] == "ltr"
    last = sh("/", sys.executable, "-c", script, stdout_only=True).strip().splitlines()[-1]
    assert last.startswith("5 5 "), last

    # The LLM reranker on the offline smoke model: `dvc exp run -S rerank.rerank_method=qwen -S llm.qwen_model=DIR`
    # trains the LoRA adapter, registers it, and (promoted) it reranks inside the served two-stage model.
    tiny = write_tiny_qwen3(tmp_path_factory.mktemp("smoke") / "qwen3", vocab="bytes")
    sh(project, "git", "add", "-A")
    sh(project, "git", "-c", "user.email=ci@example.com", "-c", "user.name=ci", "commit", "-qm", "ltr")
    llm = sh(project, sys.executable, "-m", "dvc", "exp", "run", "-S", "rerank.rerank_method=qwen",
             "-S", f"llm.qwen_model={tiny}", "-S", "rerank.rerank_epochs=1")  # fmt: skip
    assert "Running stage 'train_rerank'" in llm and "Running stage 'train_retrieval'" not in llm
    qwen = project / "experiments/rerank/qwen/custom/seed42"
    assert (qwen / "model/adapter/adapter_model.safetensors").exists() and (qwen / "metrics.json").exists()
    version = json.loads((qwen / "registered.json").read_text())["version"]
    sh(project, sys.executable, "-m", "stages.cli", "promote", "reranker", "--version", str(version), "--force")
    sh(project, sys.executable, "-m", "stages.cli", "evaluate-pipeline")
    registered = json.loads((project / "experiments/pipeline/custom/seed42/registered.json").read_text())
    assert registered["reranker.method"] == "qwen"
    last = sh("/", sys.executable, "-c", script, stdout_only=True).strip().splitlines()[-1]
    assert last.startswith("5 5 "), last

    # VIP5 on the offline T5 smoke model, visual tokens from the items' CLIP features: retrieval mode through DVC,
    # the registry and the served two-stage model; then ground-truth mode through the stage alone.
    t5 = write_tiny_t5(tmp_path_factory.mktemp("smoke") / "t5")
    vip5_run = sh(project, sys.executable, "-m", "dvc", "exp", "run", "-S", "rerank.rerank_method=vip5",
                  "-S", f"vip5.vip5_model={t5}", "-S", "rerank.rerank_epochs=1")  # fmt: skip
    assert "Running stage 'train_rerank'" in vip5_run and "Running stage 'train_retrieval'" not in vip5_run
    vip5 = project / "experiments/rerank/vip5/custom/seed42"
    assert (vip5 / "model/model.safetensors").exists() and (vip5 / "model/features.safetensors").exists()
    assert json.loads((vip5 / "metrics.json").read_text())["mode"] == "retrieval"
    version = json.loads((vip5 / "registered.json").read_text())["version"]
    sh(project, sys.executable, "-m", "stages.cli", "promote", "reranker", "--version", str(version), "--force")
    sh(project, sys.executable, "-m", "stages.cli", "evaluate-pipeline")
    registered = json.loads((project / "experiments/pipeline/custom/seed42/registered.json").read_text())
    assert registered["reranker.method"] == "vip5"
    last = sh("/", sys.executable, "-c", script, stdout_only=True).strip().splitlines()[-1]
    assert last.startswith("5 5 "), last
    sh(project, sys.executable, "-m", "stages.cli", "train-rerank", "--rerank_mode", "ground_truth")
    metrics = json.loads((vip5 / "metrics.json").read_text())
    assert metrics["mode"] == "ground_truth" and metrics["users"] > 0 and "test/ndcg_at_10" in metrics

    # Vision-language on smoke models: BLIP-2 captions and Qwen3-VL summaries as DVC stages, then the qwen3vl reranker
    # in raw_image mode (promoted and served: its images travel with the model), then in the four text modes.
    smoke = tmp_path_factory.mktemp("smoke")
    blip2, vl = write_tiny_blip2(smoke / "blip2"), write_tiny_qwen3vl(smoke / "qwen3vl")
    made = sh(project, sys.executable, "-m", "dvc", "exp", "run", "-S", "data.generate_caption=true",
              "-S", f"features.caption_model={blip2}", "-S", "data.generate_semantic_summary=true",
              "-S", f"features.summary_model={vl}", "-S", "features.summary_max_new_tokens=16",
              "-S", "rerank.rerank_method=qwen3vl", "-S", f"llm.qwen3vl_model={vl}",
              "-S", "llm.qwen_mode=raw_image", "-S", "rerank.rerank_epochs=1")  # fmt: skip
    for stage in ("captions", "summaries", "train_rerank"):
        assert f"Running stage '{stage}'" in made, stage
    with_images = set(manifest.loc[manifest["status"] == "ok", "raw_id"])
    captions = pd.read_parquet(prep / "blip2_captions.parquet")
    assert set(captions["raw_id"]) == with_images and captions["caption"].str.len().gt(0).all()
    summaries = pd.read_parquet(prep / "semantic_summaries.parquet")
    assert with_images <= set(summaries["raw_id"]) and summaries["semantic_summary_small"].str.len().gt(0).all()
    vl_out = project / "experiments/rerank/qwen3vl/custom/seed42"
    assert (vl_out / "model/adapter/adapter_model.safetensors").exists() and any((vl_out / "model/images").iterdir())
    version = json.loads((vl_out / "registered.json").read_text())["version"]
    sh(project, sys.executable, "-m", "stages.cli", "promote", "reranker", "--version", str(version), "--force")
    sh(project, sys.executable, "-m", "stages.cli", "evaluate-pipeline")
    registered = json.loads((project / "experiments/pipeline/custom/seed42/registered.json").read_text())
    assert registered["reranker.method"] == "qwen3vl"
    last = sh("/", sys.executable, "-c", script, stdout_only=True).strip().splitlines()[-1]
    assert last.startswith("5 5 "), last
    # a text mode through DVC (the generated tables are not made again), the other three through the stage alone
    again = sh(project, sys.executable, "-m", "dvc", "exp", "run", "-S", "llm.qwen_mode=semantic_summary")
    assert "Running stage 'train_rerank'" in again and "Running stage 'summaries'" not in again
    for mode in ("semantic_summary", "text_only", "caption", "semantic_summary_small"):
        if mode != "semantic_summary":
            sh(project, sys.executable, "-m", "stages.cli", "train-rerank", "--qwen_mode", mode)
        run = json.loads((vl_out / "registered.json").read_text())
        assert run["version"] > version, mode
        version = run["version"]
