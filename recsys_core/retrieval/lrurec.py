"""LRURec: Linear Recurrent Units for Sequential Recommendation (Yue et al., WSDM 2024).

Embedding -> LayerNorm(dropout) -> blocks of [LRU layer + position-wise FFN] -> scores = h·Eᵀ + b (tied item
embeddings). The LRU layer is a complex diagonal recurrence h_t = λ ⊙ h_{t-1} + γ ⊙ (B x_t), λ = exp(−exp(ν) + i·exp(θ)),
γ = sqrt(1 − |λ|²), output LayerNorm(dropout(Re(C h)) + x). ν, θ start on a ring |λ| ∈ [r_min, r_max] and are never
re-initialised. The recurrence runs as a parallel scan in log2(L) steps over left-padded inputs; padding never
feeds the state of a real position. B and C are complex matrices kept as real/imaginary parameter pairs, so that
weights are plain float tensors (safetensors) and autocast cannot touch the complex arithmetic.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from recsys_core.config import Config
from recsys_core.retrieval.base import SequentialRetriever


def parallel_scan(u: torch.Tensor, lam: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """h_t = λ·h_{t-1}·mask_{t-1} + u_t for every t, in log2(L) doubling steps.

    u: (B, L, D) complex, L a power of two; lam: (D,) complex; mask: (B, L) bool (False = padding). At step i, each
    block of length 2^i adds to its right half the state at the end of its left half times λ^1..λ^(2^(i-1)); a
    padded block end carries nothing. The update is added through F.pad rather than slicing both halves and
    concatenating them, which halves the backward pass's memory traffic on CPU.
    """
    batch, length, dim = u.shape
    steps = int(math.log2(length))
    if 2**steps != length:
        raise ValueError(f"parallel_scan needs a power-of-two length, got {length}")
    h = u
    keep = mask.to(u.real.dtype)
    powers = lam.unsqueeze(0)  # λ^1 .. λ^(half), doubles each step
    for i in range(1, steps + 1):
        block, half = 2**i, 2 ** (i - 1)
        if i > 1:
            powers = torch.cat([powers, powers * powers[-1]], dim=0)
        h = h.reshape(batch * length // block, block, dim)
        carry = h[:, half - 1 : half] * keep.reshape(-1, block)[:, half - 1 : half, None]
        h = h + F.pad(powers * carry, (0, 0, half, 0))
    return h.reshape(batch, length, dim)


def sequential_scan(u: torch.Tensor, lam: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The same recurrence one step at a time (the reference the parallel scan is tested against)."""
    out = [u[:, 0]]
    for t in range(1, u.shape[1]):
        out.append(lam * out[-1] * mask[:, t - 1].unsqueeze(-1) + u[:, t])
    return torch.stack(out, dim=1)


