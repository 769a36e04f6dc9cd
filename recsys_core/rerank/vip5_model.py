"""VIP5's network and prompts: a frozen T5 with bottleneck adapters, visual tokens after item ids, whole-word
embeddings (after Geng et al., 2023, "VIP5: Towards Multimodal Foundation Models for Recommendation").

* Prompt (direct recommendation with the recent history): ``Given the following interaction history : item_12 <v>
  <v> , item_7 <v> <v> , which item of the following to recommend next ? item_3 <v> <v> , item_9 <v> <v> </s>``.
  Each ``<v>`` is a placeholder (``<extra_id_0>``, as VIP5) whose embedding is replaced by one of the
  ``image_feature_size_ratio`` visual tokens an MLP makes from that item's feature.
* Whole-word ids: every word (a text word, an item id such as ``item_123`` split into ``▁item _ 1 2 3``, each visual
  token) gets the next number, shared by all its sub-tokens; ``</s>`` and padding get 0 (as VIP5). Their embedding,
  and a text/visual category embedding, are added to the token embeddings. Both start at zero and are trained.
* Adapters: ``x + up(gelu(down(x)))`` on the output of every self-attention, cross-attention and feed-forward
  sublayer (before its residual, where VIP5 puts them), added by forward hooks so the backbone's modules and weights
  are untouched; ``up`` starts at zero, so the untrained network is exactly the backbone.

Prompts are built from pre-tokenised words, so their length is known before any text is joined: the candidates are
never cut; the oldest history items are dropped first when the prompt would exceed ``max_length``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recsys_core import hub
from recsys_core.errors import ConfigError

log = logging.getLogger(__name__)

HEAD = "Given the following interaction history :"
MIDDLE = ", which item of the following to recommend next ?"
SEPARATOR = ","
VISUAL_PLACEHOLDER = "<extra_id_0>"


def item_text(item: int) -> str:
    return f"item_{int(item)}"


# ---- loading ----


T5_MODEL = hub.ModelSetting("vip5.vip5_model", "the T5 backbone", "t5")


def resolve_t5(name: str) -> str:
    """A local folder -> its absolute path; anything else is taken as a Hugging Face id (``t5-small``)."""
    return hub.resolve(name, T5_MODEL)


def load_t5(name: str, device: Any = "cpu") -> tuple[Any, Any]:
    """(``T5ForConditionalGeneration`` in fp32 and eval mode, tokenizer); a hub id that is neither cached nor
    downloadable right now fails at once with MissingArtifactError (never a long wait)."""
    from transformers import AutoConfig, AutoTokenizer, T5ForConditionalGeneration

    source = resolve_t5(name)
    kwargs = hub.hub_kwargs(source, T5_MODEL)
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
        if config.model_type != "t5":
            raise ConfigError(f"vip5.vip5_model {source!r} is a {config.model_type!r} model; VIP5 needs a T5")
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = T5ForConditionalGeneration.from_pretrained(source, dtype=torch.float32, **kwargs)
    except OSError as err:
        raise hub.missing(source, f"loading it failed ({err})", T5_MODEL) from err
    return model.to(device).eval(), tokenizer


# ---- modules ----


class Adapter(nn.Module):
    """Bottleneck adapter: x + up(gelu(down(x))); ``up`` starts at zero, so a new adapter is the identity."""

    def __init__(self, dim: int, bottleneck: int):
        super().__init__()
        self.down, self.up = nn.Linear(dim, bottleneck), nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(F.gelu(self.down(x)))


class VisualEmbedding(nn.Module):
    """An item feature -> ``n_tokens`` token embeddings: VIP5's MLP (D -> n*d/2 -> n*d, tanh) and a T5 layer norm."""

    def __init__(self, feat_dim: int, d_model: int, n_tokens: int, eps: float = 1e-6):
        from transformers.models.t5.modeling_t5 import T5LayerNorm

        super().__init__()
        self.n_tokens, self.d_model = n_tokens, d_model
        width = d_model * n_tokens
        self.mlp = nn.Sequential(nn.Linear(feat_dim, width // 2), nn.Tanh(), nn.Linear(width // 2, width))
        self.norm = T5LayerNorm(width, eps=eps)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.norm(self.mlp(feats)).view(len(feats), self.n_tokens, self.d_model)


def _adapt_output(adapter: Adapter):
    def hook(module, args, output):
        if isinstance(output, tuple):  # T5Attention: (attention output, position bias, weights)
            return (adapter(output[0]), *output[1:])
        return adapter(output)

    return hook


@dataclass
class EncoderBatch:
    input_ids: torch.Tensor  # (B, L) right-padded with 0
    attention_mask: torch.Tensor  # (B, L)
    word_ids: torch.Tensor  # (B, L) whole-word numbers, 0 for </s> and padding
    category_ids: torch.Tensor  # (B, L) 1 = visual token
    vis_starts: torch.Tensor  # (M,) flat index b * L + position of each item's first visual token
    vis_items: torch.Tensor  # (M,) the item behind those visual tokens


class VIP5Net(nn.Module):
    """The frozen backbone plus what VIP5 trains: adapters, the visual MLP, whole-word and category embeddings."""

    def __init__(self, backbone: nn.Module, feat_dim: int, n_items: int, n_visual: int, reduction_factor: int,
                 max_words: int, unfreeze_layer_norms: bool = False):  # fmt: skip
        super().__init__()
        self.backbone = backbone.requires_grad_(False)
        cfg = backbone.config
        d = cfg.d_model
        bottleneck = max(1, d // reduction_factor)
        self.adapters = nn.ModuleDict()
        sublayers = [(f"encoder_{i}_self", b.layer[0].SelfAttention) for i, b in enumerate(backbone.encoder.block)]
        sublayers += [(f"encoder_{i}_ff", b.layer[-1].DenseReluDense) for i, b in enumerate(backbone.encoder.block)]
        for i, block in enumerate(backbone.decoder.block):
            sublayers += [(f"decoder_{i}_self", block.layer[0].SelfAttention),
                          (f"decoder_{i}_cross", block.layer[1].EncDecAttention),
                          (f"decoder_{i}_ff", block.layer[-1].DenseReluDense)]  # fmt: skip
        for name, module in sublayers:
            self.adapters[name] = Adapter(d, bottleneck)
            module.register_forward_hook(_adapt_output(self.adapters[name]))
        self.visual = VisualEmbedding(feat_dim, d, n_visual, cfg.layer_norm_epsilon)
        self.whole_word = nn.Embedding(max_words, d)
        self.category = nn.Embedding(2, d)
        nn.init.zeros_(self.whole_word.weight)
        nn.init.zeros_(self.category.weight)
        if unfreeze_layer_norms:
            for name, param in backbone.named_parameters():
                if name.endswith("layer_norm.weight"):
                    param.requires_grad_(True)
        self.register_buffer("features", torch.zeros(n_items + 1, feat_dim), persistent=False)
        self.scale = d**-0.5 if getattr(cfg, "scale_decoder_outputs", cfg.tie_word_embeddings) else 1.0

    def embed(self, batch: EncoderBatch) -> torch.Tensor:
        """(B, L, d) encoder input: token embeddings with the visual tokens put in, plus word and category ones."""
        tokens = self.backbone.get_input_embeddings()(batch.input_ids)
        n = self.visual.n_tokens
        if len(batch.vis_items):
            flat = (batch.vis_starts[:, None] + torch.arange(n, device=tokens.device)).reshape(-1)
            visual = self.visual(self.features[batch.vis_items]).reshape(-1, tokens.shape[-1]).to(tokens.dtype)
            tokens = tokens.reshape(-1, tokens.shape[-1]).index_put((flat,), visual).view_as(tokens)
        return tokens + self.whole_word(batch.word_ids) + self.category(batch.category_ids)

    def encode(self, batch: EncoderBatch) -> torch.Tensor:
        out = self.backbone.encoder(inputs_embeds=self.embed(batch), attention_mask=batch.attention_mask)
        return out.last_hidden_state

    def target_logprobs(self, encoded: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor,
                        chunk_floats: int = 1 << 25) -> torch.Tensor:  # fmt: skip
        """(B, K, T) teacher-forced log-probs of K target texts per prompt (``targets`` (B, K, T), 0-padded, an
        all-zero row for no target) in one decoder pass over the B*K targets. Each prompt's K targets are packed
        into one decoder sequence of K blocks that attend only within their block (causally): T5's self-attention
        bias depends on the offset between positions only, so every block scores as if it were alone, and the
        cross-attention keys and values are computed once per prompt rather than once per candidate (the same
        result as expanding the encoder output over the K candidates, at 1/K of its memory and projection cost).
        The vocabulary projection runs in chunks of about ``chunk_floats`` logits to bound memory."""
        b, k, t = targets.shape
        start = torch.full((b, k, 1), self.backbone.config.decoder_start_token_id, dtype=targets.dtype,
                           device=targets.device)  # fmt: skip
        inputs = torch.cat([start, targets[..., :-1]], dim=-1).reshape(b, k * t)
        pos = torch.arange(k * t, device=targets.device)
        allowed = (pos[:, None] // t == pos[None, :] // t) & (pos[None, :] <= pos[:, None])
        dtype = self.backbone.get_input_embeddings().weight.dtype
        block_mask = torch.zeros(k * t, k * t, dtype=dtype, device=targets.device)
        block_mask = block_mask.masked_fill(~allowed, torch.finfo(dtype).min)[None, None].expand(b, 1, k * t, k * t)
        hidden = self.backbone.decoder(input_ids=inputs, attention_mask=block_mask, encoder_hidden_states=encoded,
                                       encoder_attention_mask=mask).last_hidden_state * self.scale  # fmt: skip
        hidden, labels = hidden.reshape(b * k, t, -1), targets.reshape(b * k, t)
        step = max(1, chunk_floats // (t * self.backbone.config.vocab_size))
        parts = []
        for first in range(0, len(labels), step):
            logits = self.backbone.lm_head(hidden[first : first + step]).float()
            picked = logits.gather(-1, labels[first : first + step, :, None]).squeeze(-1)
            parts.append(picked - torch.logsumexp(logits, dim=-1))
        return (torch.cat(parts) * (labels != 0)).view(b, k, t)


# ---- prompts ----


@dataclass
class Prompt:
    ids: list[int] = field(default_factory=list)
    words: list[int] = field(default_factory=list)
    visual: list[tuple[int, int]] = field(default_factory=list)  # (position of the first visual token, item)
    items_at: dict[int, list[int]] = field(default_factory=dict)  # item -> positions of its id tokens
    history: list[int] = field(default_factory=list)  # the history items shown, oldest first


class PromptBuilder:
    """Token-level prompts for (history, candidates) pairs; see the module docstring."""

    def __init__(self, tokenizer: Any, n_items: int, n_visual: int, max_history: int, max_length: int):
        self.n_visual, self.max_history, self.max_length = n_visual, max_history, max_length
        self.eos, self.pad = tokenizer.eos_token_id, tokenizer.pad_token_id
        if self.eos is None or self.pad != 0:
            raise ConfigError("VIP5 needs a T5 tokenizer: pad token id 0 and an end-of-sequence token")
        words = lambda text: [tokenizer(w, add_special_tokens=False).input_ids for w in text.split()]  # noqa: E731
        self.head, self.middle, self.sep = words(HEAD), words(MIDDLE), words(SEPARATOR)
        self.placeholder = tokenizer.convert_tokens_to_ids(VISUAL_PLACEHOLDER)
        if self.placeholder is None or self.placeholder == tokenizer.unk_token_id:
            self.placeholder = tokenizer.unk_token_id
        texts = [item_text(i) for i in range(1, n_items + 1)]
        self.item_tokens = [[]] + tokenizer(texts, add_special_tokens=False).input_ids if texts else [[]]
        self.fixed = sum(map(len, self.head + self.middle)) + 1  # + </s>

    def cost(self, item: int) -> int:
        return len(self.item_tokens[item]) + self.n_visual

    def target(self, item: int) -> list[int]:
        return self.item_tokens[item] + [self.eos]

    def history_fit(self, history: np.ndarray, candidates: np.ndarray) -> list[int]:
        """The most recent history items (at most max_history) that fit beside all the candidates; ConfigError if
        the candidates alone do not fit."""
        sep = sum(map(len, self.sep))
        used = self.fixed + sum(self.cost(c) for c in candidates) + sep * max(0, len(candidates) - 1)
        if used > self.max_length:
            raise ConfigError(
                f"{len(candidates)} candidates need {used} prompt tokens, over VIP5's max_length {self.max_length}: "
                f"shorten the candidate lists (rerank_top_k / rerank_eval_candidates) or raise --vip5_max_length"
            )
        kept: list[int] = []
        for item in np.asarray(history, dtype=np.int64)[::-1][: self.max_history]:
            extra = self.cost(int(item)) + (sep if kept else 0)
            if used + extra > self.max_length:
                break
            used += extra
            kept.append(int(item))
        return kept[::-1]

    def build(self, history: np.ndarray, candidates: np.ndarray) -> Prompt:
        candidates = [int(c) for c in candidates if c != 0]
        p = Prompt(history=self.history_fit(history, candidates))
        count = [0]  # words so far

        def add(tokens: list[int]) -> None:
            count[0] += 1
            p.ids.extend(tokens)
            p.words.extend([count[0]] * len(tokens))

        def add_items(items: list[int]) -> None:
            for k, item in enumerate(items):
                if k:
                    for w in self.sep:
                        add(w)
                p.items_at[item] = list(range(len(p.ids), len(p.ids) + len(self.item_tokens[item])))
                add(self.item_tokens[item])
                p.visual.append((len(p.ids), item))
                for _ in range(self.n_visual):
                    add([self.placeholder])

        for w in self.head:
            add(w)
        add_items(p.history)
        for w in self.middle:
            add(w)
        add_items(candidates)
        p.ids.append(self.eos)
        p.words.append(0)
        return p


def collate(prompts: list[Prompt], n_visual: int, device: torch.device | str) -> EncoderBatch:
    """Right-padded tensors for a batch of prompts."""
    length = max(len(p.ids) for p in prompts)
    ids, words, cats = (np.zeros((len(prompts), length), np.int64) for _ in range(3))
    mask = np.zeros((len(prompts), length), np.int64)
    starts, items = [], []
    for b, p in enumerate(prompts):
        ids[b, : len(p.ids)], words[b, : len(p.words)], mask[b, : len(p.ids)] = p.ids, p.words, 1
        for pos, item in p.visual:
            cats[b, pos : pos + n_visual] = 1
            starts.append(b * length + pos)
            items.append(item)
    as_t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.int64), device=device)  # noqa: E731
    return EncoderBatch(as_t(ids), as_t(mask), as_t(words), as_t(cats), as_t(starts), as_t(items))
