"""BERT4Rec (Sun et al., CIKM 2019) as a stage-2 reranker.

A bidirectional Transformer over item sequences, trained with the cloze task: each epoch, items of every training
window are replaced by a dedicated ``[MASK]`` id (N+1; 0 is padding) with probability ``mask_prob`` (at least one per
window), and the model predicts them over all items; as in the paper, some windows mask only their last item
(``last_item_prob``), like the [MASK] appended at inference. To score candidates it reads the logits at a ``[MASK]``
appended after the history. Output layer: dense + GELU + LayerNorm, then tied item embeddings plus a bias.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recsys_core.batching import bucketed_batches, training_windows
from recsys_core.config import Config
from recsys_core.data.store import Sequences
from recsys_core.rerank.base import Reranker
from recsys_core.rerank.data import CandidateSet, ExampleSource
from recsys_core.rerank.evaluate import evaluate_lists
from recsys_core.training import EpochCallback, History, LoopSettings, fit


class BERT4RecModel(nn.Module):
    def __init__(self, n_items: int, hidden: int, blocks: int, heads: int, dropout: float, max_len: int):
        super().__init__()
        self.mask_id = n_items + 1
        self.item = nn.Embedding(n_items + 2, hidden, padding_idx=0)  # 0 pad, 1..N items, N+1 [MASK]
        self.position = nn.Embedding(max_len, hidden)
        self.embed_norm = nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(dropout)
        # Pre-LayerNorm blocks (as the widely used PyTorch port of BERT4Rec): stable at lr 1e-3 without warm-up,
        # where post-LN blocks stall at the item-popularity loss on MovieLens.
        layer = nn.TransformerEncoderLayer(hidden, heads, 4 * hidden, dropout, activation="gelu", batch_first=True,
                                           norm_first=True)  # fmt: skip
        self.encoder = nn.TransformerEncoder(layer, blocks, norm=nn.LayerNorm(hidden), enable_nested_tensor=False)
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.LayerNorm(hidden))
        self.out_bias = nn.Parameter(torch.zeros(n_items + 1))
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(module.weight, std=0.02, a=-0.04, b=0.04)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, L), left-padded -> hidden states (B, L, H). Positions count from the right end, so the last
        item (or the appended [MASK]) has the same position however much padding a batch needs."""
        positions = torch.arange(tokens.shape[1] - 1, -1, -1, device=tokens.device)
        x = self.dropout(self.embed_norm(self.item(tokens) + self.position(positions)))
        return self.encoder(x, src_key_padding_mask=tokens == 0)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores over ids 0..N (the [MASK] id is never a prediction)."""
        return self.head(hidden) @ self.item.weight[: self.mask_id].T + self.out_bias


def cloze_mask(tokens: torch.Tensor, mask_id: int, prob: float, generator: torch.Generator,
               last_prob: float = 0.0) -> tuple:  # fmt: skip
    """Replace items with [MASK] with probability ``prob``, at least one per row; labels = original ids there.

    With probability ``last_prob`` a row masks only its last item instead: the paper's samples that match how the
    model is used (a [MASK] after the history).
    """
    real = tokens > 0
    draw = torch.rand(tokens.shape, generator=generator, device="cpu").to(tokens.device) < prob
    only_last = (torch.rand(tokens.shape[0], generator=generator, device="cpu") < last_prob).to(tokens.device)
    draw[only_last] = False
    draw[only_last, -1] = True
    chosen = draw & real
    # Rows where nothing was drawn: mask their last real item (always present in a non-empty window).
    empty = ~chosen.any(dim=1)
    chosen[empty, -1] = real[empty, -1]
    inputs = torch.where(chosen, torch.full_like(tokens, mask_id), tokens)
    labels = torch.where(chosen, tokens, torch.zeros_like(tokens))
    return inputs, labels


class BERT4Rec(Reranker):
    method = "bert4rec"

    @classmethod
    def hyperparameters(cls, cfg: Config, dataset_code: str) -> dict:
        b = cfg.bert4rec
        return {
            "hidden": b.bert_hidden_size,
            "blocks": b.bert_num_blocks,
            "heads": b.bert_num_heads,
            "dropout": b.bert_dropout,
            "mask_prob": b.bert_mask_prob,
            "last_item_prob": b.bert_last_item_prob,
            "max_len": b.bert_max_len or (200 if dataset_code.startswith("ml-") else 50),
            "weight_decay": b.bert_weight_decay,
        }

    def build_model(self) -> nn.Module:
        h = self.hparams
        return BERT4RecModel(self.n_items, h["hidden"], h["blocks"], h["heads"], h["dropout"], h["max_len"])

    def full_scores(self, histories: list[np.ndarray]) -> torch.Tensor:
        """(B, N+1) scores at a [MASK] appended after each history (its last max_len - 1 items)."""
        keep = self.hparams["max_len"] - 1
        longest = max(1, min(keep, max((len(h) for h in histories), default=1)))
        tokens = self.left_pad(histories, longest)
        tokens = torch.cat([tokens, torch.full_like(tokens[:, :1], self.model.mask_id)], dim=1)
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            scores = self.model.logits(self.model(tokens)[:, -1]).float()
        self.model.train(was_training)
        return scores

    def score(self, histories: list[np.ndarray], candidates: np.ndarray) -> torch.Tensor:
        full = self.full_scores(histories)
        return full.gather(1, torch.as_tensor(candidates, device=full.device, dtype=torch.long))

    def fit(self, seqs: Sequences, val: CandidateSet, settings: LoopSettings,
            callbacks: Sequence[EpochCallback] = (), ks: Sequence[int] = (5, 10, 20),
            examples: ExampleSource | None = None) -> History:  # fmt: skip
        """Cloze training over whole train windows (its own objective, so candidate-list ``examples`` are unused)."""
        max_len = self.hparams["max_len"]
        windows = [w for w in training_windows(seqs.train[1:], max_len - 1, 1.0) if len(w) >= 2]
        if not windows:
            raise ValueError("no training sequence has two or more items")
        lengths = np.array([len(w) for w in windows])
        reranker, model = self, self.model
        decay = [p for n, p in model.named_parameters() if not ("bias" in n or "norm" in n)]
        no_decay = [p for n, p in model.named_parameters() if "bias" in n or "norm" in n]

        class Task:
            def __init__(self):
                self.model = model

            def optimizer(self, lr: float) -> torch.optim.Optimizer:
                groups = [{"params": decay, "weight_decay": reranker.hparams["weight_decay"]},
                          {"params": no_decay, "weight_decay": 0.0}]  # fmt: skip
                return torch.optim.AdamW(groups, lr=lr)

            def batches(self, epoch: int, rng: np.random.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
                # Fresh masks every epoch (dynamic masking), drawn from a generator seeded by (seed, epoch).
                gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
                for ids in bucketed_batches(lengths, settings.batch_size, rng):
                    chunk = [windows[i] for i in ids]
                    tokens = reranker.left_pad(chunk, max(len(w) for w in chunk))
                    yield cloze_mask(tokens, model.mask_id, reranker.hparams["mask_prob"], gen,
                                     reranker.hparams.get("last_item_prob", 0.0))  # fmt: skip

            def loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
                inputs, labels = batch
                hidden = model(inputs)
                chosen = labels > 0
                return F.cross_entropy(model.logits(hidden[chosen]).float(), labels[chosen])

            def validate(self) -> dict[str, float]:
                return evaluate_lists(reranker.score, val, ks, desc="validate").all_users

        return fit(Task(), settings, self.device, callbacks)
