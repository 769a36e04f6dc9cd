"""Reranking prompts that end exactly at the answer slot and fit the token budget without losing a candidate.

A prompt is the chat template (``add_generation_prompt=True``, ``enable_thinking=False``) around one user turn::

    Recommend the next item for this user.

    The user's history, oldest first and most recent last:
    - <oldest kept item>
    - <most recent item>

    Candidates:
    A. <candidate text>
    B. <candidate text>

    Which candidate will the user choose next? Answer with the candidate's label only.

followed by the assistant prefix (Qwen3: ``<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n``), so the model's next
token after the last prompt id is the answer; a candidate's score is the logit of its label token there.

Budget: the candidate list, every label and the answer slot are never cut. When the prompt is longer than
``max_seq_length`` tokens, history items are dropped from the oldest (keeping one while that can fit), then every
item text (history and candidates) is cut to one per-item token cap, the largest that fits (so the longest texts are
cut first and short ones are untouched), with "…" marking a cut; if even a 1-token cap cannot fit, ConfigError.
"""

from __future__ import annotations

import unicodedata
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from recsys_core.errors import ConfigError
from recsys_core.rerank.llm.labels import Label, candidate_line, label_ids, tokenizer_name

INSTRUCTION = "Recommend the next item for this user."
HISTORY_HEADER = "The user's history, oldest first and most recent last:"
NO_HISTORY = "The user's history: (none)"
CANDIDATES_HEADER = "Candidates:"
ANSWER_INSTRUCTION = "Which candidate will the user choose next? Answer with the candidate's label only."
EMPTY_TEXT = "(untitled item)"
ELLIPSIS = "…"
MIN_ITEM_TOKENS = 1


@dataclass(frozen=True)
class Shortened:
    """What the token budget cut from one prompt (all zero / None when it fit as is)."""

    history_dropped: int = 0  # oldest history items removed for the budget (the max_history cut is not counted)
    texts_truncated: int = 0  # item texts (history + candidates) cut to item_token_cap
    item_token_cap: int | None = None  # tokens kept per item text (before the "…"); None = no cut
    tokens_cut: int = 0  # prompt tokens before shortening minus after
    untrimmed_length: int = 0  # prompt tokens with the last max_history items and full texts

    @property
    def any(self) -> bool:
        return bool(self.history_dropped or self.texts_truncated)


@dataclass(frozen=True)
class Prompt:
    """One tokenized prompt; ``input_ids[-1]`` is the last token before the answer."""

    input_ids: list[int]
    labels: list[Label]  # one per candidate, in candidate order
    label_positions: list[int]  # index in input_ids of each candidate's label token in the candidate list
    shortened: Shortened
    text: str  # the rendered prompt, for logs and debugging

    def __len__(self) -> int:
        return len(self.input_ids)


def _clean(text, banned: Sequence[str]) -> str:
    """One line of NFC text with no chat-control tokens in it (an item title must not close the user turn)."""
    out = unicodedata.normalize("NFC", "" if text is None else str(text))
    for token in banned:
        out = out.replace(token, " ")
    return " ".join(out.split()) or EMPTY_TEXT


def _largest(lo: int, hi: int, fits) -> int | None:
    """The largest value in [lo, hi] for which the monotone (true, then false) ``fits`` holds; None if not even lo."""
    if not fits(lo):
        return None
    while lo < hi:  # invariant: fits(lo)
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


