"""What VBPR, MMGCN and BM3 share: a learned vector per training user, (user, item) training pairs of the train
split with sampled negatives, the bipartite user-item graph, and scores of the form user·item + item bias.

Node layout of the graph: users 1..U are nodes 0..U-1, items 1..N are nodes U..U+N-1 (padding item 0 has no node).

A known user (ids 1..U, as in validation and test, and in a served request that gives its ``user_id``) is scored with
its learned vector, as in the papers; evaluation and serving take that same path. A history without a user (user id 0
or no ids: a served request without ``user_id``, a reranker-training prefix) is scored with the mean of its items'
learned vectors ("fold-in"; for the graph models that is one propagation step from the items, which is how the graph
forms a user); an empty history gets zeros, so only the item biases rank. Reranker-training prefixes stay on the
fold-in path on purpose: a user's vector was trained on the whole train sequence, so on the prefix's own next item.
An id outside 0..U is an error (the model has no vector for it).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from recsys_core.data.store import Sequences
from recsys_core.errors import MissingArtifactError
from recsys_core.evaluation import split_inputs
from recsys_core.features.store import MODALITIES, FeatureTable
from recsys_core.retrieval.base import RetrievalData, Retriever
from recsys_core.training import EpochCallback, History, LoopSettings, fit

RUN_FEATURES = "run the images and embeddings stages (`recsys images`, `recsys embeddings`, or `dvc repro embeddings`)"


def train_pairs(seqs: Sequences) -> tuple[np.ndarray, np.ndarray]:
    """(user ids, item ids) of every train interaction, users 1..U."""
    users = np.repeat(np.arange(len(seqs.train)), [len(s) for s in seqs.train]).astype(np.int64)
    items = np.concatenate(seqs.train).astype(np.int64) if len(users) else np.zeros(0, np.int64)
    return users, items


def bipartite_edges(seqs: Sequences) -> torch.Tensor:
    """(2, 2E) node indices: each train interaction as user->item and item->user (no self loops)."""
    users, items = train_pairs(seqs)
    n_users = len(seqs.train) - 1
    u_node, i_node = users - 1, n_users + items - 1
    return torch.as_tensor(np.stack([np.r_[u_node, i_node], np.r_[i_node, u_node]]), dtype=torch.long)


def normalised_adjacency(edges: torch.Tensor, n_nodes: int, kind: str) -> torch.Tensor:
    """Sparse (n_nodes, n_nodes) adjacency, row i aggregating over the sources j of edges (j -> i).

    ``sym``: D^-1/2 A D^-1/2 (LightGCN, BM3); ``mean``: D^-1 A (each node averages its neighbours); ``add``: A.
    Isolated nodes get zero rows (no division by zero).
    """
    src, dst = edges[0], edges[1]
    degree = torch.bincount(dst, minlength=n_nodes).float()
    if kind == "sym":
        inv_sqrt = degree.clamp(min=1).pow(-0.5)
        values = inv_sqrt[dst] * inv_sqrt[src]
    elif kind == "mean":
        values = 1.0 / degree.clamp(min=1)[dst]
    elif kind == "add":
        values = torch.ones(len(src), device=edges.device)
    else:
        raise ValueError(f"unknown normalisation {kind!r}; expected sym, mean or add")
    indices = torch.stack([dst, src])
    return torch.sparse_coo_tensor(indices, values, (n_nodes, n_nodes), check_invariants=False).coalesce()


class GraphCache:
    """The normalised adjacency of a model's ``edges`` buffer, built on first use and kept per device; rebuilt when
    the buffer is refilled in place (``bind``, ``load_state_dict``). Not a buffer: only the edges are saved."""

    def __init__(self, kind: str, n_nodes: int):
        self.kind, self.n_nodes = kind, n_nodes
        self._built: dict[torch.device, tuple[tuple[int, int], torch.Tensor]] = {}

    def __call__(self, edges: torch.Tensor) -> torch.Tensor:
        stamp = (edges.data_ptr(), edges._version)
        cached = self._built.get(edges.device)
        if cached is None or cached[0] != stamp:
            cached = (stamp, normalised_adjacency(edges, self.n_nodes, self.kind))
            self._built[edges.device] = cached
        return cached[1]


def propagate(adjacency: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """adjacency @ x in float32, outside autocast (CUDA has no bf16 sparse product)."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        return torch.sparse.mm(adjacency, x.float())


