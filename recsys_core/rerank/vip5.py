"""VIP5 as a stage-2 reranker: a frozen T5 reads a direct-recommendation prompt (recent history, candidates, each item
id followed by visual tokens from its CLIP feature) and every candidate is scored by the likelihood of its id text.

Network and prompts: ``recsys_core.rerank.vip5_model``. Scoring encodes each prompt once and runs one teacher-forced decoder pass over the B*K targets
(``item_123 </s>``; each prompt's K targets packed into one sequence, see ``VIP5Net.target_logprobs``); a
candidate's score is the sum of its target tokens' log-probs (ranking by beam search would leave most candidates
tied); empty slots (id 0) are -inf. Training minimises the cross-entropy of the true item's id text (teacher forcing,
as VIP5 trains) through the shared loop; only the adapters, the visual MLP, the whole-word and category embeddings
(and the layer norms with ``vip5_unfreeze_layer_norms``) learn. Each epoch draws fresh lists from ``examples``.

The saved folder holds no backbone: ``model.safetensors`` (the trained weights only), ``features.safetensors`` (the
item feature table, so a loaded model scores without the dataset), ``tokenizer/`` and ``config.json`` (method,
n_items, hparams with the backbone id or folder, re-loaded by ``load``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from recsys_core.config import Config
from recsys_core.data.store import Sequences
from recsys_core.errors import ConfigError, MissingArtifactError
from recsys_core.features.store import FeatureSet
from recsys_core.io import atomic_path
from recsys_core.model_base import CONFIG, WEIGHTS
from recsys_core.rerank.base import DEFAULT_EXAMPLES_PER_USER, Reranker, fit_on_lists, score_in_batches
from recsys_core.rerank.data import CandidateSet, ExampleSource
from recsys_core.rerank.trainable import TrainableWeights
from recsys_core.rerank.vip5_model import PromptBuilder, VIP5Net, collate, load_t5, resolve_t5
from recsys_core.training import EpochCallback, History, LoopSettings

log = logging.getLogger(__name__)

FEATURES_FILE = "features.safetensors"
TOKENIZER_DIR = "tokenizer"


class VIP5Reranker(Reranker):
    method = "vip5"
    reads_item_features = True  # the item embeddings behind its visual tokens

    def __init__(self, n_items: int, hparams: dict[str, Any], device: torch.device | str = "cpu",
                 features: torch.Tensor | None = None, tokenizer_dir: Path | None = None):  # fmt: skip
        """``features``: (N+1, D) item vectors behind the visual tokens (row 0 padding), also settable with
        :meth:`set_features`; ``tokenizer_dir``: a saved tokenizer to use instead of the backbone's (``load``)."""
        self.n_items, self.hparams, self.device = n_items, dict(hparams), torch.device(device)
        if features is not None:
            self.hparams["feature_dim"] = int(features.shape[1])
        if not self.hparams.get("feature_dim"):
            raise MissingArtifactError(_NEEDS_FEATURES)
        self._tokenizer_dir = tokenizer_dir
        self._has_features = False
        self.model = self.build_model()
        if features is not None:
            self.set_features(features)

    @classmethod
    def hyperparameters(cls, cfg: Config, dataset_code: str) -> dict:
        v = cfg.vip5
        return {
            "model": resolve_t5(v.vip5_model),
            "feature": v.vip5_feature,
            "feature_dim": None,  # from the feature table (from_data)
            "encoder": None,
            "image_feature_size_ratio": v.image_feature_size_ratio,
            "reduction_factor": v.vip5_reduction_factor,
            "unfreeze_layer_norms": v.vip5_unfreeze_layer_norms,
            "max_history": v.vip5_max_history,
            "max_length": v.vip5_max_length,
            "examples_per_user": DEFAULT_EXAMPLES_PER_USER,
            "score_batch_size": cfg.rerank.rerank_batch_size,
        }

    def build_model(self) -> nn.Module:
        h = self.hparams
        backbone, tokenizer = load_t5(h["model"], self.device)
        if self._tokenizer_dir is not None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(self._tokenizer_dir))
        self.tokenizer = tokenizer
        n_visual, max_length = int(h["image_feature_size_ratio"]), int(h["max_length"])
        self.prompts = PromptBuilder(tokenizer, self.n_items, n_visual, int(h["max_history"]), max_length)
        net = VIP5Net(backbone, int(h["feature_dim"]), self.n_items, n_visual, int(h["reduction_factor"]),
                      max_length + 1, bool(h["unfreeze_layer_norms"])).to(self.device).eval()  # fmt: skip
        self.trainable = TrainableWeights(net)
        return net

    def set_features(self, vectors: torch.Tensor) -> None:
        """The (N+1, D) item vectors behind the visual tokens; rows of items without a feature must be zeros."""
        vectors = torch.as_tensor(vectors, dtype=torch.float32)
        expected = (self.n_items + 1, int(self.hparams["feature_dim"]))
        if tuple(vectors.shape) != expected:
            raise ConfigError(f"VIP5 item features of shape {tuple(vectors.shape)}; this model needs {expected} "
                              f"(N+1 rows, row 0 padding): {_NEEDS_FEATURES}")  # fmt: skip
        self.model.features.copy_(vectors.to(self.device))
        self._has_features = True

    # ---- prompts and scores ----

    def _batch(self, histories: Sequence[np.ndarray], candidates: Sequence[np.ndarray]):
        prompts = [self.prompts.build(h, c) for h, c in zip(histories, candidates, strict=True)]
        return collate(prompts, self.prompts.n_visual, self.device)

    def _targets(self, lists: Sequence[Sequence[int]]) -> torch.Tensor:
        """(B, K, T) target ids ``item_<id></s>`` of each list's items, 0-padded."""
        rows = [[self.prompts.target(int(i)) for i in items] for items in lists]
        width, length = max(map(len, rows)), max(len(t) for r in rows for t in r)
        out = np.zeros((len(rows), width, length), np.int64)
        for b, row in enumerate(rows):
            for k, t in enumerate(row):
                out[b, k, : len(t)] = t
        return torch.as_tensor(out, device=self.device)

    def score(self, histories: list[np.ndarray], candidates: np.ndarray) -> torch.Tensor:
        if not self._has_features:
            raise MissingArtifactError(_NEEDS_FEATURES)
        cands = np.asarray(candidates, dtype=np.int64)

        def likelihoods(rows: list[int], slots: list[np.ndarray]) -> torch.Tensor:
            batch = self._batch([histories[b] for b in rows], [cands[b] for b in rows])
            targets = self._targets([cands[b][s] for b, s in zip(rows, slots, strict=True)])
            return self.model.target_logprobs(self.model.encode(batch), batch.attention_mask, targets).sum(-1)

        return score_in_batches(self.model, cands, int(self.hparams.get("score_batch_size", 16)), likelihoods)

    # ---- training ----

    def fit(self, seqs: Sequences, val: CandidateSet, settings: LoopSettings,
            callbacks: Sequence[EpochCallback] = (), ks: Sequence[int] = (5, 10, 20),
            examples: ExampleSource | None = None) -> History:  # fmt: skip
        """Adapter training on lists as wide as the validation lists, drawn from ``examples`` each epoch."""
        if not self._has_features:
            raise MissingArtifactError(_NEEDS_FEATURES)
        net = self.model

        def make_batch(histories, lists, target_index) -> tuple:
            true = lists[np.arange(len(lists)), target_index]
            return self._batch(histories, lists), self._targets(true[:, None])

        def loss(batch: tuple) -> torch.Tensor:  # token cross-entropy of the true item's id text, per example
            inputs, targets = batch  # targets (B, 1, T)
            logprobs = net.target_logprobs(net.encode(inputs), inputs.attention_mask, targets)
            return -(logprobs.sum(-1) / (targets != 0).sum(-1)).mean()

        return fit_on_lists(self, self.trainable, seqs, val, settings, callbacks, ks, examples, make_batch, loss)

    # ---- saving ----

    @classmethod
    def from_data(cls, n_items: int, hparams: dict[str, Any], device: torch.device | str,
                  items: pd.DataFrame, features: FeatureSet | None = None) -> VIP5Reranker:  # fmt: skip
        if features is None:
            raise MissingArtifactError(_NEEDS_FEATURES)
        table = features.get(hparams["feature"])
        if len(table.vectors) != n_items + 1:
            raise MissingArtifactError(f"the {table.modality} embeddings hold {len(table.vectors) - 1} items, the "
                                       f"dataset {n_items}; run the embeddings stage again")  # fmt: skip
        missing = n_items - int(table.present[1:].sum())
        if missing:
            log.warning("%d of %d items have no %s feature: their visual tokens come from a zero vector", missing,
                        n_items, table.modality)  # fmt: skip
        vectors = table.vectors.float() * table.present[:, None]
        return cls(n_items, {**hparams, "encoder": table.encoder}, device, features=vectors)

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.named_parameters() if v.requires_grad}
        with atomic_path(folder / WEIGHTS) as tmp:
            save_file(state, str(tmp))
        with atomic_path(folder / FEATURES_FILE) as tmp:
            save_file({"vectors": self.model.features.detach().cpu().contiguous()}, str(tmp))
        self.tokenizer.save_pretrained(str(folder / TOKENIZER_DIR))
        meta = {"method": self.method, "n_items": self.n_items, "hparams": self.hparams}
        with atomic_path(folder / CONFIG) as tmp:
            tmp.write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path, device: torch.device | str = "cpu") -> VIP5Reranker:
        from safetensors.torch import load_file

        folder = Path(folder)
        for name in (CONFIG, WEIGHTS, FEATURES_FILE, TOKENIZER_DIR):
            if not (folder / name).exists():
                raise MissingArtifactError(f"{folder / name} is missing; train the vip5 reranker first")
        meta = json.loads((folder / CONFIG).read_text())
        if meta["method"] != cls.method:
            raise MissingArtifactError(f"{folder} holds a {meta['method']!r} model, not {cls.method!r}")
        features = load_file(str(folder / FEATURES_FILE))["vectors"]
        instance = cls(meta["n_items"], meta["hparams"], device, features=features,
                       tokenizer_dir=folder / TOKENIZER_DIR)  # fmt: skip
        state = load_file(str(folder / WEIGHTS), device=str(instance.device))
        expected = {k for k, v in instance.model.named_parameters() if v.requires_grad}
        if set(state) != expected:
            raise MissingArtifactError(f"{folder / WEIGHTS} does not fit the backbone {meta['hparams']['model']!r}: "
                                       f"{sorted(set(state) ^ expected)[:3]} differ")  # fmt: skip
        with torch.no_grad():
            params = dict(instance.model.named_parameters())
            for name, value in state.items():
                params[name].copy_(value)
        instance.model.eval()
        return instance


_NEEDS_FEATURES = (
    "VIP5 needs item embeddings for its visual tokens: run the embeddings stage (`recsys embeddings`) and pass the "
    "FeatureSet to from_data; for datasets without images (ml-100k) use the text embeddings: --vip5_feature text"
)
