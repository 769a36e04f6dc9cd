"""Load a Qwen3-VL model + processor: a Hugging Face id (default ``Qwen/Qwen3-VL-2B-Instruct``) or a local folder.

As for the text LLM (``recsys_core.rerank.llm.model``), weights are never waited for: a hub id is read from the local
cache when it is there; otherwise, when HF_HUB_OFFLINE is set or the hub does not answer within a few seconds, the
load stops at once with a MissingArtifactError that says how to provide the model (``huggingface-cli download``,
HF_HOME, a local folder, or the offline smoke model of ``recsys tiny-model --arch qwen3vl``). torch / transformers are
imported inside the functions.
"""

from __future__ import annotations

import logging
from typing import Any

from recsys_core import hub
from recsys_core.errors import ConfigError, MissingArtifactError
from recsys_core.rerank.llm.model import check_quantization, nf4_kwargs

log = logging.getLogger(__name__)

DEFAULT_VL_MODEL = "Qwen/Qwen3-VL-2B-Instruct"
VL_MODEL_TYPES = ("qwen3_vl", "qwen3_vl_moe")
VL_MODEL = hub.ModelSetting("llm.qwen3vl_model", "the vision-language model", "qwen3vl")


def resolve_vl_model_id(name: str | None, setting: hub.ModelSetting = VL_MODEL) -> str:
    """A local folder -> its absolute path; anything else is taken as a Hugging Face id (empty: the default)."""
    return hub.resolve(str(name or DEFAULT_VL_MODEL).strip() or DEFAULT_VL_MODEL, setting)


def bound_pixels(processor: Any, min_pixels: int | None, max_pixels: int | None) -> None:
    """Bound the image processor's resolution: images are resized (aspect kept, sides multiples of patch x merge) to
    between ``min_pixels`` and ``max_pixels`` pixels, i.e. at most max_pixels / (patch * merge)^2 image tokens."""
    image_processor = processor.image_processor
    size = dict(image_processor.size)
    if min_pixels is not None:
        size["shortest_edge"] = int(min_pixels)
    if max_pixels is not None:
        size["longest_edge"] = int(max_pixels)
    if size["shortest_edge"] > size["longest_edge"]:
        raise ConfigError(
            f"features.vl_min_pixels={size['shortest_edge']} is above features.vl_max_pixels="
            f"{size['longest_edge']}: the image resolution floor must not exceed its cap"
        )
    image_processor.size = type(image_processor.size)(**size)


def image_factor(processor: Any) -> int:
    """Pixels per side of one image token: patch size x spatial merge (Qwen3-VL: 16 x 2 = 32)."""
    return int(processor.image_processor.patch_size) * int(processor.image_processor.merge_size)


def load_vl_model(name: str = DEFAULT_VL_MODEL, device: Any = "cpu", use_quantization: bool = False,
                  min_pixels: int | None = None, max_pixels: int | None = None,
                  setting: hub.ModelSetting = VL_MODEL) -> tuple[Any, Any]:  # fmt: skip
    """(``Qwen3VLForConditionalGeneration`` in eval mode, ``Qwen3VLProcessor``) for ``name`` (a hub id or folder).

    bf16 weights on CUDA, fp32 on the CPU; ``use_quantization``: 4-bit NF4 (bitsandbytes, CUDA only, bf16 compute).
    The processor's image resolution is bounded by ``min_pixels`` / ``max_pixels`` (None: the model's own bounds); its
    tokenizer has a pad token. ``setting`` names the params key the model came from (for messages)."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    device = torch.device(device)
    check_quantization(use_quantization, device)
    source = resolve_vl_model_id(name, setting)
    kwargs: dict[str, Any] = hub.hub_kwargs(source, setting)
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
    except OSError as err:
        raise hub.missing(source, f"loading its config failed ({err})", setting) from err
    if config.model_type not in VL_MODEL_TYPES:
        raise ConfigError(
            f"llm.qwen3vl_model {source!r} is a {config.model_type!r} model, not a Qwen3-VL model "
            f"({', '.join(VL_MODEL_TYPES)}): pass a Qwen3-VL id such as {DEFAULT_VL_MODEL} or a folder holding one"
        )
    model_kwargs: dict[str, Any] = {**kwargs, "dtype": torch.bfloat16 if device.type == "cuda" else torch.float32}
    if use_quantization:
        model_kwargs.update(nf4_kwargs(device, ["visual", "lm_head"]))  # the vision tower and the head stay in bf16
    log.info("loading %s (%s%s)", source, model_kwargs["dtype"], ", 4-bit NF4" if use_quantization else "")
    try:
        processor = AutoProcessor.from_pretrained(source, **kwargs)
        model = AutoModelForImageTextToText.from_pretrained(source, **model_kwargs)
    except OSError as err:
        if kwargs.get("local_files_only"):
            raise hub.missing(source, f"the cached copy is incomplete ({err})", setting) from err
        raise MissingArtifactError(f"cannot load the vision-language model {source!r}: {err}") from err
    if not use_quantization:
        model = model.to(device)
    bound_pixels(processor, min_pixels, max_pixels)
    tokenizer = processor.tokenizer
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, processor
