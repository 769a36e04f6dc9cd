"""LRURec: Linear Recurrent Units for Sequential Recommendation (Yue et al., WSDM 2024).

Embedding -> LayerNorm(dropout) -> blocks of [LRU layer + position-wise FFN] -> scores = h·Eᵀ + b (tied item
embeddings). The LRU layer is a complex diagonal recurrence h_t = λ ⊙ h_{t-1} + γ ⊙ (B x_t), λ = exp(−exp(ν) + i·exp(θ)),
γ = sqrt(1 − |λ|²), output LayerNorm(dropout(Re(C h)) + x). ν, θ start on a ring |λ| ∈ [r_min, r_max] and are never
re-initialised. The recurrence runs one time step after another over left-padded inputs of any length, in an
autograd function with a hand-written backward (``recurrent_scan``; ``sequential_scan`` is the plain-autograd
reference); padding never feeds the state of a real position. B and C are complex matrices kept as real/imaginary
parameter pairs, so that weights are plain float tensors (safetensors); the layer multiplies by them as one real
matmul each over interleaved real/imaginary parts, and autocast cannot touch the complex arithmetic.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from recsys_core.config import Config
from recsys_core.retrieval.base import SequentialRetriever


class _Recurrence(torch.autograd.Function):
    """h_t = c_t·h_{t-1} + u_t with c_t = λ·mask_{t-1}, one time step at a time, with a hand-written backward.

    Each step reads and writes one (B, D) slice, which stays in cache: the whole pass reads ``u`` once and writes
    ``h`` once. The backward runs the recurrence in reverse with conj(c) (PyTorch's convention for complex
    gradients): G_t = g_t + conj(c_{t+1})·G_{t+1}, ∂u_t = G_t, ∂λ = Σ_{b, t>0} mask_{t-1}·G_t·conj(h_{t-1}).
    """

    @staticmethod
    def forward(ctx, u: torch.Tensor, lam: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = torch.empty_like(u, memory_format=torch.contiguous_format)
        hs, us = h.unbind(1), u.unbind(1)
        keep = mask.to(u.real.dtype).unsqueeze(-1)
        whole = mask.all(0).tolist()  # steps where no sequence is padding: c_t is λ itself
        hs[0].copy_(us[0])
        for t in range(1, len(hs)):
            torch.addcmul(us[t], hs[t - 1], lam if whole[t - 1] else lam * keep[:, t - 1], out=hs[t])
        ctx.save_for_backward(h, lam, keep)
        ctx.whole = whole
        return h

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        h, lam, keep = ctx.saved_tensors
        g = torch.empty_like(grad, memory_format=torch.contiguous_format)
        gs, grads, hs = g.unbind(1), grad.unbind(1), h.unbind(1)
        lam_conj = lam.conj().resolve_conj()
        grad_lam = torch.zeros(len(hs), lam.shape[0], dtype=lam.dtype, device=lam.device)  # one row per step
        gs[-1].copy_(grads[-1])
        for t in range(len(gs) - 1, 0, -1):
            carried = hs[t - 1].conj()  # what step t received, h_{t-1}·mask_{t-1} (conjugated)
            if ctx.whole[t - 1]:
                torch.addcmul(grads[t - 1], gs[t], lam_conj, out=gs[t - 1])
            else:
                torch.addcmul(grads[t - 1], gs[t], lam_conj * keep[:, t - 1], out=gs[t - 1])
                carried = carried * keep[:, t - 1]
            torch.sum(gs[t] * carried, 0, out=grad_lam[t])
        return g, grad_lam.sum(0), None


def recurrent_scan(u: torch.Tensor, lam: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """h_t = λ·h_{t-1}·mask_{t-1} + u_t for every t, any length L.

    u: (B, L, D) complex; lam: (D,) complex; mask: (B, L) bool (False = padding): a padded step passes nothing on,
    so left padding never reaches a real position. On CPU this step-by-step loop over cached (B, D) slices is
    several times faster, forward and backward, than a log2(L)-step parallel scan, whose every step makes passes
    over the whole (B, L, D) tensor (and whose autograd graph makes more).
    """
    return _Recurrence.apply(u, lam, mask)


def sequential_scan(u: torch.Tensor, lam: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The same recurrence with plain autograd ops (the reference recurrent_scan is tested against)."""
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
            # u = γ ⊙ (B x + b) with B = B_re + i B_im: one matmul whose output rows alternate re/im, read as complex
            # without a copy; γ is folded into the (small) weights.
            gamma2 = gamma.repeat_interleave(2)
            w_in = torch.stack([self.in_re.weight, self.in_im.weight], dim=1).flatten(0, 1) * gamma2[:, None]
            b_in = torch.stack([self.in_re.bias, self.in_im.bias], dim=1).flatten() * gamma2
            u = torch.view_as_complex(F.linear(x32, w_in, b_in).unflatten(-1, (-1, 2)))
            h = recurrent_scan(u, lam, mask)
            # Re(C h) = C_re h_re − C_im h_im, again one matmul over the interleaved re/im of h.
            w_out = torch.stack([self.out_re.weight, -self.out_im.weight], dim=2).flatten(1, 2)
            y = F.linear(torch.view_as_real(h).flatten(-2), w_out, self.out_re.bias)
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
        mask = tokens > 0
        x = self.embed_norm(self.embed_dropout(self.token(tokens)))
        for lru, ffn in zip(self.lru, self.ffn, strict=True):
            x = ffn(lru(x, mask))
        return x

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.token.weight, self.bias)  # h·Eᵀ + b, the bias added inside the matmul


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
