"""The retriever contract: ``from_data``, ``fit(train, val) -> history``, ``score(histories, users) -> (B, N+1)``,
``save``, ``load`` (the last two from SavedModel: safetensors + JSON).

``users`` (None, or one id per history: a training user's id 1..U, or 0 = no user) lets models with a learned vector
per user (VBPR, MMGCN, BM3) use it, and they reject an id outside 0..U; sequential models read only the history and
ignore it. A history without a user (a served request without ``user_id``, a reranker-training prefix) must still be
scored."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from recsys_core.batching import epoch_batches, training_windows
from recsys_core.data.store import Sequences
from recsys_core.evaluation import evaluate_full_ranking, split_inputs
from recsys_core.features.store import FeatureSet
from recsys_core.model_base import SavedModel
from recsys_core.training import EpochCallback, History, LoopSettings, TrainTask, fit


@dataclass
class RetrievalData:
    """What a retriever is built from: the split, and the item embeddings (for the multimodal retrievers)."""

    seqs: Sequences
    features: FeatureSet | None = None


class Retriever(SavedModel):
    """Scores the whole item pool for a batch of users given their item histories."""

    @classmethod
    def from_data(cls, n_items: int, hparams: dict[str, Any], device: torch.device | str,
                  data: RetrievalData) -> Retriever:  # fmt: skip
        """A new model for this data. Models whose shape depends on the data (users, graph, feature sizes)
        override this to add those to their hparams and fill their buffers."""
        return cls(n_items, hparams, device)

    @abstractmethod
    def fit(self, seqs: Sequences, settings: LoopSettings, callbacks: Sequence[EpochCallback] = ()) -> History: ...

    @abstractmethod
    def score(self, histories: list[np.ndarray], users: np.ndarray | None = None) -> torch.Tensor:
        """(B, N+1) scores; column 0 is padding. Callers mask the history. ``users``: see the module docstring."""

    def validation_metrics(self, val_inputs: tuple[list[np.ndarray], np.ndarray, np.ndarray], ks: Sequence[int],
                           batch_size: int) -> dict[str, float]:  # fmt: skip
        """Full-ranking metrics on the validation users: what every retriever's training monitors."""
        histories, targets, users = val_inputs
        return evaluate_full_ranking(self.score, histories, targets, users, ks, batch_size, desc="validate").metrics


class SequentialRetriever(Retriever):
    """Retrievers that read the last ``max_len`` items of a history, trained on sliding windows of train sequences
    with a next-item loss at every position (LRURec; SASRec-like models)."""

    @abstractmethod
    def loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Mean next-item loss over the batch's real (non-padding) targets."""

    @abstractmethod
    def score_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded item ids -> (B, N+1) scores for the next item."""

    def parameter_groups(self) -> list[dict]:
        return [{"params": list(self.model.parameters())}]

    def score(self, histories: list[np.ndarray], users: np.ndarray | None = None) -> torch.Tensor:
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            longest = max((len(h) for h in histories), default=1)
            scores = self.score_tokens(self.left_pad(histories, max(1, min(longest, self.hparams["max_len"]))))
        self.model.train(was_training)
        return scores

    def fit(self, seqs: Sequences, settings: LoopSettings, callbacks: Sequence[EpochCallback] = (),
            eval_batch_size: int = 256, ks: Sequence[int] = (5, 10, 20)) -> History:  # fmt: skip
        return fit(self.training_task(seqs, settings, eval_batch_size, ks), settings, self.device, callbacks)

    def training_task(self, seqs: Sequences, settings: LoopSettings, eval_batch_size: int = 256,
                      ks: Sequence[int] = (5, 10, 20)) -> TrainTask:  # fmt: skip
        """What the shared loop trains: windows of the train sequences in ``settings.batch_order``, the loss,
        validation."""
        windows = training_windows(seqs.train[1:], self.hparams["max_len"], self.hparams["sliding_window"])
        if not windows:
            raise ValueError("no training sequence has two or more items")
        val_inputs = split_inputs(seqs, "val")
        lengths = np.array([len(w) for w in windows])
        # Batches of similar length hold from a few to hundreds of targets: their mean loss, rescaled by the batch's
        # share of the epoch's targets, gives every target the same weight, as random batches do on average.
        mean_targets = (lengths - 1).sum() / -(-len(lengths) // settings.batch_size)
        retriever = self

        class Task:
            model = retriever.model

            def optimizer(self, lr: float) -> torch.optim.Optimizer:
                return torch.optim.AdamW(retriever.parameter_groups(), lr=lr, eps=1e-9)

            def batches(self, epoch: int, rng: np.random.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
                for chunk_ids in epoch_batches(lengths, settings.batch_size, rng, settings.batch_order):
                    chunk = [windows[i] for i in chunk_ids]
                    length = max(len(w) for w in chunk) - 1
                    tokens = retriever.left_pad([w[:-1] for w in chunk], length)
                    labels = retriever.left_pad([w[1:] for w in chunk], length)
                    yield tokens, labels

            def loss(self, batch):
                if settings.batch_order == "random":  # as published: the mean over the batch's targets
                    return retriever.loss(batch)
                return retriever.loss(batch) * ((batch[1] > 0).sum() / mean_targets)

            def validate(self) -> dict[str, float]:
                return retriever.validation_metrics(val_inputs, ks, eval_batch_size)

        return Task()
