"""Verbalizer labels: each candidate is named by a label that is exactly ONE token where it matters.

The score of a candidate is the logit of its label's token at the answer slot, so a label must be a single token
(a) on its own, (b) right after the assistant prefix of the chat template (where the answer is read) and as written
in the prompt's candidate list, and (c) distinct from every other label's token. Numbers fail (a) in Qwen's
vocabulary from 10 on ("10" is "1" + "0"), which is why the pool is made of letters: Latin, then Greek and Cyrillic
letters that do not look like a Latin letter (or each other), so the prompt stays unambiguous to read.
"""

from __future__ import annotations

import string
from typing import NamedTuple

from recsys_core.errors import ConfigError

# Ordered pool: A-Z, a-z, then Greek and Cyrillic letters that are not look-alikes of Latin (or Greek) letters.
LABEL_POOL: tuple[str, ...] = (
    tuple(string.ascii_uppercase)
    + tuple(string.ascii_lowercase)
    + tuple("ΓΔΘΛΞΠΣΦΨΩ")
    + tuple("αβγδεζηθλμξπστφψω")
    + tuple("БДЖЗИЙЛЦЧШЩЫЭЮЯ")
    + tuple("бвджзийлцчшщыэюя")
)

# How a candidate is written in the prompt; labels are checked in this very context.
CANDIDATE_LINE = "{label}. {text}"
# Line endings that can precede a label in the candidate list (the header line, or the previous candidate's text).
_LINE_CONTEXTS = ("Candidates:\n", "Item title\n", "Item (2004)\n")


class Label(NamedTuple):
    """A verbalizer label: its text and its single token id."""

    text: str
    token_id: int


def candidate_line(label: str, text: str) -> str:
    return CANDIDATE_LINE.format(label=label, text=text)


def tokenizer_name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def answer_prefix_text(tokenizer) -> str:
    """A one-turn conversation rendered by the chat template up to the answer slot: it ends with the assistant
    prefix (Qwen3, thinking off: ``<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n``)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            f"tokenizer {tokenizer_name(tokenizer)} has no chat template: use an instruct/chat model (Qwen3 ships one)"
        )
    messages = [{"role": "user", "content": "Which one?"}]
    kwargs = {"tokenize": False, "enable_thinking": False}
    with_prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, **kwargs)
    without = tokenizer.apply_chat_template(messages, add_generation_prompt=False, **kwargs)
    if not with_prompt.startswith(without) or with_prompt == without:
        raise ConfigError(
            f"the chat template of tokenizer {tokenizer_name(tokenizer)} adds no generation prompt after the user "
            "turn, so the answer slot cannot be located"
        )
    return with_prompt


class _Checker:
    """Checks labels against one tokenizer; the contexts are encoded once."""

    def __init__(self, tokenizer, answer_prefix_ids: list[int] | None = None):
        self.tokenizer = tokenizer
        if answer_prefix_ids is None:
            answer_text = answer_prefix_text(tokenizer)
            answer_ids = _encode(tokenizer, answer_text)
        else:
            answer_ids = [int(i) for i in answer_prefix_ids]
            answer_text = tokenizer.decode(answer_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            if _encode(tokenizer, answer_text) != answer_ids:
                raise ConfigError(
                    f"answer_prefix_ids do not survive decode + encode with tokenizer {tokenizer_name(tokenizer)}: "
                    "pass the ids of a tokenized prompt (the chat template rendered with add_generation_prompt=True)"
                )
        # (text, ids) contexts the label must follow as exactly one token
        self.contexts = [(answer_text, answer_ids)]
        self.contexts += [(ctx, _encode(tokenizer, ctx)) for ctx in _LINE_CONTEXTS]
        tail = candidate_line("", "x")
        self.line_tail = (tail, _encode(tokenizer, tail))

    def token_id(self, label: str) -> int | None:
        """The label's single token id if it passes checks (a) and (b), else None."""
        alone = _encode(self.tokenizer, label)
        if len(alone) != 1 or label != label.strip() or not label:
            return None
        (token,) = alone
        for i, (ctx, ctx_ids) in enumerate(self.contexts):
            suffix, suffix_ids = ("", []) if i == 0 else self.line_tail
            if _encode(self.tokenizer, ctx + label + suffix) != ctx_ids + [token] + suffix_ids:
                return None
        return token


def choose_labels(tokenizer, n: int, answer_prefix_ids: list[int] | None = None) -> list[Label]:
    """The first ``n`` labels of :data:`LABEL_POOL` that are one token on their own, one token right after the
    answer prefix (``answer_prefix_ids``, or the chat template's generation prompt) and in the candidate list, with
    distinct ids. Raises ConfigError when fewer than ``n`` exist: no fallback to multi-token labels."""
    if n < 1:
        raise ConfigError(f"the number of labels must be >= 1, got {n}")
    checker = _Checker(tokenizer, answer_prefix_ids)
    chosen: list[Label] = []
    seen: set[int] = set()
    for text in LABEL_POOL:
        token = checker.token_id(text)
        if token is None or token in seen:
            continue
        seen.add(token)
        chosen.append(Label(text, token))
        if len(chosen) == n:
            return chosen
    raise ConfigError(
        f"tokenizer {tokenizer_name(tokenizer)} has only {len(chosen)} single-token verbalizer labels "
        f"(of {len(LABEL_POOL)} tried), fewer than the {n} candidates per prompt asked for: "
        f"lower --qwen_max_candidates to {len(chosen)} or fewer"
    )


def label_ids(tokenizer, labels: list[str] | list[Label]) -> list[Label]:
    """Validate given labels (texts or Labels; checks a-c) and return them with their token ids; ConfigError names
    the first label that fails."""
    checker = _Checker(tokenizer)
    out: list[Label] = []
    seen: dict[int, str] = {}
    for text in (label.text if isinstance(label, Label) else label for label in labels):
        token = checker.token_id(text)
        if token is None:
            raise ConfigError(
                f"label {text!r} is not a single token for tokenizer {tokenizer_name(tokenizer)} after the answer "
                "prefix or in the candidate list: take labels from choose_labels()"
            )
        if token in seen:
            raise ConfigError(f"labels {seen[token]!r} and {text!r} share token id {token}: labels must be distinct")
        seen[token] = text
        out.append(Label(text, token))
    return out
