"""The reranker contract: ``fit(train, val) -> history``, ``score(histories, candidates) -> (B, K)``, ``save``,
``load`` (the last two from SavedModel: safetensors + JSON)."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from recsys_core.data.store import Sequences
from recsys_core.features.store import FeatureSet
from recsys_core.model_base import SavedModel
from recsys_core.rerank.data import CandidateSet, ExampleSource
from recsys_core.training import EpochCallback, History, LoopSettings


class Reranker(SavedModel):
    """Orders a short candidate list for each user given the user's history."""

    @classmethod
    def from_data(cls, n_items: int, hparams: dict[str, Any], device: torch.device | str,
                  items: pd.DataFrame, features: FeatureSet | None = None) -> Reranker:  # fmt: skip
        """A new model for this dataset; rerankers that read item texts (the LLM ones) take them from ``items``,
        those that read item embeddings (VIP5) from ``features``."""
        return cls(n_items, hparams, device)

    @abstractmethod
    def fit(self, seqs: Sequences, val: CandidateSet, settings: LoopSettings,
            callbacks: Sequence[EpochCallback] = (), ks: Sequence[int] = (5, 10, 20),
            examples: ExampleSource | None = None) -> History:  # fmt: skip
        """Learn from the train sequences only; ``val`` (validation candidates) drives early stopping.
        Rerankers trained on candidate lists draw them from ``examples`` (default: the true next item + random
        negatives, ``GroundTruthExamples``; retrieval mode passes the champion retriever's lists)."""

    @abstractmethod
    def score(self, histories: list[np.ndarray], candidates: np.ndarray) -> torch.Tensor:
        """(B, K) scores for the (B, K) candidate ids (0 = empty slot, scored -inf by the caller)."""


def score_in_batches(model: torch.nn.Module, candidates: np.ndarray, batch_size: int,
                     score_rows: Callable[[list[int], list[np.ndarray]], torch.Tensor]) -> torch.Tensor:  # fmt: skip
    """(B, K) scores with -inf in empty slots (id 0), for rerankers that score whole lists per forward pass: the rows
    holding a candidate go in batches of ``batch_size`` to ``score_rows(rows, slots)`` (``slots[i]``: the indices of
    row i's real candidates), which returns one score per real candidate, in slot order, padded to a common width.
    The model runs in inference mode without gradients and gets its train / eval mode back."""
    cands = np.asarray(candidates, dtype=np.int64)
    out = torch.full(cands.shape, -torch.inf)
    rows = [b for b in range(len(cands)) if (cands[b] != 0).any()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(rows), max(1, batch_size)):
                chunk = rows[start : start + max(1, batch_size)]
                slots = [np.flatnonzero(cands[b]) for b in chunk]
                scores = score_rows(chunk, slots).float().cpu()
                for i, (b, s) in enumerate(zip(chunk, slots, strict=True)):
                    out[b, torch.as_tensor(s)] = scores[i, : len(s)]
    finally:
        model.train(was_training)
    return out
