"""MMGCN: Multi-modal Graph Convolution Network for Personalized Recommendation of Micro-video (Wei et al., ACM MM
2019), as in the authors' code (weiyinwei/MMGCN, Model_MMGCN.py).

Per modality a GCN on the user-item bipartite graph: x = normalize([user preference; MLP(item feature)]); per layer
h = leaky_relu(aggregate(x W)) over the neighbours (mean or add, no self loops), x_hat = leaky_relu(linear(x)) + id
embedding, x = leaky_relu(g([h, x_hat])) (concat) or leaky_relu(g(h) + x_hat). The id embedding table (users and
items) is shared by the modalities; the final representation is the mean over the modalities; BPR loss plus
``mmgcn_reg`` times the mean squared id embedding of the batch's users and items.

Deviations from that code: the preference vectors and the id embeddings are learnable ``nn.Parameter``s (there they
are plain tensors that the optimiser never sees); every modality is projected to ``mmgcn_dim`` (there only the visual
one, to 256); ``mmgcn_layers`` layers (there always 3); every layer's weights are xavier-normal (there the later
combination layers keep PyTorch's default); the extra penalty on the visual preference vectors is left out.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from recsys_core.config import Config
from recsys_core.retrieval.collaborative import CollaborativeRetriever, GraphCache, propagate


def xavier_linear(d_in: int, d_out: int) -> nn.Linear:
    layer = nn.Linear(d_in, d_out)
    nn.init.xavier_normal_(layer.weight)
    return layer


class ModalityGCN(nn.Module):
    """One modality's graph: its own user preference vectors, feature projection and layers."""

    def __init__(self, n_users: int, feature_dim: int, dim: int, layers: int, concat: bool):
        super().__init__()
        self.concat = concat
        self.preference = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_users, dim)))
        self.mlp = nn.Linear(feature_dim, dim)
        self.conv = nn.ParameterList([nn.Parameter(nn.init.xavier_normal_(torch.empty(dim, dim)))
                                      for _ in range(layers)])  # fmt: skip
        self.linear = nn.ModuleList([xavier_linear(dim, dim) for _ in range(layers)])
        self.combine = nn.ModuleList([xavier_linear(2 * dim if concat else dim, dim) for _ in range(layers)])

    def forward(self, features: torch.Tensor, id_embedding: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        """features (N, F) of items 1..N, id_embedding (U+N, D) -> (U+N, D) node representations."""
        x = F.normalize(torch.cat([self.preference, self.mlp(features).to(self.preference.dtype)]))
        for conv, linear, combine in zip(self.conv, self.linear, self.combine, strict=True):
            h = F.leaky_relu(propagate(adjacency, x @ conv))
            x_hat = F.leaky_relu(linear(x)) + id_embedding
            x = F.leaky_relu(combine(torch.cat([h, x_hat], dim=1))) if self.concat else F.leaky_relu(combine(h) + x_hat)
        return x


class MMGCNModel(nn.Module):
    def __init__(self, n_users: int, n_items: int, n_edges: int, feature_dims: dict[str, int], dim: int, layers: int,
                 aggr: str, concat: bool):  # fmt: skip
        super().__init__()
        self.n_users = n_users
        self.id_embedding = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_users + n_items, dim)))
        self.gcns = nn.ModuleDict({m: ModalityGCN(n_users, d, dim, layers, concat) for m, d in feature_dims.items()})
        self.register_buffer("edges", torch.zeros(2, n_edges, dtype=torch.long))
        for modality, d in feature_dims.items():
            self.register_buffer(f"features_{modality}", torch.zeros(n_items + 1, d))
        self.graph = GraphCache(aggr, n_users + n_items)

    def forward(self) -> torch.Tensor:
        """(U+N, D): users are nodes 0..U-1, items 1..N nodes U..U+N-1."""
        adjacency = self.graph(self.edges)
        reps = [gcn(getattr(self, f"features_{m}")[1:], self.id_embedding, adjacency) for m, gcn in self.gcns.items()]
        return torch.stack(reps).mean(0)


class MMGCN(CollaborativeRetriever):
    method = "mmgcn"

    @classmethod
    def hyperparameters(cls, cfg: Config, dataset_code: str) -> dict[str, Any]:
        g = cfg.mmgcn
        return {"dim": g.mmgcn_dim, "layers": g.mmgcn_layers, "aggr": g.mmgcn_aggr, "concat": g.mmgcn_concat,
                "reg": g.mmgcn_reg, "modalities": ["image", "text"]}  # fmt: skip

    def build_model(self) -> nn.Module:
        h = self.hparams
        dims = self.feature_dims()
        return MMGCNModel(h["n_users"], self.n_items, h["n_edges"], dims, h["dim"], h["layers"], h["aggr"],
                          h["concat"])  # fmt: skip

    def loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        users, pos, neg = batch
        out = self.model()
        user_nodes = users - 1
        pos_nodes, neg_nodes = pos + self.hparams["n_users"] - 1, neg + self.hparams["n_users"] - 1
        user = out[user_nodes]
        x_uij = (user * (out[pos_nodes] - out[neg_nodes])).sum(-1)
        ids = self.model.id_embedding
        user_rows, item_rows = torch.cat([user_nodes, user_nodes]), torch.cat([pos_nodes, neg_nodes])
        reg = (ids[user_rows].pow(2) + ids[item_rows].pow(2)).mean()
        return -F.logsigmoid(x_uij.float()).mean() + self.hparams["reg"] * reg

    def representations(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        out = self.model().float()
        users, items = out.split([self.hparams["n_users"], self.n_items])
        pad = out.new_zeros(1, out.shape[1])
        return torch.cat([pad, users]), torch.cat([pad, items]), None
