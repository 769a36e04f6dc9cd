"""The embeddings stage's work: item image and text vectors under the current features.* settings, written as one set.

Each modality is planned first (which items have an image file / a text), so that a dataset without a usable image
(MovieLens has no image URLs) skips image embeddings without loading CLIP, and a broken images folder fails before
any model is loaded. The files go into ``<prepared>/embeddings`` together (a staged folder); embedding files of ours
(``{modality}__{encoder}.safetensors``) that the current settings no longer produce are then removed, so that
neither a retriever nor DVC sees a stale one; other files in the folder are left alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsys_core.config import FeaturesConfig
from recsys_core.data.text import item_text
from recsys_core.errors import DataFormatError, MissingArtifactError
from recsys_core.features import clip as clip_encoders
from recsys_core.features import text_encoder
from recsys_core.features.store import (
    EMBEDDINGS_DIR,
    INDEX,
    MINILM,
    MODALITIES,
    embedding_file,
    encoder_name,
    items_fingerprint,
    save_embeddings,
)
from recsys_core.io import staged_directory, write_json

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("raw_id", "status", "file")
OK = "ok"


@dataclass
class Plan:
    """One modality's inputs: ``present`` (N+1,) bool, ``inputs`` for the present rows in item order, or a skip."""

    modality: str
    present: np.ndarray
    inputs: list = field(default_factory=list)
    skipped: str | None = None


def _ordered(items: pd.DataFrame) -> pd.DataFrame:
    """Items sorted by item_id, which must run 1..N (row i of an embedding file is item i)."""
    ordered = items.sort_values("item_id").reset_index(drop=True)
    if not np.array_equal(ordered["item_id"].to_numpy(), np.arange(1, len(ordered) + 1)):
        raise DataFormatError("items: item_id must run 1..N without gaps (the prepare stage writes them so)")
    return ordered


def _texts(items: pd.DataFrame) -> list[str]:
    if "text" in items:
        return items["text"].fillna("").astype(str).tolist()
    title = items.get("title", pd.Series("", index=items.index)).fillna("").astype(str)
    description = items.get("description", pd.Series("", index=items.index)).fillna("").astype(str)
    return [item_text(t.strip(), d.strip()) for t, d in zip(title, description, strict=True)]


def plan_text(items: pd.DataFrame) -> Plan:
    texts = [text.strip() for text in _texts(items)]
    present = np.array([False] + [bool(text) for text in texts])
    if not present.any():
        return Plan("text", present, skipped=f"no item has a text (title or description) among {len(items)} items")
    return Plan("text", present, [text for text in texts if text])


def _ok_files(manifest: pd.DataFrame) -> dict[str, str]:
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest]
    if missing:
        raise DataFormatError(f"images manifest lacks column(s) {', '.join(missing)}; run the images stage again")
    ok = manifest[(manifest["status"] == OK) & manifest["file"].notna() & (manifest["file"].astype(str) != "")]
    return dict(zip(ok["raw_id"].astype(str), ok["file"].astype(str), strict=True))


def plan_image(items: pd.DataFrame, images_dir: Path | None, manifest: pd.DataFrame | None) -> Plan:
    """Items whose manifest row says ok; a skip when none has one; an error when an ok file is gone."""
    absent = np.zeros(len(items) + 1, dtype=bool)
    if manifest is None or images_dir is None:
        return Plan("image", absent, skipped="no images manifest: the images stage has not run (`recsys images`)")
    files = _ok_files(manifest)
    chosen = [files.get(raw_id) for raw_id in items["raw_id"].astype(str)]
    present = np.array([False] + [f is not None for f in chosen])
    if not present.any():
        reason = (f"no item has a usable image: images manifest has {len(files)} ok of {len(manifest)}"
                  f" ({len(items)} items)")  # fmt: skip
        return Plan("image", absent, skipped=reason)
    paths = [Path(images_dir) / f for f in chosen if f is not None]
    gone = [str(p) for p in paths if not p.is_file()]
    if gone:
        raise MissingArtifactError(f"{len(gone)} image(s) the manifest lists as ok are missing, e.g. "
                                   f"{', '.join(gone[:3])}; run the images stage again (`recsys images`)")  # fmt: skip
    return Plan("image", present, paths)


