"""The reranker contract: ``fit(train, val) -> history``, ``score(histories, candidates) -> (B, K)``, ``save``,
``load`` (the last two from SavedModel: safetensors + JSON)."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

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

    reads_item_features: ClassVar[bool] = False  # embeddings or images: the run logs the `features.*` params

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


# Training prefixes per user and epoch for list-trained rerankers (the most recent ones): an LLM or T5 forward costs far
# more than BERT4Rec's, so by default each user gives its last train item as the epoch's example (as LlamaRec
# trains); hparams["examples_per_user"] = None takes every prefix.
DEFAULT_EXAMPLES_PER_USER = 1


def fit_on_lists(reranker: Reranker, trainable: torch.nn.Module, seqs: Sequences, val: CandidateSet,
                 settings: LoopSettings, callbacks: Sequence[EpochCallback], ks: Sequence[int],
                 examples: ExampleSource | None, make_batch: Callable, loss: Callable) -> History:  # fmt: skip
    """Train a list-trained reranker with the shared loop (:class:`ListTrainingTask`); lists are as wide as the
    validation lists and come from ``examples`` (default: the true item + random negatives)."""
    from recsys_core.rerank.data import GroundTruthExamples
    from recsys_core.training import fit

    examples = examples if examples is not None else GroundTruthExamples(seqs, reranker.n_items)
    per_user = reranker.hparams.get("examples_per_user", DEFAULT_EXAMPLES_PER_USER)
    task = ListTrainingTask(trainable, examples, int(val.candidates.shape[1]), per_user, settings.batch_size,
                            make_batch, loss, reranker.score, val, ks)  # fmt: skip
    return fit(task, settings, reranker.device, callbacks)


class ListTrainingTask:
    """The shared loop's task for rerankers trained on candidate lists (the LLM ones, VIP5): each epoch draws lists
    as wide as the validation lists from ``examples`` with the epoch's generator (fresh negatives or a fresh order
    every epoch), shuffles them into batches that ``make_batch(histories, lists, target_index)`` turns into model
    inputs, minimises ``loss(batch)`` with AdamW over ``trainable``'s parameters, and validates by reranking the
    validation lists with ``score``."""

    def __init__(self, trainable: torch.nn.Module, examples: ExampleSource, width: int, per_user: int | None,
                 batch_size: int, make_batch: Callable, loss: Callable, score: Callable, val: CandidateSet,
                 ks: Sequence[int]):  # fmt: skip
        self.model = trainable
        self.examples, self.width, self.per_user, self.batch_size = examples, width, per_user, batch_size
        self.make_batch, self.loss, self.score, self.val, self.ks = make_batch, loss, score, val, ks

    def optimizer(self, lr: float) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=0.0)

    def batches(self, epoch: int, rng: np.random.Generator) -> Iterator:
        ex = self.examples.draw(self.width, rng, self.per_user)
        if not len(ex.users):
            raise ValueError("no training example: no train sequence has two or more items (or, in retrieval mode, "
                             "the retriever never retrieved a train prefix's next item)")  # fmt: skip
        order = rng.permutation(len(ex.users))
        for start in range(0, len(order), self.batch_size):
            ids = order[start : start + self.batch_size]
            yield self.make_batch([ex.histories[i] for i in ids], ex.candidates[ids], ex.target_index[ids])

    def validate(self) -> dict[str, float]:
        from recsys_core.rerank.evaluate import evaluate_lists

        return evaluate_lists(self.score, self.val, self.ks, desc="validate").all_users
