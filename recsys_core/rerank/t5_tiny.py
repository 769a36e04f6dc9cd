"""A tiny, randomly initialised T5 with a working tokenizer, built fully offline (for VIP5 smoke runs and tests).

This is a SMOKE MODEL, not a recommender: its weights are random, so its rankings are noise. What is real is the
shape of things: ``T5ForConditionalGeneration`` (tiny sizes, t5-small's ReLU feed-forward and tied embeddings), and a
T5-style tokenizer: a Unigram model over "▁"-prefixed pieces (as SentencePiece does) with a fixed built-in vocabulary
(a few hundred English words, digit pairs, every printable character, so nothing is unknown and an item id such as
``item_1682`` becomes ``▁item _ 16 82`` as in T5), T5's special ids (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2), ``</s>`` appended to every input, and the sentinel tokens
``<extra_id_0..99>`` at the top of the vocabulary (``<extra_id_0>`` highest, as in T5). The folder written by
:func:`write_tiny_t5` loads with ``AutoTokenizer.from_pretrained(dir)`` and
``T5ForConditionalGeneration.from_pretrained(dir)`` with no network.
"""

from __future__ import annotations

import string
from pathlib import Path

from recsys_core.io import write_model_folder

TINY_T5_SIZES = {"d_model": 64, "d_kv": 16, "d_ff": 128, "num_layers": 2, "num_decoder_layers": 2, "num_heads": 4}
# t5-small's published configuration (config.json of google-t5/t5-small), for benchmarks with random weights.
T5_SMALL_SIZES = {"d_model": 512, "d_kv": 64, "d_ff": 2048, "num_layers": 6, "num_decoder_layers": 6, "num_heads": 8,
                  "vocab_size": 32128}  # fmt: skip
SPECIALS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2 as in T5
N_EXTRA_IDS = 100

_WORDS = """the of and to a in is it you that he was for on are with as I his they be at one have this from or had by
hot word but what some we can out other were all there when up use your how said an each she which do their time if
will way about many then them write would like so these her long make thing see him two has look more day could go
come did number sound no most people my over know water than call first who may down side been now find any new work
part take get place made live where after back little only round man year came show every good me give our under
name very through just form sentence great think say help low line differ turn cause much mean before move right boy
old too same tell does set three want air well also play small end put home read hand port large spell add even land
here must big high such follow act why ask men change went light kind off need house picture try us again animal
point mother world near build self earth father user item items recommend recommendation following candidates given
candidate history interaction bought purchased watched interacted next choose select best buy movie product rated
liked Given Which What The A""".split()


def _pieces() -> list[tuple[str, float]]:
    """The fixed Unigram vocabulary: whole words and punctuation (preferred), digit pairs (so that ids take a few
    pieces, as in T5), then every printable character alone and after "▁" (so that no text is unknown)."""
    chars = [c for c in string.printable if not c.isspace()]
    pieces = [(f"▁{w}", -5.0) for w in dict.fromkeys(_WORDS)] + [(f"▁{c}", -5.0) for c in string.punctuation]
    pieces += [("▁", -6.0)] + [(f"{n:02d}", -8.0) for n in range(100)]
    pieces += [(c, -10.0) for c in chars] + [(f"▁{c}", -9.0) for c in chars if c not in string.punctuation]
    return list(dict(pieces).items())


def build_t5_tokenizer():
    """A T5-style fast tokenizer (see the module docstring); no training, the same on every machine."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(Unigram([(t, 0.0) for t in SPECIALS] + _pieces(), unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always"),
                                                 pre_tokenizers.Split("_", "isolated"), pre_tokenizers.Digits()])  # fmt: skip
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    extra = [f"<extra_id_{i}>" for i in reversed(range(N_EXTRA_IDS))]  # <extra_id_0> gets the highest id, as in T5
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in extra])
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])  # fmt: skip
    for i, text in enumerate(SPECIALS):
        if tok.token_to_id(text) != i:
            raise AssertionError(f"{text} got id {tok.token_to_id(text)}, expected {i}")
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   additional_special_tokens=list(reversed(extra)), model_max_length=512,
                                   clean_up_tokenization_spaces=False)  # fmt: skip


def tiny_t5_config(vocab_size: int, **overrides):
    """A T5Config with TINY_T5_SIZES and T5's token ids and conventions; ``overrides`` replace any of them."""
    from transformers import T5Config

    settings = {**TINY_T5_SIZES, "feed_forward_proj": "relu", "relative_attention_num_buckets": 32,
                "relative_attention_max_distance": 128, "dropout_rate": 0.1, "tie_word_embeddings": True,
                "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0}  # fmt: skip
    return T5Config(vocab_size=vocab_size, **{**settings, **overrides})


def write_tiny_t5(out: Path, seed: int = 0) -> Path:
    """Write a SMOKE model (random weights, not a recommender): a tiny ``T5ForConditionalGeneration`` + its offline
    tokenizer, to ``out`` (replaced if present); returns ``out``. Built in a temporary folder beside ``out`` and
    renamed into place, so readers never see half a model."""
    import torch
    from transformers import T5ForConditionalGeneration

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = build_t5_tokenizer()
    config = tiny_t5_config(-(-len(tokenizer) // 64) * 64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = T5ForConditionalGeneration(config).eval()
    note = {"what": "smoke model for offline pipelines: random weights, not a recommender", "arch": "t5",
            "seed": seed, "parameters": sum(p.numel() for p in model.parameters())}  # fmt: skip
    return write_model_folder(out, [model, tokenizer], note)
