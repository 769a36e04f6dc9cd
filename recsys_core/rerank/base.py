"""The reranker contract: ``fit(train, val) -> history``, ``score(histories, candidates) -> (B, K)``, ``save``,
``load`` (the last two from SavedModel: safetensors + JSON)."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
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