def load_encoders(plans: dict[str, Plan], cfg: FeaturesConfig, device: Any) -> dict[str, tuple]:
    """The models the planned modalities need, all loaded before any encoding so that a missing one fails first."""
    text_by = cfg.text_encoder if plans["text"].skipped is None else None
    encoders = {}
    if plans["image"].skipped is None or text_by == "clip":
        encoders["clip"] = clip_encoders.load_clip(cfg.clip_model, cfg.clip_pretrained, device)
    if text_by == MINILM:
        encoders["minilm"] = text_encoder.load_minilm(device)
    return encoders


def _encode(plan: Plan, cfg: FeaturesConfig, encoders: dict[str, tuple], device: Any, progress: bool) -> np.ndarray:
    """(n_present, D) vectors of one planned modality."""
    size = cfg.embedding_batch_size
    if plan.modality == "image":
        model, preprocess, _ = encoders["clip"]
        return clip_encoders.encode_images(model, preprocess, plan.inputs, size, device, progress=progress)
    if cfg.text_encoder == "clip":
        model, _, tokenizer = encoders["clip"]
        return clip_encoders.encode_texts_clip(model, tokenizer, plan.inputs, size, device, progress=progress)
    model, tokenizer = encoders["minilm"]
    return text_encoder.encode_texts_minilm(model, tokenizer, plan.inputs, size, device, progress=progress)


def _full(plan: Plan, encoded: np.ndarray) -> np.ndarray:
    """Rows of the present items into an (N+1, D) table, zeros elsewhere (row 0 = padding)."""
    vectors = np.zeros((len(plan.present), encoded.shape[1]), dtype=np.float32)
    vectors[plan.present] = encoded
    return vectors


def _extra(modality: str, cfg: FeaturesConfig) -> dict[str, str]:
    if encoder_name(modality, cfg) == MINILM:
        return {"pooling": "mean", "max_tokens": str(text_encoder.MAX_TOKENS), "normalized": "l2"}
    return {"clip_model": cfg.clip_model, "clip_pretrained": str(cfg.clip_pretrained), "normalized": "l2"}


def _entry(path: Path, encoder: str, vectors: np.ndarray, plan: Plan) -> dict:
    return {"file": path.name, "encoder": encoder, "dim": int(vectors.shape[1]),
            "items_with_feature": int(plan.present.sum())}  # fmt: skip


def _remove_stale(folder: Path, keep: set[str]) -> None:
    """Our embedding files that this run did not write (another encoder, or a modality skipped now)."""
    for modality in MODALITIES:
        for path in folder.glob(f"{modality}__*.safetensors"):
            if path.name not in keep:
                log.info("removing %s: the current features.* settings do not produce it", path)
                path.unlink(missing_ok=True)


def compute_embeddings(prepared: Path, items: pd.DataFrame, images_dir: Path | None, manifest: pd.DataFrame | None,
                       cfg: FeaturesConfig, device: Any = "cpu", progress: bool = True) -> dict:  # fmt: skip
    """Embed the items' images and texts into ``<prepared>/embeddings``; returns what index.json says.

    index.json: ``items``, ``items_fingerprint``, ``settings``, ``made`` (modality -> file, encoder, dim,
    items_with_feature) and ``skipped`` (modality -> reason).
    """
    prepared = Path(prepared)
    items = _ordered(items)
    plans = {"image": plan_image(items, images_dir, manifest), "text": plan_text(items)}
    encoders = load_encoders(plans, cfg, device)
    index: dict[str, Any] = {
        "items": len(items), "items_fingerprint": items_fingerprint(items),
        "settings": {"clip_model": cfg.clip_model, "clip_pretrained": cfg.clip_pretrained,
                     "text_encoder": cfg.text_encoder},
        "made": {}, "skipped": {},
    }  # fmt: skip
    folder = prepared / EMBEDDINGS_DIR
    with staged_directory(folder) as scratch:
        for modality, plan in plans.items():
            if plan.skipped:
                log.warning("%s embeddings skipped: %s", modality, plan.skipped)
                index["skipped"][modality] = plan.skipped
                continue
            encoder = encoder_name(modality, cfg)
            vectors = _full(plan, _encode(plan, cfg, encoders, device, progress))
            name = embedding_file(prepared, modality, encoder).name
            save_embeddings(scratch / name, modality, encoder, vectors, plan.present, index["items_fingerprint"],
                            _extra(modality, cfg))  # fmt: skip
            index["made"][modality] = _entry(scratch / name, encoder, vectors, plan)
        write_json(scratch / INDEX, index)
    _remove_stale(folder, {entry["file"] for entry in index["made"].values()})
    return index
