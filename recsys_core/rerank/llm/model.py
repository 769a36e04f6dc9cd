"""Load a causal LM + tokenizer for LLM reranking: short names, local folders, GGUF files, Hugging Face ids.

Weights are never waited for: a hub id is loaded from the local cache when it is there; otherwise, when
HF_HUB_OFFLINE is set or the hub does not answer within a few seconds, the load stops at once with a
MissingArtifactError that says how to provide the model. torch / transformers are imported inside the functions.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from recsys_core import hub
from recsys_core.errors import ConfigError, MissingArtifactError
from recsys_core.hub import GGUF_SUFFIX

log = logging.getLogger(__name__)

# Short names of params.yaml (llm.qwen_model). No Qwen3-1.6B was published: "qwen3-1.6b" is the 1.7B model.
MODEL_ALIASES = {"qwen3-0.6b": "Qwen/Qwen3-0.6B", "qwen3-1.6b": "Qwen/Qwen3-1.7B", "qwen3-1.7b": "Qwen/Qwen3-1.7B"}


QWEN_MODEL = hub.ModelSetting("llm.qwen_model", "the language model", "qwen3")


def resolve_model_id(name: str, setting: hub.ModelSetting = QWEN_MODEL) -> str:
    """A short name -> its Hugging Face id; a local folder or .gguf file -> its absolute path; else ``name`` as a
    Hugging Face id."""
    return hub.resolve(name, setting, MODEL_ALIASES, gguf=True)


def _check_gguf() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError as err:
        raise ConfigError(
            "loading a .gguf model file needs the gguf package, which is not installed: pip install gguf "
            "(or give --qwen_model a Hugging Face id or a folder of safetensors weights)"
        ) from err


def load_causal_lm(name: str, device: Any = "cpu", use_quantization: bool = False,
                   use_torch_compile: bool = False) -> tuple[Any, Any]:  # fmt: skip
    """(model in eval mode, fast tokenizer) for ``name`` (see :func:`resolve_model_id`).

    bf16 weights on CUDA, fp32 on CPU; ``use_quantization``: 4-bit NF4 (bitsandbytes, CUDA only, bf16 compute);
    ``use_torch_compile``: its decoder layers are compiled (:func:`compile_layers`).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = torch.device(device)
    check_quantization(use_quantization, device)
    source = resolve_model_id(name)
    kwargs: dict[str, Any] = {"dtype": torch.bfloat16 if device.type == "cuda" else torch.float32}
    tok_kwargs: dict[str, Any] = {}
    path = Path(source)
    if path.suffix.lower() == GGUF_SUFFIX and path.is_file():
        _check_gguf()
        source, kwargs["gguf_file"] = str(path.parent), path.name
        tok_kwargs["gguf_file"] = path.name
    elif hub_kwargs := hub.hub_kwargs(source, QWEN_MODEL):
        kwargs.update(hub_kwargs)
        tok_kwargs.update(hub_kwargs)
    if use_quantization:
        kwargs.update(nf4_kwargs(device))
    log.info("loading %s (%s%s)", source, kwargs["dtype"], ", 4-bit NF4" if use_quantization else "")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **tok_kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as err:
        if kwargs.get("local_files_only"):
            raise hub.missing(source, f"the cached copy is incomplete ({err})", QWEN_MODEL) from err
        raise MissingArtifactError(f"cannot load model {source!r}: {err}") from err
    if not use_quantization:
        model = model.to(device)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    if use_torch_compile:
        compile_layers(model)
    return model, tokenizer


def check_quantization(use_quantization: bool, device: Any) -> None:
    if use_quantization and device.type != "cuda":
        raise ConfigError(
            f"4-bit quantization (bitsandbytes NF4) needs a CUDA device, and the device is {device}: drop "
            "--use_quantization (llm.use_quantization: false) to run on the CPU"
        )


def nf4_kwargs(device: Any, skip_modules: list[str] | None = None) -> dict[str, Any]:
    """``from_pretrained`` arguments for 4-bit NF4 weights (double quantization, bf16 compute) on ``device``;
    ``skip_modules`` stay in bf16."""
    import torch
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
                                bnb_4bit_use_double_quant=True, llm_int8_skip_modules=skip_modules)  # fmt: skip
    return {"quantization_config": config,
            "device_map": {"": device.index if device.index is not None else torch.cuda.current_device()}}  # fmt: skip


# Prompts are padded to a multiple of this many tokens when the model is compiled, so that the compiled kernels
# see a handful of lengths rather than one per batch.
COMPILE_PAD_MULTIPLE = 64


def compile_layers(model: Any) -> int:
    """Regional compilation: ``torch.compile`` each decoder layer (they share one code path, so one compiled graph
    serves all of them) with a dynamic sequence length. Compiling the whole model instead recompiled for every new
    padded length and had not finished after 170 s on an H200 for Qwen3-0.6B. Returns the number of layers."""
    from torch import nn

    layers = next((m for name, m in model.named_modules() if name.endswith("layers") and isinstance(m, nn.ModuleList)
                   and len(m)), None)  # fmt: skip
    if layers is None:
        raise ConfigError(f"--use_torch_compile: found no decoder layers in {type(model).__name__}")
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)
