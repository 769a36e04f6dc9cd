"""EASE: Embarrassingly Shallow Autoencoders for Sparse Data (Steck, WWW 2019).

An item-item weight matrix B learned in closed form from the binary user-item matrix X of the train split:
P = (XᵀX + λI)⁻¹, B = I − P·diag(1/diag(P)), so that diag(B) = 0 (an item cannot predict itself). A history's score
of item j is Σ_i w_i B_ij over its items i. As published every history item weighs 1 (``ease_history_decay`` 1.0);
a decay d < 1 weighs the item k steps before the last d^k, a sequential variant for next-item data.

It is not trained by the shared loop: there is no gradient step, one solve gives B. ``fit`` still returns the loop's
History (one "epoch": the solve and its validation), so the training stage logs, registers and plots it like the
others. It reads no user id, so a history without a user (a served request, a reranker-training prefix) scores too.
Its whole-history collaborative signal is what the sequential retriever lacks: as a feature of the ``ltr`` reranker
(``ltr.ltr_models: [ease]``) it is the largest two-stage gain measured on ML-1M (docs/benchmarks.md).

Memory: B is (N+1)² float32 (ML-1M, 3,416 items: 47 MB on disk) and the solve holds about three (N+1)² float64
matrices, so catalogues above ``MAX_ITEMS`` are refused with the memory they would need.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from recsys_core.config import Config
from recsys_core.data.store import Sequences
from recsys_core.errors import ConfigError
from recsys_core.evaluation import split_inputs
from recsys_core.metrics import monitored_value
from recsys_core.retrieval.base import Retriever
from recsys_core.training import EpochCallback, History, LoopSettings

log = logging.getLogger(__name__)

MAX_ITEMS = 40_000  # 3 x 40,001² float64 = 38 GB for the solve


class EASEWeights(nn.Module):
    """B as a buffer: saved and loaded as safetensors like every model's weights."""

    def __init__(self, n_items: int):
        super().__init__()
        self.register_buffer("weights", torch.zeros(n_items + 1, n_items + 1))


def interaction_matrix(train: Sequence[np.ndarray], n_items: int) -> sp.csr_matrix:
    """Binary users x (N+1) matrix of the train sequences (a repeated item counts once; column 0 stays empty)."""
    rows = np.concatenate([np.full(len(h), u, dtype=np.int64) for u, h in enumerate(train)] or [np.zeros(0, int)])
    cols = np.concatenate([np.asarray(h, dtype=np.int64) for h in train] or [np.zeros(0, int)])
    X = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(train), n_items + 1))
    X.data[:] = 1.0  # duplicates were summed
    return X


def solve(X: sp.csr_matrix, reg: float) -> np.ndarray:
    """B = I − P·diag(1/diag(P)), P = (XᵀX + λI)⁻¹, with the padding row and column zero."""
    gram = (X.T @ X).toarray()
    gram[np.diag_indices_from(gram)] += reg
    P = np.linalg.inv(gram)
    B = P / (-np.diag(P))[None, :]
    B[np.diag_indices_from(B)] = 0.0
    B[0, :] = 0.0
    B[:, 0] = 0.0
    return B.astype(np.float32)


class EASE(Retriever):
    method = "ease"

    @classmethod
    def hyperparameters(cls, cfg: Config, dataset_code: str) -> dict[str, Any]:
        e = cfg.ease
        return {"reg": e.ease_lambda, "history_decay": e.ease_history_decay}

    def build_model(self) -> nn.Module:
        if self.n_items > MAX_ITEMS:
            gb = 3 * (self.n_items + 1) ** 2 * 8 / 1e9
            raise ConfigError(f"ease: {self.n_items:,} items is more than {MAX_ITEMS:,}; its solve would hold about "
                              f"{gb:.0f} GB. Use another retriever (retrieval.retrieval_method) for this catalogue")  # fmt: skip
        return EASEWeights(self.n_items)

    def fit(self, seqs: Sequences, settings: LoopSettings, callbacks: Sequence[EpochCallback] = (),
            eval_batch_size: int = 256, ks: Sequence[int] = (5, 10, 20)) -> History:  # fmt: skip
        """One closed-form solve on the train split (validation targets unseen), then validation."""
        began, cpu = time.perf_counter(), time.process_time()
        B = solve(interaction_matrix(seqs.train, self.n_items), float(self.hparams["reg"]))
        self.model.weights.copy_(torch.from_numpy(B))
        solved, solved_cpu = time.perf_counter() - began, time.process_time() - cpu
        val = self.validation_metrics(split_inputs(seqs, "val"), ks, eval_batch_size)
        record = {"epoch": 1.0, "epoch_seconds": solved, "epoch_cpu_seconds": solved_cpu,
                  "eval_seconds": time.perf_counter() - began - solved, **{f"val_{k}": v for k, v in val.items()}}  # fmt: skip
        score = monitored_value(val, settings.monitor)  # as the training loop reads it
        log.info("ease: solved %d items in %.1f s, val %s %.4f", self.n_items, solved, settings.monitor, score)
        history = History(epochs=[record], best_epoch=1, best_score=score)
        for cb in callbacks:
            cb(1, record)
        return history

    def history_weights(self, histories: list[np.ndarray]) -> torch.Tensor:
        """(B, N+1): each history's items weighted 1, or decay^k for the item k steps before its last."""
        decay = float(self.hparams["history_decay"])
        out = np.zeros((len(histories), self.n_items + 1), dtype=np.float32)
        for row, history in enumerate(histories):
            items = np.asarray(history, dtype=np.int64)
            if len(items):
                np.add.at(out[row], items, decay ** np.arange(len(items) - 1, -1, -1, dtype=np.float64))
        return torch.from_numpy(out).to(self.device)

    def score(self, histories: list[np.ndarray], users: np.ndarray | None = None) -> torch.Tensor:
        with torch.no_grad():
            return self.history_weights(histories) @ self.model.weights
