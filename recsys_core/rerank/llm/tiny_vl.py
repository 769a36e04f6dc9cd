"""A tiny, randomly initialised Qwen3-VL with Qwen's real tokenizer and a Qwen3-VL processor, built fully offline.

This is a SMOKE MODEL for offline pipelines and tests, not a recommender (nor a captioner): its weights are random,
so its rankings and its generated texts are noise. What is real is the shape of things:
``Qwen3VLForConditionalGeneration`` with the Qwen3-VL architecture at tiny sizes (a 2-block vision tower with
16-pixel patches, 2x2 spatial merge and DeepStack, a 2-layer text model with interleaved M-RoPE), Qwen's real
byte-level BPE with Qwen3's special tokens at Qwen3's ids (``<|vision_start|>`` 151652, ``<|vision_end|>`` 151653,
``<|image_pad|>`` 151655, ``<|video_pad|>`` 151656, as Qwen3-VL's config), the Qwen3-VL image processor (Qwen's
mean/std, patch 16, merge 2) with pixels bounded so that small images stay cheap (32x32 px = one image token), and a
Qwen3-VL-style chat template: a message's content is a string or a list of parts, ``{"type": "image"}`` becomes
``<|vision_start|><|image_pad|><|vision_end|>`` (the processor expands the pad to the image's token count) and
``enable_thinking=False`` adds the empty ``<think>\\n\\n</think>\\n\\n`` block after the assistant prefix, as in the
Qwen3 smoke model (``recsys_core.rerank.llm.tiny``). The folder loads with ``AutoProcessor.from_pretrained(dir)`` and
``Qwen3VLForConditionalGeneration.from_pretrained(dir)`` (or ``AutoModelForImageTextToText``) with no network.
"""

from __future__ import annotations

from pathlib import Path

from recsys_core.io import write_model_folder
from recsys_core.rerank.llm.tiny import QWEN3_CHAT_TEMPLATE, QWEN3_VOCAB_SIZE, TINY_SIZES, load_qwen_tokenizer

# Qwen3-VL's chat template for this smoke model (no tools, no video timestamps): system/user/assistant turns whose
# content is a string or a list of {"type": "text", "text": ...} / {"type": "image"} parts.
_RENDER_CONTENT = r"""{%- macro render(content) -%}
    {%- if content is string -%}
        {{- content -}}
    {%- else -%}
        {%- for part in content -%}
            {%- if part.type == 'image' or 'image' in part or 'image_url' in part -%}
                {{- '<|vision_start|><|image_pad|><|vision_end|>' -}}
            {%- elif part.type == 'video' or 'video' in part -%}
                {{- '<|vision_start|><|video_pad|><|vision_end|>' -}}
            {%- elif 'text' in part -%}
                {{- part.text -}}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
{%- endmacro -%}
"""
# Qwen3's template (the text smoke model's) with every message content rendered by the macro above.
QWEN3VL_CHAT_TEMPLATE = _RENDER_CONTENT + QWEN3_CHAT_TEMPLATE.replace(
    "messages[0].content", "render(messages[0].content)"
).replace("message.content", "render(message.content)")

# Qwen3-VL's vision geometry (patch 16, 2x2 merge, 2 frames per temporal patch) at tiny widths.
TINY_VISION = {
    "depth": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "patch_size": 16,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "num_position_embeddings": 256,  # a 16x16 grid of learned positions, interpolated to the image's grid
    "deepstack_visual_indexes": [1],
}
# Qwen3-VL's image normalisation (mean = std = 0.5) and its token geometry; pixels bounded for smoke runs: at least
# 32x32 (one image token), at most 224x224 (49 image tokens), as params.yaml's features.vl_min/max_pixels.
# M-RoPE: the head's rotary pairs split over (time, height, width), interleaved; Qwen3-VL's [24, 20, 20] of 64
# pairs scaled to the tiny head_dim 16 (8 pairs).
TINY_MROPE_SECTION = (4, 2, 2)
IMAGE_MEAN = IMAGE_STD = [0.5, 0.5, 0.5]
TINY_MIN_PIXELS = 32 * 32
TINY_MAX_PIXELS = 224 * 224


def tiny_processor(min_pixels: int = TINY_MIN_PIXELS, max_pixels: int = TINY_MAX_PIXELS):
    """A ``Qwen3VLProcessor``: Qwen's real tokenizer, Qwen3-VL's image / video processors (pixels bounded), the
    Qwen3-VL-style chat template on both the processor and the tokenizer."""
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    tokenizer = load_qwen_tokenizer()
    tokenizer.chat_template = QWEN3VL_CHAT_TEMPLATE
    geometry = {"patch_size": 16, "temporal_patch_size": 2, "merge_size": 2, "image_mean": IMAGE_MEAN,
                "image_std": IMAGE_STD}  # fmt: skip
    image_processor = Qwen2VLImageProcessor(size={"shortest_edge": min_pixels, "longest_edge": max_pixels}, **geometry)
    video_processor = Qwen3VLVideoProcessor(size={"shortest_edge": min_pixels, "longest_edge": max_pixels * 4},
                                            **geometry)  # fmt: skip
    return Qwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
                            chat_template=QWEN3VL_CHAT_TEMPLATE)  # fmt: skip


def tiny_qwen3vl_config(tokenizer):
    """A ``Qwen3VLConfig`` with Qwen3-VL's architecture at tiny sizes and the tokenizer's vision token ids."""
    from transformers import Qwen3VLConfig

    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}  # fmt: skip
    text = {
        **TINY_SIZES,
        "vocab_size": QWEN3_VOCAB_SIZE,
        "hidden_act": "silu",
        "max_position_embeddings": 40960,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 5_000_000.0,
            "mrope_interleaved": True,
            "mrope_section": list(TINY_MROPE_SECTION),
        },  # fmt: skip
        "attention_bias": False,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tokenizer.eos_token_id,
    }
    vision = {**TINY_VISION, "out_hidden_size": TINY_SIZES["hidden_size"], "hidden_act": "gelu_pytorch_tanh"}
    return Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)


def write_tiny_qwen3vl(out: Path, seed: int = 0) -> Path:
    """Write a random tiny ``Qwen3VLForConditionalGeneration`` + processor (tokenizer, image and video processors,
    chat template) to ``out`` (replaced if present) and return it. SMOKE model: random weights, not a recommender.

    About 20 M parameters, nearly all in the 151,936-row embedding and output layer of Qwen3's vocabulary (untied: a
    random model with tied ones only repeats the prompt's last token when it generates); saved in bf16 (about 40 MB). Built in a temporary folder beside ``out`` and renamed into place, so readers never see half a
    model."""
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    processor = tiny_processor()
    config = tiny_qwen3vl_config(processor.tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3VLForConditionalGeneration(config).to(torch.bfloat16).eval()
    note = {
        "what": "smoke model for offline pipelines: random weights, not a recommender",
        "arch": "qwen3vl",
        "seed": seed,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    return write_model_folder(out, [model, processor], note)
