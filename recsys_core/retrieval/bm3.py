"""BM3: Bootstrap Latent Representations for Multi-modal Recommendation (Zhou et al., WWW 2023), as in MMRec's
``models/bm3.py``.

LightGCN on the symmetric-normalised user-item graph (mean of layers 0..L); an item's online embedding is its graph
embedding plus its id embedding. Each modality is a trainable table initialised from the item features (MMRec's
``nn.Embedding.from_pretrained(feat, freeze=False)``) projected by a Linear to the latent size. A shared predictor
maps every online view; the target views are the online embeddings detached and passed through dropout (no EMA
network, no negative sampling). Loss, per batch of (user, item) pairs:
(1 − cos(p(u), i_t)) + (1 − cos(p(i), u_t))
+ cl_weight · Σ_m [(1 − cos(p(f_m(i)), i_t)) + (1 − cos(p(f_m(i)), f_m,t(i)))] + reg · (‖U‖ + ‖I‖) / N, where U and I are the whole online user and item tables (MMRec's EmbLoss, Frobenius norms
divided by the row count of its last argument: the number of items). Scores: p(u) · p(i).

As in MMRec, the features shape only the predictor and the feature tables: scoring reads the graph and id
embeddings, so an item never seen in training is scored from an id embedding that only the norm penalty moves.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from recsys_core.config import Config
from recsys_core.features.store import FeatureTable
from recsys_core.retrieval.collaborative import CollaborativeRetriever, GraphCache, propagate


def alignment(online: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 1 - F.cosine_similarity(online.float(), target.detach().float(), dim=-1).mean()


class BM3Model(nn.Module):
    def __init__(self, n_users: int, n_items: int, n_edges: int, feature_dims: dict[str, int], dim: int, layers: int):
        super().__init__()
        self.n_users, self.n_items, self.layers = n_users, n_items, layers
        self.user_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_users, dim)))
        self.item_id_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_items, dim)))
        self.predictor = nn.Linear(dim, dim)
        nn.init.xavier_normal_(self.predictor.weight)
        # Row r of a feature table is item r + 1 (filled from the features by BM3.after_bind).
        self.feature_tables = nn.ParameterDict(
            {m: nn.Parameter(torch.zeros(n_items, d)) for m, d in feature_dims.items()}
        )
        self.feature_proj = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in feature_dims.items()})
        for layer in self.feature_proj.values():
            nn.init.xavier_normal_(layer.weight)
        self.register_buffer("edges", torch.zeros(2, n_edges, dtype=torch.long))
        self.graph = GraphCache("sym", n_users + n_items)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Online (U, D) user and (N, D) item embeddings: LightGCN layer mean, plus the item id residual."""
        adjacency = self.graph(self.edges)
        ego = torch.cat([self.user_embedding, self.item_id_embedding])
        layers = [ego]
        for _ in range(self.layers):
            layers.append(propagate(adjacency, layers[-1]))
        users, items = torch.stack(layers).mean(0).split([self.n_users, self.n_items])
        return users, items + self.item_id_embedding

    def modality(self, name: str, items: torch.Tensor) -> torch.Tensor:
        """The projected feature view f_m of items (0-based rows)."""
        return self.feature_proj[name](self.feature_tables[name][items])


class BM3(CollaborativeRetriever):
    method = "bm3"
    uses_negatives = False

    @classmethod
    def hyperparameters(cls, cfg: Config, dataset_code: str) -> dict[str, Any]:
        b = cfg.bm3
        return {"dim": b.bm3_dim, "layers": b.bm3_layers, "dropout": b.bm3_dropout, "reg": b.bm3_reg,
                "cl_weight": b.bm3_cl_weight, "modalities": ["image", "text"]}  # fmt: skip

    def build_model(self) -> nn.Module:
        h = self.hparams
        dims = self.feature_dims()
        return BM3Model(h["n_users"], self.n_items, h["n_edges"], dims, h["dim"], h["layers"])

    def after_bind(self, tables: dict[str, FeatureTable]) -> None:
        with torch.no_grad():
            for modality, table in tables.items():
                vectors = table.vectors.masked_fill(~table.present[:, None], 0.0)[1:]
                self.model.feature_tables[modality].copy_(vectors)

    def loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        users, items = batch[0] - 1, batch[1] - 1
        m, p = self.model, self.hparams["dropout"]
        u_online_ori, i_online_ori = m()
        with torch.no_grad():
            u_target = F.dropout(u_online_ori[users], p)
            i_target = F.dropout(i_online_ori[items], p)
        u_online = m.predictor(u_online_ori[users])
        i_online = m.predictor(i_online_ori[items])
        loss = alignment(u_online, i_target) + alignment(i_online, u_target)
        modal = u_online.new_zeros((), dtype=torch.float32)
        for name in m.feature_tables:
            f_online = m.modality(name, items)
            f_target = F.dropout(f_online.detach(), p)
            f_pred = m.predictor(f_online)
            modal = modal + alignment(f_pred, i_target) + alignment(f_pred, f_target)
        reg = (u_online_ori.float().norm() + i_online_ori.float().norm()) / i_online_ori.shape[0]
        return loss + self.hparams["cl_weight"] * modal + self.hparams["reg"] * reg

    def representations(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        users, items = self.model()
        users, items = self.model.predictor(users).float(), self.model.predictor(items).float()
        pad = users.new_zeros(1, users.shape[1])
        return torch.cat([pad, users]), torch.cat([pad, items]), None
