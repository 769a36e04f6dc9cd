"""Embedding files: one safetensors file per (modality, encoder), named after the encoder, beside the prepared data.

``data/preprocessed/<prepared>/embeddings/{modality}__{encoder}.safetensors`` holds ``embeddings`` (N+1, D) float32
(row i = item i, row 0 = padding, zeros) and ``has_feature`` (N+1,) uint8, with metadata naming the encoder and a
fingerprint of the item table, so that embeddings made for another item table are refused rather than misaligned.
``index.json`` lists what the embeddings stage made and what it skipped (and why).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from recsys_core.config import FeaturesConfig
from recsys_core.errors import MissingArtifactError
from recsys_core.io import atomic_path

EMBEDDINGS_DIR = "embeddings"
INDEX = "index.json"
META_KEY = "recsys"
MODALITIES = ("image", "text")
MINILM = "all-MiniLM-L6-v2"
RUN_EMBEDDINGS = "run the embeddings stage (`recsys embeddings` or `dvc repro embeddings`)"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def clip_encoder_name(model: str, pretrained: str | None) -> str:
    """`clip-ViT-B-32-openai`; a local checkpoint contributes its file stem; no weights -> `random`."""
    if not pretrained or pretrained.lower() == "none":
        tag = "random"
    elif Path(pretrained).suffix:  # a local checkpoint file
        tag = Path(pretrained).stem
    else:
        tag = pretrained.lower()  # open_clip tags are case-insensitive
    return f"clip-{_slug(model)}-{_slug(tag)}"


def encoder_name(modality: str, cfg: FeaturesConfig) -> str:
    """The encoder that the current settings pick for a modality (images are always CLIP)."""
    if modality == "image" or cfg.text_encoder == "clip":
        return clip_encoder_name(cfg.clip_model, cfg.clip_pretrained)
    if modality == "text":
        return MINILM
    raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")


def embedding_file(folder: Path, modality: str, encoder: str) -> Path:
    return Path(folder) / EMBEDDINGS_DIR / f"{modality}__{encoder}.safetensors"


def items_fingerprint(items: pd.DataFrame) -> str:
    """sha256 over the item table's raw ids in item-id order: embeddings belong to exactly this table."""
    ordered = items.sort_values("item_id")["raw_id"].astype(str)
    return hashlib.sha256("\n".join(ordered).encode("utf-8")).hexdigest()


@dataclass
class FeatureTable:
    """One modality's item vectors. ``vectors[i]`` is item i (row 0 padding); ``present[i]`` whether item i has it."""

    modality: str
    encoder: str
    vectors: torch.Tensor  # (N+1, D) float32
    present: torch.Tensor  # (N+1,) bool

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def n_present(self) -> int:
        return int(self.present.sum())


def save_embeddings(dest: Path, modality: str, encoder: str, vectors: np.ndarray, present: np.ndarray,
                    fingerprint: str, extra: dict[str, str] | None = None) -> None:  # fmt: skip
    """Write one embedding file atomically. ``vectors`` is (N+1, D) with row 0 for padding."""
    vectors = np.array(vectors, dtype=np.float32, order="C", copy=True)  # never zero the caller's rows
    present = np.asarray(present, dtype=bool)
    if vectors.ndim != 2 or len(vectors) != len(present):
        raise ValueError(f"vectors {vectors.shape} and present {present.shape} must be (N+1, D) and (N+1,)")
    vectors[~present] = 0.0
    meta = {"modality": modality, "encoder": encoder, "dim": str(vectors.shape[1]), "items": str(len(vectors) - 1),
            "items_with_feature": str(int(present.sum())), "items_fingerprint": fingerprint, **(extra or {})}  # fmt: skip
    tensors = {"embeddings": torch.from_numpy(vectors), "has_feature": torch.from_numpy(present.astype(np.uint8))}
    # One metadata key holding sorted JSON: safetensors writes several keys in a per-process hash order, which made
    # identical embeddings differ byte for byte (and DVC see a change) from one run to the next.
    with atomic_path(dest) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(meta, sort_keys=True)})


def read_metadata(path: Path) -> dict[str, str]:
    """The metadata that ``save_embeddings`` wrote into an embedding file."""
    with safe_open(str(path), framework="pt") as handle:
        raw = handle.metadata() or {}
    return json.loads(raw[META_KEY]) if META_KEY in raw else raw


def read_index(folder: Path) -> dict:
    path = Path(folder) / EMBEDDINGS_DIR / INDEX
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def load_embeddings(folder: Path, modality: str, encoder: str, items: pd.DataFrame) -> FeatureTable:
    """Read one embedding file; refuse a missing file, a stale one (other items) or one with no item covered."""
    path = embedding_file(folder, modality, encoder)
    if not path.exists():
        skipped = read_index(folder).get("skipped", {}).get(modality)
        reason = f" The embeddings stage skipped it: {skipped}." if skipped else ""
        raise MissingArtifactError(f"{path} is missing ({modality} embeddings by {encoder}).{reason} "
                                   f"Make them: {RUN_EMBEDDINGS} with the same features.* settings.")  # fmt: skip
    meta = read_metadata(path)
    with safe_open(str(path), framework="pt") as handle:
        vectors = handle.get_tensor("embeddings").float()
        present = handle.get_tensor("has_feature").bool()
    if len(vectors) != len(items) + 1 or meta.get("items_fingerprint") != items_fingerprint(items):
        raise MissingArtifactError(
            f"{path} was made for another item table ({meta.get('items', '?')} items, this dataset has {len(items)}); "
            f"{RUN_EMBEDDINGS} again."
        )
    if not present.any():
        raise MissingArtifactError(f"{path}: no item has a {modality} feature; check the images / text of the items")
    return FeatureTable(modality, encoder, vectors, present)


class FeatureSet:
    """The embeddings a retriever may use for one prepared dataset under the current features.* settings."""

    def __init__(self, prepared: Path, cfg: FeaturesConfig, items: pd.DataFrame):
        self.prepared = Path(prepared)
        self.cfg = cfg
        self.items = items

    def available(self) -> list[str]:
        """Modalities whose file for the configured encoder exists and covers at least one item."""
        found = []
        for modality in MODALITIES:
            path = embedding_file(self.prepared, modality, encoder_name(modality, self.cfg))
            if path.exists() and int(read_metadata(path).get("items_with_feature", "0")) > 0:
                found.append(modality)
        return found

    def encoder(self, modality: str) -> str:
        return encoder_name(modality, self.cfg)

    def get(self, modality: str) -> FeatureTable:
        return load_embeddings(self.prepared, modality, self.encoder(modality), self.items)