class LRULayer(nn.Module):
    def __init__(self, d_model: int, dropout: float, r_min: float, r_max: float):
        super().__init__()
        state = 2 * d_model
        u1, u2 = torch.rand(state), torch.rand(state)
        nu_log = torch.log(-0.5 * torch.log(u1 * (r_max**2 - r_min**2) + r_min**2))  # ring initialisation
        theta_log = torch.log(u2 * 2 * math.pi)
        modulus = torch.exp(-torch.exp(nu_log))
        gamma_log = torch.log(torch.sqrt(1 - modulus**2))
        self.params_log = nn.Parameter(torch.stack([nu_log, theta_log, gamma_log]))
        self.in_re = nn.Linear(d_model, state)
        self.in_im = nn.Linear(d_model, state)
        self.out_re = nn.Linear(state, d_model)
        self.out_im = nn.Linear(state, d_model, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            x32 = x.float()
            nu, theta, gamma = torch.exp(self.params_log.float())
            lam = torch.exp(torch.complex(-nu, theta))
            u = torch.complex(self.in_re(x32), self.in_im(x32)) * gamma
            h = parallel_scan(u, lam, mask)
            y = self.out_re(h.real) - self.out_im(h.imag)  # Re(C h) with C = C_re + i C_im
        return self.layer_norm(self.dropout(y) + x32)


class PositionwiseFeedForward(nn.Module):
    def __init__(self, d_model: int, dropout: float):
        super().__init__()
        self.w_1 = nn.Linear(d_model, 4 * d_model)
        self.w_2 = nn.Linear(4 * d_model, d_model)
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inner = self.dropout(F.gelu(self.w_1(x)))
        return self.layer_norm(self.dropout(self.w_2(inner)) + x)


class LRURecModel(nn.Module):
    def __init__(self, n_items: int, hidden: int, blocks: int, dropout: float, attn_dropout: float,
                 r_min: float, r_max: float):  # fmt: skip
        super().__init__()
        self.token = nn.Embedding(n_items + 1, hidden)
        self.embed_norm = nn.LayerNorm(hidden)
        self.embed_dropout = nn.Dropout(dropout)
        self.lru = nn.ModuleList([LRULayer(hidden, attn_dropout, r_min, r_max) for _ in range(blocks)])
        self.ffn = nn.ModuleList([PositionwiseFeedForward(hidden, dropout) for _ in range(blocks)])
        self.bias = nn.Parameter(torch.zeros(n_items + 1))
        self._truncated_normal_init()

    def _truncated_normal_init(self, std: float = 0.02) -> None:
        """Weights ~ N(0, 0.02²) truncated at ±2σ; LayerNorms and the ring-initialised λ are left as they are."""
        with torch.no_grad():
            for name, param in self.named_parameters():
                if "norm" in name or "params_log" in name or name == "bias":
                    continue
                nn.init.trunc_normal_(param, mean=0.0, std=std, a=-2 * std, b=2 * std)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, L) left-padded with 0 -> hidden states (B, L, H)."""
        length = tokens.shape[1]
        padded = 2 ** math.ceil(math.log2(max(length, 2)))
        tokens = F.pad(tokens, (padded - length, 0))
        mask = tokens > 0
        x = self.embed_norm(self.embed_dropout(self.token(tokens)))
        for lru, ffn in zip(self.lru, self.ffn, strict=True):
            x = ffn(lru(x, mask))
        return x[:, -length:]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.token.weight.T + self.bias


class LRURec(SequentialRetriever):
    """The retriever wrapper: sliding-window cross-entropy over every position, AdamW with weight decay."""

    method = "lrurec"
    CHUNK = 128

    @classmethod
    def hyperparameters(cls, cfg: Config, dataset_code: str) -> dict:
        lru = cfg.lrurec
        max_len = lru.lru_max_len or (200 if dataset_code.startswith("ml-") else 50)
        return {
            "hidden": lru.lru_hidden_size,
            "blocks": lru.lru_num_blocks,
            "dropout": lru.lru_dropout,
            "attn_dropout": lru.lru_attn_dropout,
            "r_min": lru.lru_r_min,
            "r_max": lru.lru_r_max,
            "max_len": max_len,
            "sliding_window": lru.lru_sliding_window,
            "weight_decay": lru.lru_weight_decay,
        }

    def build_model(self) -> nn.Module:
        h = self.hparams
        return LRURecModel(self.n_items, h["hidden"], h["blocks"], h["dropout"], h["attn_dropout"], h["r_min"],
                           h["r_max"])  # fmt: skip

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Mean cross-entropy of the next item over every real position of the batch (padding is not scored).

        Large batches are computed in chunks of ``CHUNK`` sequences and summed: the same loss and gradient as one
        pass, with working sets that fit the CPU's caches (a 512-sequence batch runs about twice as fast this way).
        """
        tokens, labels = batch
        n_real = (labels > 0).sum().clamp(min=1)
        total = tokens.new_zeros((), dtype=torch.float32)
        for start in range(0, tokens.shape[0], self.CHUNK):
            chunk_tokens, chunk_labels = tokens[start : start + self.CHUNK], labels[start : start + self.CHUNK]
            real = chunk_labels > 0
            logits = self.model.logits(self.model(chunk_tokens)[real])
            total = total + F.cross_entropy(logits.float(), chunk_labels[real], reduction="sum")
        return total / n_real

    def score_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.logits(self.model(tokens)[:, -1]).float()

    def parameter_groups(self) -> list[dict]:
        """As published: no weight decay on biases and LayerNorms."""
        decay, no_decay = [], []
        for name, param in self.model.named_parameters():
            (no_decay if ("bias" in name or "norm" in name) else decay).append(param)
        return [{"params": decay, "weight_decay": self.hparams["weight_decay"]}, {"params": no_decay,
                "weight_decay": 0.0}]  # fmt: skip
