"""What the training stages share: loop settings from the config, the checkpoint fingerprint, MLflow params and
tags, the per-epoch curves file, and the pins a served model needs."""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

import recsys_core
from recsys_core import describe, lineage, registry, tracking
from recsys_core.config import Config, method_section
from recsys_core.training import History, LoopSettings

SERVING_REQUIREMENTS = ("torch", "numpy", "pandas", "safetensors", "pydantic", "pyyaml", "tqdm", "mlflow")
LLM_REQUIREMENTS = (
    "transformers",
    "tokenizers",
    "peft",
    "accelerate",
    "pillow",
    "torchvision",
)  # what an LLM reranker needs besides
# The trained model's files inside an experiment folder (a DVC output): weights + config.json, or for an LLM
# reranker the adapter, tokenizer and item texts.
MODEL_DIR = "model"


def pinned_requirements(names=SERVING_REQUIREMENTS) -> list[str]:
    """Exact versions of what a served model needs, from this environment (so MLflow does not guess them)."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for name in names:
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            pass
    return pins


def fingerprint(cfg: Config, sections: dict[str, Any], hparams: dict, data_md5: str) -> str:
    """What a checkpoint must match to be resumed: settings, data and the code itself."""
    code = hashlib.sha256()
    for source in sorted(Path(recsys_core.__file__).parent.rglob("*.py")):
        code.update(source.read_bytes())
    identity = {**sections, "training": cfg.training.model_dump(exclude={"resume"}), "hparams": hparams,
                "seed": cfg.seed, "data": data_md5, "code": code.hexdigest()}  # fmt: skip
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def loop_settings(cfg: Config, *, epochs: int, lr: float, patience: int, batch_size: int, checkpoint_dir: Path,
                  fingerprint: str, batch_order: str = "random") -> LoopSettings:  # fmt: skip
    t = cfg.training
    return LoopSettings(epochs=epochs, lr=lr, patience=patience, monitor=t.monitor, grad_clip=t.grad_clip,
                        mixed_precision=t.mixed_precision, seed=cfg.seed, batch_size=batch_size, resume=t.resume,
                        checkpoint_dir=checkpoint_dir, fingerprint=fingerprint,
                        gradient_accumulation_steps=t.gradient_accumulation_steps,
                        batch_order=batch_order)  # fmt: skip


STAGE_SECTIONS = {"retrieval": ("seed", "data", "training", "retrieval"),
                  "rerank": ("seed", "data", "training", "rerank", "candidates")}  # fmt: skip


def run_params(cfg: Config, hparams: dict, stage: str, method: str, uses_features: bool = False) -> dict[str, Any]:
    """The params that concern this run: the stage's groups, the method's own section, the feature settings when the
    model reads item features, and as ``model.*`` only what that section does not already say (sizes the data
    decided, resolved defaults). The whole resolved config goes to the run as ``config.yaml``."""
    sections = [*STAGE_SECTIONS[stage], method_section(method), *(["features"] if uses_features else [])]
    params = tracking.config_params(cfg.model_dump(mode="json"), sections)
    own = getattr(cfg, method_section(method)).model_dump(mode="json")
    said = {(name, str(value)) for name, value in own.items()}
    extra = {f"model.{key}": value for key, value in hparams.items()
             if not any(key in name and str(value) == shown for name, shown in said)}  # fmt: skip
    return {**params, **extra}


def run_tags(root: Path, cfg: Config, stage: str, method: str, device: Any, prepared: Path,
             data_tags: dict[str, str], fingerprint: str) -> dict[str, str]:  # fmt: skip
    """Tags of a training run and of the version it registers: what, where, and the lineage (data version, prepared
    folder, the checkpoint fingerprint that identifies the training)."""
    return {"dataset": cfg.data.dataset_code, "method": method, "stage": stage, "seed": str(cfg.seed),
            "device": str(device), "git_commit": tracking.git_commit(root), **lineage.data_tags(prepared),
            lineage.FINGERPRINT_TAG: fingerprint, **data_tags}  # fmt: skip


def finished_version(history: History, prefix: str, kind: str, fingerprint: str):
    """The registered version this run repeats: nothing was trained (the checkpoint had already finished) and a
    version with the same fingerprint exists. Registering again would only add a duplicate."""
    if not history.resumed_from or len(history.epochs) != history.resumed_from:
        return None
    return registry.version_with_fingerprint(registry.model_name(prefix, kind), fingerprint)


def reuse_version(folder: Path, version, run: Any, summary: str) -> dict:
    """registered.json naming an existing version (a rerun that trained nothing), for the promote stage."""
    import mlflow

    mlflow.set_tag("reused_version", f"{version.name} v{version.version}")
    describe.set_descriptions(version.name, version.version, run, summary, repeated=True)
    registered = {"name": version.name, "version": int(version.version), "run_id": version.run_id,
                  "model_uri": version.source, "reused": True}  # fmt: skip
    (folder / "registered.json").write_text(json.dumps(registered, indent=2) + "\n")
    print(f"nothing was trained: the checkpoint had finished, and {version.name} version {version.version} (run "
          f"{version.run_id}) is this very training; no new version registered")  # fmt: skip
    return registered


def summary_of(cfg: Config, stage: str, method: str, tags: dict[str, str], metrics: dict[str, float],
               used: Iterable[str] = ()) -> str:  # fmt: skip
    """The run's and its version's description (method, data, headline numbers, versions used)."""
    head = describe.headline(metrics, cfg.training.metric_ks)
    return describe.run_description(stage, method, cfg.data.dataset_code, cfg.seed,
                                    tags.get(lineage.DATA_VERSION_TAG, ""), head, used)  # fmt: skip


def write_curves(history: History, path: Path) -> None:
    """history.tsv for `dvc plots`: per-epoch loss and validation metrics. Timings go to MLflow only, so that the
    same inputs give the same file."""
    timings = ["epoch_seconds", "epoch_cpu_seconds", "eval_seconds"]
    curves = pd.DataFrame(history.epochs).drop(columns=timings, errors="ignore")
    curves.astype({"epoch": int}).to_csv(path, sep="\t", index=False)


def add_parent_run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--parent_run_id", default=None, help="nest the MLflow run under this run (pipelines)")


def register_model(folder: Path, model_uri: str, prefix: str, kind: str, tags: dict[str, str], run: Any,
                   metrics: dict[str, float], summary: str, ks: Iterable[int], candidate: bool = True) -> dict:  # fmt: skip
    """A new registry version (alias `candidate`, unless ``candidate`` is false) carrying the headline metrics,
    described with ``summary``; recorded in ``folder/registered.json`` for the promote stage."""
    name = registry.model_name(prefix, kind)
    run_id = run.info.run_id
    version = registry.register(model_uri, name, {**tags, "run_id": run_id}, describe.headline(metrics, ks), candidate)
    describe.set_descriptions(name, version, run, summary)
    registered = {"name": name, "version": version, "run_id": run_id, "model_uri": model_uri}
    (folder / "registered.json").write_text(json.dumps(registered, indent=2) + "\n")
    return registered
