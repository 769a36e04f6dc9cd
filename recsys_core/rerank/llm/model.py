"""Load a causal LM + tokenizer for LLM reranking: short names, local folders, GGUF files, Hugging Face ids.

Weights are never waited for: a hub id is loaded from the local cache when it is there; otherwise, when
HF_HUB_OFFLINE is set or the hub does not answer within a few seconds, the load stops at once with a
MissingArtifactError that says how to provide the model. torch / transformers are imported inside the functions.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from recsys_core.errors import ConfigError, MissingArtifactError
from recsys_core.features.clip import DEFAULT_ENDPOINT, hf_hub_cache, hub_offline, unreachable

log = logging.getLogger(__name__)

# Short names of params.yaml (llm.qwen_model). No Qwen3-1.6B was published: "qwen3-1.6b" is the 1.7B model.
MODEL_ALIASES = {"qwen3-0.6b": "Qwen/Qwen3-0.6B", "qwen3-1.6b": "Qwen/Qwen3-1.7B", "qwen3-1.7b": "Qwen/Qwen3-1.7B"}
GGUF_SUFFIX = ".gguf"


def resolve_model_id(name: str) -> str:
    """A short name -> its Hugging Face id; a local folder or .gguf file -> its absolute path; else ``name`` as a
    Hugging Face id."""
    name = str(name).strip()
    if not name:
        raise ConfigError("llm.qwen_model is empty: give a short name (qwen3-0.6b), a Hugging Face id or a folder")
    if name.lower() in MODEL_ALIASES:
        return MODEL_ALIASES[name.lower()]
    path = Path(name).expanduser()
    if path.is_dir() or (path.is_file() and path.suffix.lower() == GGUF_SUFFIX):
        return str(path.resolve())
    if name.lower().endswith(GGUF_SUFFIX) or name.startswith((".", "/", "~")):
        raise MissingArtifactError(f"llm.qwen_model {name!r}: no such model folder or .gguf file")
    return name


def _missing(model_id: str, why: str) -> MissingArtifactError:
    return MissingArtifactError(
        f"the weights of {model_id!r} are not available: not in the Hugging Face cache {hf_hub_cache()}, and {why}. "
        f"Provide them: on a connected machine run `huggingface-cli download {model_id}` (or `hf download "
        f"{model_id}`) with HF_HOME=<dir>, and copy <dir>/hub to {hf_hub_cache()} here (HF_HOME / HF_HUB_CACHE "
        f"choose that folder); or pass --qwen_model /path/to/dir, a folder holding the model (e.g. the offline "
        f"smoke model written by `recsys tiny-model`)."
    )


def is_cached(model_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(model_id, "config.json", cache_dir=str(hf_hub_cache()))
    except Exception:  # a malformed id, an unreadable cache: not cached
        return False
    return isinstance(found, str)


def _local_only(model_id: str) -> bool:
    """Whether ``model_id`` (a hub id) must be read with local_files_only: True when cached, offline or the hub is
    unreachable (and then only if it is cached; else MissingArtifactError at once)."""
    if is_cached(model_id):
        return True
    if hub_offline():
        raise _missing(model_id, "HF_HUB_OFFLINE is set, so nothing is downloaded")
    endpoint = os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")
    why = unreachable(f"{endpoint}/api/models/{model_id}")
    if why:
        raise _missing(model_id, why)
    return False


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
    if use_quantization and device.type != "cuda":
        raise ConfigError(
            f"4-bit quantization (bitsandbytes NF4) needs a CUDA device, and the device is {device}: drop "
            "--use_quantization (llm.use_quantization: false) to run on the CPU"
        )
    source = resolve_model_id(name)
    kwargs: dict[str, Any] = {"dtype": torch.bfloat16 if device.type == "cuda" else torch.float32}
    tok_kwargs: dict[str, Any] = {}
    path = Path(source)
    if path.suffix.lower() == GGUF_SUFFIX and path.is_file():
        _check_gguf()
        source, kwargs["gguf_file"] = str(path.parent), path.name
        tok_kwargs["gguf_file"] = path.name
    elif not path.is_dir():
        if _local_only(source):
            kwargs["local_files_only"] = tok_kwargs["local_files_only"] = True
    if use_quantization:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True,
        )
        kwargs["device_map"] = {"": device.index if device.index is not None else torch.cuda.current_device()}
    log.info("loading %s (%s%s)", source, kwargs["dtype"], ", 4-bit NF4" if use_quantization else "")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **tok_kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as err:
        if kwargs.get("local_files_only"):
            raise _missing(source, f"the cached copy is incomplete ({err})") from err
        raise MissingArtifactError(f"cannot load model {source!r}: {err}") from err
    if not use_quantization:
        model = model.to(device)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    if use_torch_compile:
        compile_layers(model)
    return model, tokenizer


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
