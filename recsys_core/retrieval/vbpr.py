"""VBPR: Visual Bayesian Personalized Ranking from Implicit Feedback (He & McAuley, AAAI 2016).

score(u, i) = β_i + γ_uᵀγ_i + θ_uᵀ(E f_i) + β'ᵀf_i with f_i a fixed content feature (a buffer; zeros for items
without one), trained with the BPR loss −log σ(x_ui − x_uj) on sampled negatives. L2 regularisation as in the paper:
``vbpr_reg`` on the batch's γ_u, θ_u, γ_i, γ_j, β_i, β_j (per example, averaged over the batch), and a weaker
``vbpr_reg / 10`` on the shared E and β' (once per batch). Initialisation: xavier-uniform γ, θ, E (as MMRec's VBPR),
zero biases.

Deviation: f_i is the CLIP image feature in the paper; ``vbpr_feature`` may pick the text embedding instead (auto =
image when the embeddings stage made it, else text), so that datasets without images can run VBPR.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from recsys_core.config import Config
from recsys_core.retrieval.base import RetrievalData
from recsys_core.retrieval.collaborative import CollaborativeRetriever

FEATURE_CHOICES = {"image": ["image"], "text": ["text"], "auto": ["image", "text"]}
SHARED_REG_SHARE = 0.1  # E and β' are regularised with vbpr_reg * this


class VBPRModel(nn.Module):
    def __init__(self, n_users: int, n_items: int, modality: str, feature_dim: int, latent_dim: int,
                 visual_dim: int):  # fmt: skip
        super().__init__()
        self.modality = modality
        self.gamma_user = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_users + 1, latent_dim)))
        self.theta_user = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_users + 1, visual_dim)))
        self.gamma_item = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_items + 1, latent_dim)))
        self.item_bias = nn.Parameter(torch.zeros(n_items + 1))  # β_i
        self.embed = nn.Linear(feature_dim, visual_dim, bias=False)  # E
        nn.init.xavier_uniform_(self.embed.weight)
        self.visual_bias = nn.Parameter(torch.zeros(feature_dim))  # β'
        self.register_buffer(f"features_{modality}", torch.zeros(n_items + 1, feature_dim))

    @property
    def features(self) -> torch.Tensor:
        return getattr(self, f"features_{self.modality}")

    def users(self, ids: torch.Tensor | slice) -> torch.Tensor:
        return torch.cat([self.gamma_user[ids], self.theta_user[ids]], dim=-1)

    def items(self, ids: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
        """([γ_i; E f_i], β_i + β'ᵀf_i)."""
        f = self.features[ids]
        return torch.cat([self.gamma_item[ids], self.embed(f)], dim=-1), self.item_bias[ids] + f @ self.visual_bias


class VBPR(CollaborativeRetriever):
    method = "vbpr"

    @classmethod
    def hyperparameters(cls, cfg: Config, dataset_code: str) -> dict[str, Any]:
        v = cfg.vbpr
        return {"latent_dim": v.vbpr_latent_dim, "visual_dim": v.vbpr_visual_dim, "reg": v.vbpr_reg,
                "feature": v.vbpr_feature, "modalities": FEATURE_CHOICES[v.vbpr_feature]}  # fmt: skip

    @classmethod
    def choose_modalities(cls, hparams: dict[str, Any], data: RetrievalData) -> list[str]:
        """One feature: the configured one, or for ``auto`` image when it was made, else text."""
        wanted = list(hparams["modalities"])
        if len(wanted) > 1 and data.features is not None:
            wanted = ["image"] if "image" in data.features.available() else ["text"]
        return super().choose_modalities({**hparams, "modalities": wanted}, data)

    def build_model(self) -> nn.Module:
        h = self.hparams
        (modality,) = h["modalities"]
        return VBPRModel(h["n_users"], self.n_items, modality, h["feature_dims"][modality], h["latent_dim"],
                         h["visual_dim"])  # fmt: skip

    def loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        users, pos, neg = batch
        m = self.model
        user = m.users(users)
        pos_vec, pos_bias = m.items(pos)
        neg_vec, neg_bias = m.items(neg)
        x_uij = (user * (pos_vec - neg_vec)).sum(-1) + pos_bias - neg_bias
        per_example = (m.gamma_user[users].pow(2).sum(-1) + m.theta_user[users].pow(2).sum(-1)
                       + m.gamma_item[pos].pow(2).sum(-1) + m.gamma_item[neg].pow(2).sum(-1)
                       + m.item_bias[pos].pow(2) + m.item_bias[neg].pow(2))  # fmt: skip
        shared = m.embed.weight.pow(2).sum() + m.visual_bias.pow(2).sum()
        reg = self.hparams["reg"]
        return -F.logsigmoid(x_uij.float()).mean() + reg * per_example.mean() + reg * SHARED_REG_SHARE * shared

    def representations(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        items, bias = self.model.items(slice(None))
        return self.model.users(slice(None)), items, bias