class _Builder:
    def __init__(self, tokenizer, history, candidates, labels: list[Label]):
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError(
                f"tokenizer {tokenizer_name(tokenizer)} is not a fast (Rust) tokenizer: the prompt builder needs "
                "its offsets to check that every label stays one token; load it with AutoTokenizer (use_fast=True)"
            )
        self.tok = tokenizer
        banned = sorted(tokenizer.get_added_vocab(), key=len, reverse=True)
        self.history = [_clean(t, banned) for t in history]
        self.candidates = [_clean(t, banned) for t in candidates]
        self.labels = labels
        texts = self.history + self.candidates
        encoded = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        self.item_ids: list[list[int]] = [list(ids) for ids in encoded]

    def _cut(self, index: int, text: str, cap: int | None) -> str:
        ids = self.item_ids[index]
        if cap is None or len(ids) <= cap:
            return text
        head = self.tok.decode(ids[:cap], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        return head.rstrip("\ufffd").rstrip() + ELLIPSIS

    def render(self, n_history: int, cap: int | None) -> tuple[str, list[int]]:
        """The prompt text with the last ``n_history`` history items and texts cut to ``cap`` tokens, and the char
        offset of each label in it."""
        start = len(self.history) - n_history
        hist = [self._cut(i, self.history[i], cap) for i in range(start, len(self.history))]
        parts = [INSTRUCTION, ""]
        if hist:
            parts += [HISTORY_HEADER] + [f"- {t}" for t in hist]
        else:
            parts.append(NO_HISTORY)
        parts += ["", CANDIDATES_HEADER]
        content = "\n".join(parts) + "\n"
        label_offsets = []
        base = len(self.history)
        for j, (label, text) in enumerate(zip(self.labels, self.candidates, strict=True)):
            label_offsets.append(len(content))
            content += candidate_line(label.text, self._cut(base + j, text, cap)) + "\n"
        content += "\n" + ANSWER_INSTRUCTION
        rendered = self.tok.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True, enable_thinking=False
        )
        shift = rendered.index(content)
        return rendered, [shift + o for o in label_offsets]

    def length(self, n_history: int, cap: int | None) -> int:
        return len(self.tok.encode(self.render(n_history, cap)[0], add_special_tokens=False))

    def best_cap(self, n_history: int, budget: int) -> int | None:
        """The largest per-item token cap that fits with ``n_history`` items, or None if even the minimum does not."""
        longest = max(len(ids) for ids in self.item_ids)
        return _largest(MIN_ITEM_TOKENS, longest, lambda cap: self.length(n_history, cap) <= budget)

    def finish(self, n_history: int, cap: int | None, untrimmed: int, max_history_kept: int) -> Prompt:
        text, offsets = self.render(n_history, cap)
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, spans = list(enc["input_ids"]), enc["offset_mapping"]
        by_start: dict[int, list[int]] = defaultdict(list)
        for index, (begin, _end) in enumerate(spans):
            by_start[begin].append(index)
        positions = []
        for label, offset in zip(self.labels, offsets, strict=True):
            hits = by_start.get(offset, [])
            if len(hits) != 1 or ids[hits[0]] != label.token_id or spans[hits[0]][1] != offset + len(label.text):
                raise ConfigError(
                    f"label {label.text!r} is not the single token {label.token_id} in the candidate list of the "
                    f"prompt for tokenizer {tokenizer_name(self.tok)}: take labels from choose_labels()"
                )
            positions.append(hits[0])
        start = len(self.history) - n_history
        truncated = 0
        if cap is not None:
            kept = list(range(start, len(self.history))) + list(
                range(len(self.history), len(self.history) + len(self.candidates))
            )
            truncated = sum(len(self.item_ids[i]) > cap for i in kept)
        shortened = Shortened(
            history_dropped=max_history_kept - n_history,
            texts_truncated=truncated,
            item_token_cap=cap if truncated else None,
            tokens_cut=untrimmed - len(ids),
            untrimmed_length=untrimmed,
        )
        return Prompt(ids, list(self.labels), positions, shortened, text)


def _check_args(candidates, labels, max_history: int, max_seq_length: int) -> None:
    if not candidates:
        raise ValueError("a reranking prompt needs at least one candidate")
    if len(labels) < len(candidates):
        raise ConfigError(
            f"{len(candidates)} candidates but only {len(labels)} labels: choose_labels(tokenizer, n) with n >= the "
            "number of candidates (--qwen_max_candidates)"
        )
    if max_history < 0:
        raise ConfigError(f"qwen_max_history must be >= 0, got {max_history}")
    if max_seq_length < 1:
        raise ConfigError(f"qwen_max_seq_length must be >= 1, got {max_seq_length}")


