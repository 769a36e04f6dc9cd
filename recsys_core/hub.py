"""Where a model's weights come from: a local folder, or a Hugging Face id read from the cache or the hub.

One place for the rules every model loader follows (Qwen3, Qwen3-VL, T5, BLIP-2): a path that does not exist stops
at once; a hub id that is neither cached nor downloadable right now stops at once (never a long wait on a machine
without the hub), with a message naming the id, how to fetch it elsewhere (`huggingface-cli download`, HF_HOME), the
flag that takes a local folder and the offline smoke model (`recsys tiny-model --arch ...`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsys_core.errors import ConfigError, MissingArtifactError
from recsys_core.features.clip import DEFAULT_ENDPOINT, hf_hub_cache, hub_offline, unreachable

GGUF_SUFFIX = ".gguf"


@dataclass(frozen=True)
class ModelSetting:
    """The params key that names a model, what the model is (for messages) and its smoke model's arch."""

    key: str  # e.g. "vip5.vip5_model"
    what: str  # e.g. "the T5 backbone"
    tiny_arch: str | None = None  # `recsys tiny-model --arch <this>` writes an offline stand-in

    @property
    def flag(self) -> str:
        return "--" + self.key.rsplit(".", 1)[-1]

    @property
    def tiny_hint(self) -> str:
        if not self.tiny_arch:
            return ""
        return (f"; `recsys tiny-model --arch {self.tiny_arch} --out DIR` writes an offline smoke model (random "
                f"weights) to pass instead")  # fmt: skip


def resolve(name: str, setting: ModelSetting, aliases: Mapping[str, str] | None = None, gguf: bool = False) -> str:
    """A short name -> its hub id (``aliases``); a local folder (or, with ``gguf``, a .gguf file) -> its absolute
    path; anything else is taken as a Hugging Face id. A path that does not exist is an error here, not a hub
    lookup."""
    name = str(name).strip()
    if not name:
        raise ConfigError(f"{setting.key} is empty: give a Hugging Face id or a model folder{setting.tiny_hint}")
    if aliases and name.lower() in aliases:
        return aliases[name.lower()]
    path = Path(name).expanduser()
    if path.is_dir() or (gguf and path.is_file() and path.suffix.lower() == GGUF_SUFFIX):
        return str(path.resolve())
    if name.startswith((".", "/", "~")) or (gguf and name.lower().endswith(GGUF_SUFFIX)):
        what = "no such model folder or .gguf file" if gguf else "no such model folder"
        raise MissingArtifactError(f"{setting.key} {name!r}: {what}{setting.tiny_hint}")
    return name


def missing(model_id: str, why: str, setting: ModelSetting) -> MissingArtifactError:
    cache = hf_hub_cache()
    return MissingArtifactError(
        f"{setting.what} {model_id!r} ({setting.key}) is not available: not in the Hugging Face cache {cache}, and "
        f"{why}. Provide it: on a connected machine run `huggingface-cli download {model_id}` (or `hf download "
        f"{model_id}`) with HF_HOME=<dir> and copy <dir>/hub to {cache} here (HF_HOME / HF_HUB_CACHE choose that "
        f"folder), or pass {setting.flag} /path/to/dir, a local folder holding the model{setting.tiny_hint}."
    )


def is_cached(model_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(model_id, "config.json", cache_dir=str(hf_hub_cache()))
    except Exception:  # a malformed id, an unreadable cache: not cached
        return False
    return isinstance(found, str)


def hub_kwargs(source: str, setting: ModelSetting) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments for ``source`` (a resolved folder or hub id): none for a folder,
    ``local_files_only`` for a cached id, none when the hub answers; MissingArtifactError at once otherwise."""
    if Path(source).exists():
        return {}
    if is_cached(source):
        return {"local_files_only": True}
    if hub_offline():
        raise missing(source, "HF_HUB_OFFLINE is set, so nothing is downloaded", setting)
    if why := unreachable(f"{os.environ.get('HF_ENDPOINT', DEFAULT_ENDPOINT).rstrip('/')}/api/models/{source}"):
        raise missing(source, why, setting)
    return {}
