"""BERT4Rec (Sun et al., CIKM 2019) as a stage-2 reranker.

A bidirectional Transformer over item sequences, trained with the cloze task: each epoch, items of every training
window are replaced by a dedicated ``[MASK]`` id (N+1; 0 is padding) with probability ``mask_prob`` (at least one per
window), and the model predicts them over all items; as in the paper, some windows mask only their last item
(``last_item_prob``), like the [MASK] appended at inference. To score candidates it reads the logits at a ``[MASK]``
appended after the history. Output layer: dense + GELU + LayerNorm, then tied item embeddings plus a bias.

``objective`` (``bert4rec.bert_objective``) chooses what it learns from:

- ``cloze`` (default, the paper): the cloze task alone; candidate-list ``examples`` are never read.
- ``list``: the reranking task itself. Each training list (a train prefix, K candidates among which its true next item:
  the champion retriever's top K in retrieval mode, the true item + random negatives in ground-truth mode) is scored
  by the logits at a [MASK] appended after the prefix, gathered at the K candidate ids (empty slots, id 0, at -inf),
  and the loss is the softmax cross-entropy with the true item's slot (:func:`list_loss`). So the model meets the
  retriever's hard negatives, which the cloze task's softmax over all items hardly singles out.
- ``cloze_list``: both in one loop, cloze loss + ``list_weight`` x list loss at each step. An epoch is one pass over
  the cloze windows and one over the epoch's lists, spread evenly over its steps.

Cloze batches (``bert4rec.bert_batch_order``): ``random`` (the default, as the published loader) batches windows at
random; ``length`` batches windows of similar length, so little compute goes to padding (half the time per epoch),
but the model learns less (docs/benchmarks.md). Either way the loss is the batch's mean over its masked items.

The lists are drawn each epoch like the other list-trained rerankers' (``ListTrainingTask``): as wide as the validation
lists, ``examples_per_user`` (``bert4rec.bert_examples_per_user``) prefixes per user, the most recent (default 1: its
last train item; None: every prefix).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recsys_core.batching import epoch_batches, training_windows
from recsys_core.config import Config
from recsys_core.data.store import Sequences
from recsys_core.rerank.base import DEFAULT_EXAMPLES_PER_USER, Reranker
from recsys_core.rerank.data import CandidateSet, ExampleSource, GroundTruthExamples, TrainingExamples
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


OBJECTIVES = ("cloze", "list", "cloze_list")


def list_loss(logits: torch.Tensor, candidates: torch.Tensor, target_index: torch.Tensor) -> torch.Tensor:
    """Mean softmax cross-entropy over candidate lists.

    ``logits`` (B, N+1): the scores over all ids at the [MASK] after each prefix; ``candidates`` (B, K) item ids,
    0 = empty slot (scored -inf, so it takes no probability); ``target_index`` (B,) the true item's slot."""
    scores = logits.float().gather(1, candidates).masked_fill(candidates == 0, -torch.inf)
    return F.cross_entropy(scores, target_index)


