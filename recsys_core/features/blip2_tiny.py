"""A tiny, randomly initialised BLIP-2 with a working processor, built fully offline (for captions smoke runs and tests).

This is a SMOKE MODEL, not a captioner: its weights are random, so its "captions" are strings of words that have
nothing to do with the picture. What is real is the shape of things: ``Blip2ForConditionalGeneration`` (a ViT
vision tower, a Q-Former with learned query tokens, an OPT language model, all at tiny sizes) and a processor that
``Blip2Processor.from_pretrained(dir)`` / ``AutoProcessor`` load with no network: a ``BlipImageProcessor`` at a small
image size and an OPT-style word-level tokenizer (OPT's special ids ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2 = BOS = EOS,
``<unk>`` 3; ``</s>`` prepended to every text, as OPT does) with the ``<image>`` token that transformers'
``Blip2Processor`` expands into ``num_query_tokens`` placeholders (``config.image_token_index`` points at it).

The special tokens' embedding rows are zero, so with the tied output layer their logits are 0 while some word's
random logit is positive: the smoke model never ends a caption early or emits padding, so every caption it writes
is non-empty (``max_new_tokens`` words), which keeps the pipeline's checks meaningful.
"""

from __future__ import annotations

import string
from pathlib import Path

from recsys_core.io import write_model_folder

SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")  # OPT's ids 0..3; </s> is OPT's BOS and EOS
IMAGE_TOKEN = "<image>"
IMAGE_SIZE = 32  # pixels: 4 x 4 patches of 8, fast on a CPU
NUM_QUERY_TOKENS = 4
VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
          "image_size": IMAGE_SIZE, "patch_size": 8}  # fmt: skip
QFORMER = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
           "cross_attention_frequency": 1}  # fmt: skip
TEXT = {"hidden_size": 32, "ffn_dim": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "max_position_embeddings": 128, "word_embed_proj_dim": 32}  # fmt: skip

_WORDS = """a an the of with and on in at to for by from photo picture image close up view white black red blue green
yellow orange pink purple brown grey gray silver gold dark light bright small large big little tall long short round
square bottle box jar tube pack set kit case bag cover cap lid label logo text letters front back side top bottom
cream lotion shampoo soap brush comb mirror lipstick nail polish perfume powder makeup eye face hair skin body hand
game console controller disc cartoon character player screen art title cover box edition video man woman people
person boy girl dog cat car house tree flower water sky table wall floor background plastic glass metal wooden paper
shiny matte clear two three four many several some one is are has on its""".split()


def _vocab() -> dict[str, int]:
    """OPT's special tokens at OPT's ids, then the words, punctuation and digits (nothing else: a word-level
    vocabulary is enough for a smoke captioner); unknown words map to ``<unk>``."""
    tokens = list(SPECIALS) + list(dict.fromkeys(_WORDS)) + list(string.punctuation) + list(string.digits)
    return {token: i for i, token in enumerate(dict.fromkeys(tokens))}


def build_blip2_tokenizer():
    """An OPT-style fast tokenizer over :func:`_vocab` with ``<image>`` as its last token; the same on every machine."""
    from tokenizers import AddedToken, Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = _vocab()
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (*SPECIALS, IMAGE_TOKEN)])
    tok.post_processor = processors.TemplateProcessing(single="</s> $A", pair="</s> $A $B",
                                                       special_tokens=[("</s>", vocab["</s>"])])  # fmt: skip
    for i, text in enumerate(SPECIALS):
        if tok.token_to_id(text) != i:
            raise AssertionError(f"{text} got id {tok.token_to_id(text)}, expected {i}")
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="</s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>",
                                   model_max_length=512, padding_side="left",
                                   clean_up_tokenization_spaces=False)  # fmt: skip


def tiny_blip2_config(vocab_size: int, image_token_index: int):
    """A Blip2Config with the tiny sizes above, OPT's token ids and the ``<image>`` token's id."""
    from transformers import Blip2Config, Blip2QFormerConfig, Blip2VisionConfig, OPTConfig

    text = OPTConfig(vocab_size=vocab_size, bos_token_id=2, eos_token_id=2, pad_token_id=1, **TEXT)
    return Blip2Config(vision_config=Blip2VisionConfig(**VISION).to_dict(),
                       qformer_config=Blip2QFormerConfig(encoder_hidden_size=VISION["hidden_size"], **QFORMER).to_dict(),
                       text_config=text.to_dict(), num_query_tokens=NUM_QUERY_TOKENS,
                       image_token_index=image_token_index)  # fmt: skip


def build_blip2_processor(tokenizer):
    from transformers import Blip2Processor, BlipImageProcessor

    images = BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return Blip2Processor(image_processor=images, tokenizer=tokenizer, num_query_tokens=NUM_QUERY_TOKENS)


def write_tiny_blip2(out: Path, seed: int = 0) -> Path:
    """Write a SMOKE model (random weights, not a captioner): a tiny ``Blip2ForConditionalGeneration`` + its offline
    processor (image processor and tokenizer), to ``out`` (replaced if present); returns ``out``. Built in a
    temporary folder beside ``out`` and renamed into place, so readers never see half a model."""
    import torch
    from transformers import Blip2ForConditionalGeneration

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = build_blip2_tokenizer()
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    config = tiny_blip2_config(-(-len(tokenizer) // 64) * 64, image_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Blip2ForConditionalGeneration(config).eval()
    with torch.no_grad():  # zero rows: special tokens score 0 and never win greedy decoding (module docstring)
        model.get_input_embeddings().weight[[*range(len(SPECIALS)), image_id]] = 0.0
    processor = build_blip2_processor(tokenizer)
    note = {"what": "smoke model for offline pipelines: random weights, not a captioner", "arch": "blip2",
            "seed": seed, "parameters": sum(p.numel() for p in model.parameters())}  # fmt: skip
    return write_model_folder(out, [model, processor], note)