def _build(tokenizer, history, candidates, labels: list[Label], max_history: int, max_seq_length: int) -> Prompt:
    history = list(history)[-max_history:] if max_history else []
    builder = _Builder(tokenizer, history, candidates, labels[: len(candidates)])
    n_history = len(history)
    untrimmed = builder.length(n_history, None)
    if untrimmed <= max_seq_length:
        return builder.finish(n_history, None, untrimmed, len(history))
    if n_history > 1:  # 1. drop history items from the oldest, keeping one: the most that fit, by bisection
        most = _largest(1, n_history - 1, lambda n: builder.length(n, None) <= max_seq_length)
        if most is not None:
            return builder.finish(most, None, untrimmed, len(history))
        n_history = 1
    for n in (n_history, 0) if n_history else (0,):  # 2. one per-item token cap; 3. the last history item too
        cap = builder.best_cap(n, max_seq_length)
        if cap is not None:
            return builder.finish(n, cap, untrimmed, len(history))
    needed = builder.length(0, MIN_ITEM_TOKENS)
    raise ConfigError(
        f"qwen_max_seq_length={max_seq_length} is too small: a prompt with {len(candidates)} candidates needs "
        f"{needed} tokens even with no history and every item text cut to {MIN_ITEM_TOKENS} token(s) "
        f"(untrimmed: {untrimmed}); raise --qwen_max_seq_length to at least {needed} or lower --qwen_max_candidates"
    )


def build_prompt(
    tokenizer,
    history: list[str],
    candidates: list[str],
    labels: list[str] | list[Label],
    max_history: int,
    max_seq_length: int,
) -> Prompt:
    """The prompt for one user: ``history`` item texts oldest first (the last ``max_history`` are used),
    ``candidates`` item texts named by ``labels[:len(candidates)]`` (validated as single tokens), at most
    ``max_seq_length`` tokens, ending at the answer slot."""
    _check_args(candidates, labels, max_history, max_seq_length)
    checked = label_ids(tokenizer, list(labels[: len(candidates)]))
    return _build(tokenizer, history, candidates, checked, max_history, max_seq_length)


def build_prompts(
    tokenizer,
    histories: Sequence[list[str]],
    candidates: Sequence[list[str]],
    labels: list[str] | list[Label],
    max_history: int,
    max_seq_length: int,
) -> list[Prompt]:
    """:func:`build_prompt` for a batch (labels validated once)."""
    if len(histories) != len(candidates):
        raise ValueError(f"{len(histories)} histories but {len(candidates)} candidate lists")
    width = max((len(c) for c in candidates), default=0)
    checked = label_ids(tokenizer, list(labels[:width]))
    out = []
    for history, cands in zip(histories, candidates, strict=True):
        _check_args(cands, labels, max_history, max_seq_length)
        out.append(_build(tokenizer, history, cands, checked, max_history, max_seq_length))
    return out


def left_pad(batch: Sequence[Prompt | Sequence[int]], pad_id: int, multiple: int = 1) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` (B, L) int64 tensors, padded on the left so that position -1 is every
    row's answer slot, L rounded up to a ``multiple`` (fewer distinct shapes for a compiled model). Positions are not
    passed: RoPE depends only on relative positions, and pad keys are masked."""
    rows = [list(p.input_ids) if isinstance(p, Prompt) else [int(i) for i in p] for p in batch]
    if not rows or not all(rows):
        raise ValueError("left_pad needs a non-empty batch of non-empty prompts")
    width = -(-max(len(r) for r in rows) // multiple) * multiple
    input_ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        input_ids[b, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        attention_mask[b, width - len(row) :] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}
