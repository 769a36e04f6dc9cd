"""The retriever contract: ``fit(train, val) -> history``, ``score(histories) -> (B, N+1)``, ``save``, ``load``.

Weights are stored as safetensors and the constructor arguments as JSON; nothing is unpickled on load.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from recsys_core.config import Config
from recsys_core.data.store import Sequences
from recsys_core.errors import MissingArtifactError
from recsys_core.evaluation import evaluate_full_ranking, split_inputs
from recsys_core.io import atomic_path
from recsys_core.training import EpochCallback, History, LoopSettings, fit

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


class Retriever(ABC):
    """Scores the whole item pool for a batch of users given their item histories."""

    method: ClassVar[str]

    def __init__(self, n_items: int, hparams: dict[str, Any], device: torch.device | str = "cpu"):
        self.n_items = n_items
        self.hparams = dict(hparams)
        self.device = torch.device(device)
        self.model = self.build_model().to(self.device)

    @classmethod
    @abstractmethod
    def hyperparameters(cls, cfg: Config, dataset_code: str) -> dict[str, Any]:
        """This method's settings from the typed config (what save() writes and load() rebuilds from)."""

    @abstractmethod
    def build_model(self) -> nn.Module: ...

    @abstractmethod
    def fit(self, seqs: Sequences, settings: LoopSettings, callbacks: Sequence[EpochCallback] = ()) -> History: ...

    @abstractmethod
    def score(self, histories: list[np.ndarray]) -> torch.Tensor:
        """(B, N+1) scores; column 0 is padding. Callers mask the history."""

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        with atomic_path(folder / WEIGHTS) as tmp:
            save_file(state, str(tmp))
        meta = {"method": self.method, "n_items": self.n_items, "hparams": self.hparams}
        with atomic_path(folder / CONFIG) as tmp:
            tmp.write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path, device: torch.device | str = "cpu") -> Retriever:
        folder = Path(folder)
        for name in (WEIGHTS, CONFIG):
            if not (folder / name).exists():
                raise MissingArtifactError(f"{folder / name} is missing; train the retriever first")
        meta = json.loads((folder / CONFIG).read_text())
        if meta["method"] != cls.method:
            raise MissingArtifactError(f"{folder} holds a {meta['method']!r} model, not {cls.method!r}")
        retriever = cls(meta["n_items"], meta["hparams"], device)
        retriever.model.load_state_dict(load_file(str(folder / WEIGHTS), device=str(retriever.device)))
        retriever.model.eval()
        return retriever


class SequentialRetriever(Retriever):
    """Retrievers that read the last ``max_len`` items of a history, trained on sliding windows of train sequences
    with a next-item loss at every position (LRURec; SASRec-like models)."""

    @abstractmethod
    def loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor: ...

    @abstractmethod
    def score_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded item ids -> (B, N+1) scores for the next item."""

    def parameter_groups(self) -> list[dict]:
        return [{"params": list(self.model.parameters())}]

    def left_pad(self, sequences: Sequence[np.ndarray], length: int) -> torch.Tensor:
        out = np.zeros((len(sequences), length), dtype=np.int64)
        for row, seq in enumerate(sequences):
            tail = np.asarray(seq[-length:], dtype=np.int64)
            if len(tail):
                out[row, -len(tail) :] = tail
        return torch.as_tensor(out, device=self.device)

    def score(self, histories: list[np.ndarray]) -> torch.Tensor:
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            longest = max((len(h) for h in histories), default=1)
            scores = self.score_tokens(self.left_pad(histories, max(1, min(longest, self.hparams["max_len"]))))
        self.model.train(was_training)
        return scores

    def fit(self, seqs: Sequences, settings: LoopSettings, callbacks: Sequence[EpochCallback] = (),
            eval_batch_size: int = 256, ks: Sequence[int] = (5, 10, 20)) -> History:  # fmt: skip
        windows = training_windows(seqs.train[1:], self.hparams["max_len"], self.hparams["sliding_window"])
        if not windows:
            raise ValueError("no training sequence has two or more items")
        val_inputs = split_inputs(seqs, "val")
        lengths = np.array([len(w) for w in windows])
        retriever = self

        class Task:
            model = retriever.model

            def optimizer(self, lr: float) -> torch.optim.Optimizer:
                return torch.optim.AdamW(retriever.parameter_groups(), lr=lr, eps=1e-9)

            def batches(self, epoch: int, rng: np.random.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
                for chunk_ids in bucketed_batches(lengths, settings.batch_size, rng):
                    chunk = [windows[i] for i in chunk_ids]
                    length = max(len(w) for w in chunk) - 1
                    tokens = retriever.left_pad([w[:-1] for w in chunk], length)
                    labels = retriever.left_pad([w[1:] for w in chunk], length)
                    yield tokens, labels

            def loss(self, batch):
                return retriever.loss(batch)

            def validate(self) -> dict[str, float]:
                histories, targets, users = val_inputs
                result = evaluate_full_ranking(retriever.score, histories, targets, users, ks, eval_batch_size,
                                               desc="validate")  # fmt: skip
                return result.metrics

        return fit(Task(), settings, self.device, callbacks)


def training_windows(sequences: list[np.ndarray], max_len: int, step_share: float) -> list[np.ndarray]:
    """Sequences of length <= max_len + 1 are kept whole; longer ones are cut into windows of max_len + 1 items,
    the last window ending at the last item and earlier ones stepping back by ``step_share·max_len``."""
    step = max(1, int(step_share * max_len))
    windows = []
    for seq in sequences:
        if len(seq) < 2:
            continue
        if len(seq) <= max_len + step:
            windows.append(seq[-(max_len + 1) :])
        else:
            for end in range(len(seq), max_len, -step):
                windows.append(seq[end - max_len - 1 : end])
    return windows


def bucketed_batches(
    lengths: np.ndarray, batch_size: int, rng: np.random.Generator, pool: int = 50
) -> list[np.ndarray]:
    """Shuffled batches of similar-length sequences, so little compute goes to padding.

    The data is shuffled, cut into pools of ``pool`` batches, each pool sorted by length and cut into batches, and the
    batches shuffled: every sequence is seen once per epoch, in an order fixed by ``rng``.
    """
    order = rng.permutation(len(lengths))
    batches = []
    for start in range(0, len(order), pool * batch_size):
        chunk = order[start : start + pool * batch_size]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]