def spread(n: int, steps: int) -> dict[int, int]:
    """Where ``n`` (<= ``steps``) batches go among ``steps`` steps, evenly: step -> batch index."""
    return {int(step): i for i, step in enumerate(np.arange(n) * steps // max(n, 1))}


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
            "objective": b.bert_objective,
            "list_weight": b.bert_list_weight,
            "batch_order": b.bert_batch_order,
            "examples_per_user": b.bert_examples_per_user,  # training lists per user and epoch (list objectives)
        }

    def build_model(self) -> nn.Module:
        h = self.hparams
        return BERT4RecModel(self.n_items, h["hidden"], h["blocks"], h["heads"], h["dropout"], h["max_len"])

    def with_mask(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        """(B, L) model input: each history's last max_len - 1 items, left-padded, then a [MASK]."""
        keep = self.hparams["max_len"] - 1
        longest = max(1, min(keep, max((len(h) for h in histories), default=1)))
        tokens = self.left_pad(histories, longest)
        return torch.cat([tokens, torch.full_like(tokens[:, :1], self.model.mask_id)], dim=1)

    def full_scores(self, histories: list[np.ndarray]) -> torch.Tensor:
        """(B, N+1) scores at a [MASK] appended after each history (its last max_len - 1 items)."""
        tokens = self.with_mask(histories)
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            scores = self.model.logits(self.model(tokens)[:, -1]).float()
        self.model.train(was_training)
        return scores

    def score(self, histories: list[np.ndarray], candidates: np.ndarray) -> torch.Tensor:
        full = self.full_scores(histories)
        return full.gather(1, torch.as_tensor(candidates, device=full.device, dtype=torch.long))

    def list_inputs(self, histories: Sequence[np.ndarray], candidates: np.ndarray,
                    target_index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
        """A list batch: the prefixes with a [MASK] appended (as scored), the (B, K) candidates, the true slots."""
        as_long = functools.partial(torch.as_tensor, dtype=torch.long, device=self.device)
        return self.with_mask(histories), as_long(np.asarray(candidates)), as_long(np.asarray(target_index))

    def list_objective(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The list loss of a :meth:`list_inputs` batch, from the logits at each prefix's appended [MASK]."""
        tokens, candidates, target_index = batch
        return list_loss(self.model.logits(self.model(tokens)[:, -1]), candidates, target_index)

    def fit(self, seqs: Sequences, val: CandidateSet, settings: LoopSettings,
            callbacks: Sequence[EpochCallback] = (), ks: Sequence[int] = (5, 10, 20),
            examples: ExampleSource | None = None) -> History:  # fmt: skip
        """Train with ``objective``: cloze over whole train windows (``examples`` unused), the list loss over the
        lists drawn from ``examples`` (default: the true next item + random negatives), or both."""
        objective = self.hparams.get("objective", "cloze")  # models saved before the list objective: cloze
        if objective not in OBJECTIVES:
            raise ValueError(f"bert4rec objective {objective!r} is not one of {OBJECTIVES}")
        use_cloze, use_lists = objective != "list", objective != "cloze"
        weight = float(self.hparams.get("list_weight", 1.0)) if use_cloze else 1.0
        batch_order = self.hparams.get("batch_order", "length")  # models saved before the setting: length batches
        max_len = self.hparams["max_len"]
        windows, lengths = [], np.zeros(0, dtype=np.int64)
        if use_cloze:
            windows = [w for w in training_windows(seqs.train[1:], max_len - 1, 1.0) if len(w) >= 2]
            if not windows:
                raise ValueError("no training sequence has two or more items")
            lengths = np.array([len(w) for w in windows])
        source = None
        if use_lists:
            source = examples if examples is not None else GroundTruthExamples(seqs, self.n_items)
        width = int(val.candidates.shape[1])
        per_user = self.hparams.get("examples_per_user", DEFAULT_EXAMPLES_PER_USER)
        reranker, model = self, self.model
        decay = [p for n, p in model.named_parameters() if not ("bias" in n or "norm" in n)]
        no_decay = [p for n, p in model.named_parameters() if "bias" in n or "norm" in n]

        def cloze_batch(ids: np.ndarray, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
            chunk = [windows[i] for i in ids]
            tokens = reranker.left_pad(chunk, max(len(w) for w in chunk))
            return cloze_mask(tokens, model.mask_id, reranker.hparams["mask_prob"], gen,
                              reranker.hparams.get("last_item_prob", 0.0))  # fmt: skip

        def list_batch(ex: TrainingExamples, ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            return reranker.list_inputs([ex.histories[i] for i in ids], ex.candidates[ids], ex.target_index[ids])

        class Task:
            """Batches are (cloze part, list part) pairs, either part None when the step has none."""

            def __init__(self):
                self.model = model

            def optimizer(self, lr: float) -> torch.optim.Optimizer:
                groups = [{"params": decay, "weight_decay": reranker.hparams["weight_decay"]},
                          {"params": no_decay, "weight_decay": 0.0}]  # fmt: skip
                return torch.optim.AdamW(groups, lr=lr)

            def batches(self, epoch: int, rng: np.random.Generator) -> Iterator[tuple]:
                cloze_ids, gen = [], None
                if use_cloze:
                    # Fresh masks every epoch (dynamic masking), drawn from a generator seeded by (seed, epoch).
                    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
                    cloze_ids = epoch_batches(lengths, settings.batch_size, rng, batch_order)
                if not use_lists:  # cloze: as before the list objective existed, ``examples`` untouched
                    for ids in cloze_ids:
                        yield cloze_batch(ids, gen), None
                    return
                ex = source.draw(width, rng, per_user)
                if not len(ex.users):
                    raise ValueError("no training list: no train sequence has two or more items (or, in retrieval "
                                     "mode, the retriever never retrieved a train prefix's next item)")  # fmt: skip
                order = rng.permutation(len(ex.users))
                # One pass over the windows and one over the lists, in batches of at most batch_size each, spread
                # evenly over the epoch's steps (each step sums the parts it has).
                steps = max(len(cloze_ids), -(-len(order) // settings.batch_size))
                cloze_at = spread(len(cloze_ids), steps)
                for step, part in enumerate(np.array_split(order, steps)):
                    cloze = cloze_batch(cloze_ids[cloze_at[step]], gen) if step in cloze_at else None
                    yield cloze, (list_batch(ex, part) if len(part) else None)

            def loss(self, batch: tuple) -> torch.Tensor:
                cloze, lists = batch
                total = None
                if cloze is not None:
                    inputs, labels = cloze
                    hidden = model(inputs)
                    chosen = labels > 0
                    total = F.cross_entropy(model.logits(hidden[chosen]).float(), labels[chosen])
                if lists is not None:
                    part = reranker.list_objective(lists)
                    total = weight * part if total is None else total + weight * part
                return total

            def validate(self) -> dict[str, float]:
                return evaluate_lists(reranker.score, val, ks, desc="validate").all_users

        return fit(Task(), settings, self.device, callbacks)