class CollaborativeRetriever(Retriever):
    """Base of the user-vector retrievers. Subclasses declare the modalities they can use and define the loss and
    ``representations()``; this class does the data binding, the training batches, validation and scoring."""

    # Modalities the model can use; ``needs_all``: every one of them is required (else at least one).
    modalities: ClassVar[tuple[str, ...]] = MODALITIES
    needs_all: ClassVar[bool] = False
    # Whether batches carry a sampled negative item (BPR) or only (user, positive) pairs (BM3).
    uses_negatives: ClassVar[bool] = True

    # ---- data binding -------------------------------------------------------------------------------------------
    @classmethod
    def choose_modalities(cls, hparams: dict[str, Any], data: RetrievalData) -> list[str]:
        """The modalities this run uses: the wanted ones that the embeddings stage made."""
        wanted = list(hparams.get("modalities") or cls.modalities)
        if data.features is None:
            raise MissingArtifactError(
                f"{cls.method} needs item embeddings ({' and/or '.join(wanted)}); {RUN_FEATURES}"
            )
        available = data.features.available()
        chosen = [m for m in wanted if m in available]
        missing = [m for m in wanted if m not in available]
        if (cls.needs_all and missing) or not chosen:
            raise MissingArtifactError(
                f"{cls.method} needs {' and '.join(missing) if cls.needs_all else ' or '.join(wanted)} embeddings of "
                f"the items, but the embeddings stage made only: {', '.join(available) or 'none'} "
                f"(in {data.features.prepared / 'embeddings'}). {RUN_FEATURES}; "
                + ("a dataset without image URLs (ml-100k) has no image embeddings: use text."
                   if "image" in missing else "")
            )  # fmt: skip
        return chosen

    @classmethod
    def from_data(cls, n_items: int, hparams: dict[str, Any], device: torch.device | str,
                  data: RetrievalData) -> CollaborativeRetriever:  # fmt: skip
        chosen = cls.choose_modalities(hparams, data) if cls.modalities else []
        tables = {m: data.features.get(m) for m in chosen}  # type: ignore[union-attr]
        users, _ = train_pairs(data.seqs)
        hparams = {**hparams, "n_users": len(data.seqs.train) - 1, "n_edges": 2 * len(users),
                   "modalities": chosen, "feature_dims": {m: t.dim for m, t in tables.items()}}  # fmt: skip
        instance = cls(n_items, hparams, device)
        instance.bind(data.seqs, tables)
        return instance

    def bind(self, seqs: Sequences, tables: dict[str, FeatureTable]) -> None:
        """Copy the training graph and the feature tables into the model's buffers / initial weights.
        Buffers named ``edges`` and ``features_{modality}`` are filled here when the model has them."""
        buffers = dict(self.model.named_buffers())
        with torch.no_grad():
            if "edges" in buffers:
                buffers["edges"].copy_(bipartite_edges(seqs))
            for modality, table in tables.items():
                name = f"features_{modality}"
                if name in buffers:
                    buffers[name].copy_(table.vectors.masked_fill(~table.present[:, None], 0.0))  # f_i = 0 if absent
        self.after_bind(tables)

    def feature_dims(self) -> dict[str, int]:
        """Size of each used modality's feature vectors (from hparams, so that ``load`` rebuilds the same shapes)."""
        return {m: self.hparams["feature_dims"][m] for m in self.hparams["modalities"]}

    def after_bind(self, tables: dict[str, FeatureTable]) -> None:
        """Hook for models that initialise weights from the features (BM3's trainable feature tables)."""

    # ---- what subclasses define ---------------------------------------------------------------------------------
    @abstractmethod
    def loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """``batch`` = (users, positives[, negatives]) as long tensors on the model's device."""

    @abstractmethod
    def representations(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(users (U+1, D) with row 0 unused, items (N+1, D) with row 0 padding, item bias (N+1,) or None), such
        that score(u, i) = users[u]·items[i] + bias[i]."""

    # ---- training -----------------------------------------------------------------------------------------------
    def fit(self, seqs: Sequences, settings: LoopSettings, callbacks: Sequence[EpochCallback] = (),
            eval_batch_size: int = 256, ks: Sequence[int] = (5, 10, 20)) -> History:  # fmt: skip
        users, items = train_pairs(seqs)
        if not len(users):
            raise ValueError("the train split has no interactions")
        seen = pair_keys(users, items, self.n_items)
        val_inputs = split_inputs(seqs, "val")
        retriever = self

        class Task:
            model = retriever.model

            def optimizer(self, lr: float) -> torch.optim.Optimizer:
                return torch.optim.Adam(retriever.model.parameters(), lr=lr)

            def batches(self, epoch: int, rng: np.random.Generator) -> Iterator[tuple[torch.Tensor, ...]]:
                order = rng.permutation(len(users))
                for start in range(0, len(order), settings.batch_size):
                    rows = order[start : start + settings.batch_size]
                    batch = [users[rows], items[rows]]
                    if retriever.uses_negatives:
                        batch.append(sample_negatives(users[rows], seen, retriever.n_items, rng))
                    yield tuple(torch.as_tensor(b, device=retriever.device) for b in batch)

            def loss(self, batch):
                return retriever.loss(batch)

            def validate(self) -> dict[str, float]:
                return retriever.validation_metrics(val_inputs, ks, eval_batch_size)

        return fit(Task(), settings, self.device, callbacks)

    # ---- inference ----------------------------------------------------------------------------------------------
    def user_ids(self, users: np.ndarray | None, n_rows: int) -> np.ndarray:
        """(B,) int64 user ids, 0 where a row has no user (``users`` None: every row). Raises ValueError naming the
        value and the valid range for an id this model has no vector for."""
        if users is None:
            return np.zeros(n_rows, dtype=np.int64)
        ids = np.asarray(users)
        if ids.shape != (n_rows,):
            raise ValueError(f"expected one user id per history ({n_rows}), got an array of shape {ids.shape}")
        n_users = int(self.hparams["n_users"])
        as_int = ids.astype(np.int64)
        bad = np.flatnonzero((as_int != ids) | (as_int < 0) | (as_int > n_users))
        if len(bad):
            value = ids[bad[0]].item() if isinstance(ids[bad[0]], np.generic) else ids[bad[0]]
            raise ValueError(
                f"user_id {value!r} is unknown to this {self.method} retriever: it has learned vectors for user "
                f"ids 1..{n_users} (its training users); leave user_id out (or null) to score from the history alone"
            )
        return as_int

    def score(self, histories: list[np.ndarray], users: np.ndarray | None = None) -> torch.Tensor:
        ids = self.user_ids(users, len(histories))
        known = ids > 0
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            user_repr, item_repr, bias = self.representations()
            if known.all():
                queries = user_repr[torch.as_tensor(ids, device=user_repr.device)]
            elif not known.any():
                queries = self.fold_in(histories, item_repr)
            else:  # a mixed batch: learned vectors where the user is known, fold-in elsewhere
                rows = torch.as_tensor(np.flatnonzero(known), device=user_repr.device)
                folded = torch.as_tensor(np.flatnonzero(~known), device=user_repr.device)
                queries = torch.empty((len(histories), item_repr.shape[1]), dtype=user_repr.dtype,
                                      device=user_repr.device)  # fmt: skip
                queries[rows] = user_repr[torch.as_tensor(ids[known], device=user_repr.device)]
                queries[folded] = self.fold_in([histories[i] for i in np.flatnonzero(~known)], item_repr).to(
                    user_repr.dtype
                )
            scores = queries @ item_repr.T
            if bias is not None:
                scores = scores + bias
        self.model.train(was_training)
        return scores.float()

    def fold_in(self, histories: list[np.ndarray], item_repr: torch.Tensor) -> torch.Tensor:
        """(B, D): each history's mean item vector (zeros for an empty history)."""
        cleaned = [np.asarray(h, dtype=np.int64) for h in histories]
        cleaned = [h[(h >= 1) & (h <= self.n_items)] for h in cleaned]
        lengths = np.array([len(h) for h in cleaned], dtype=np.int64)
        rows = np.repeat(np.arange(len(cleaned)), lengths)
        cols = np.concatenate(cleaned) if lengths.sum() else np.zeros(0, np.int64)
        weights = 1.0 / np.repeat(np.maximum(lengths, 1), lengths)
        mean = torch.sparse_coo_tensor(
            torch.as_tensor(np.stack([rows, cols])), torch.as_tensor(weights, dtype=torch.float32),
            (len(cleaned), item_repr.shape[0]), device=item_repr.device, check_invariants=False,
        )  # fmt: skip
        return torch.sparse.mm(mean, item_repr.float())


def sample_negatives(users: np.ndarray, seen_keys: np.ndarray, n_items: int, rng: np.random.Generator) -> np.ndarray:
    """One uniform item per user among the items that user never had in train (collisions are redrawn).

    ``seen_keys`` = sorted ``user * (n_items + 1) + item`` over the train pairs (see ``pair_keys``)."""
    negatives = rng.integers(1, n_items + 1, size=len(users))
    clash = _is_seen(users, negatives, seen_keys, n_items)
    for _ in range(1000):  # a k-core user has seen a small share of the items: a few redraws suffice
        if not clash.any():
            return negatives
        negatives[clash] = rng.integers(1, n_items + 1, size=int(clash.sum()))
        clash = _is_seen(users, negatives, seen_keys, n_items)
    raise ValueError("could not draw unseen negatives: some user has interacted with (almost) every item")


def pair_keys(users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    return np.unique(users.astype(np.int64) * (n_items + 1) + items.astype(np.int64))


def _is_seen(users: np.ndarray, items: np.ndarray, seen_keys: np.ndarray, n_items: int) -> np.ndarray:
    keys = users.astype(np.int64) * (n_items + 1) + items
    pos = np.searchsorted(seen_keys, keys).clip(max=max(len(seen_keys) - 1, 0))
    return seen_keys[pos] == keys if len(seen_keys) else np.zeros(len(keys), dtype=bool)
