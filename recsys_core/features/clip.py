"""CLIP image and text encoders (open_clip), loaded so that an offline machine fails in seconds, never hangs.

Given a pretrained tag, open_clip asks the Hugging Face hub for the weights and, without a connection, retries for
most of a minute before it gives up (46 s measured on this project's offline machine); behind a firewall that drops
packets it can wait far longer. So the checkpoint is resolved here first: the local hub cache, else a download after
a short reachability probe, else a MissingArtifactError that says how to provide the file. open_clip is imported
inside the functions: it is heavy and only the embeddings stage needs it.

Embeddings are L2-normalised float32 rows, the form the retrievers' content features expect.
"""

from __future__ import annotations

import difflib
import logging
import os
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recsys_core.errors import ConfigError, DataFormatError, MissingArtifactError

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 3.0
DEFAULT_ENDPOINT = "https://huggingface.co"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")
_TRUE = {"1", "on", "yes", "true"}
RANDOM_SEED = 0  # random smoke weights are the same on every run


def is_random(pretrained: str | None) -> bool:
    return not pretrained or str(pretrained).strip().lower() == "none"


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache as huggingface_hub resolves it, read from the environment now (not at import)."""
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    return Path(os.path.expandvars(os.path.expanduser(cache)))


def hub_offline() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE as set now, or as huggingface_hub read them when it was imported."""
    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    constants = sys.modules.get("huggingface_hub.constants")
    return flag.strip().lower() in _TRUE or bool(getattr(constants, "HF_HUB_OFFLINE", False))


def unreachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when ``url`` answers 2xx within ``timeout`` seconds (DNS included), else why not.

    Any other answer counts as unavailable too: an intercepting proxy that answers 403/404 for a blocked host would
    otherwise send open_clip into its slow retries, and a gated or missing repository cannot be downloaded anyway.
    """
    outcome: list[str | None] = [f"{url} gave no answer within {timeout:g} s"]

    def probe() -> None:
        try:
            urllib.request.urlopen(url, timeout=timeout).close()
            outcome[0] = None
        except urllib.error.HTTPError as err:
            outcome[0] = f"{url} answered HTTP {err.code}"
        except Exception as err:  # any failure means "not reachable"
            outcome[0] = f"{url} is unreachable ({type(err).__name__}: {err})"

    thread = threading.Thread(target=probe, daemon=True)  # getaddrinfo has no timeout of its own
    thread.start()
    thread.join(timeout + 0.5)
    return outcome[0]


def _hub_source(cfg: dict) -> tuple[str, str]:
    """(repo, file) of a tag's hub entry; open_clip writes 'org/repo/' for its default file name."""
    from open_clip.constants import HF_WEIGHTS_NAME

    repo, filename = os.path.split(cfg["hf_hub"])
    return repo, filename or HF_WEIGHTS_NAME


def _weight_names(filename: str) -> list[str]:
    """The file open_clip asks for, after the safetensors twin it tries first."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    if filename == HF_WEIGHTS_NAME:
        return [HF_SAFE_WEIGHTS_NAME, filename]
    if filename.endswith((".bin", ".pth")):
        return [filename[:-4] + ".safetensors", filename]
    return [filename]


def cached_checkpoint(cfg: dict, cache: Path) -> str | None:
    """The tag's checkpoint in the local hub cache, without touching the network; None when absent."""
    if cfg.get("file"):
        return cfg["file"] if os.path.isfile(cfg["file"]) else None
    if not cfg.get("hf_hub"):
        return None
    from huggingface_hub import hf_hub_download

    repo, filename = _hub_source(cfg)
    for name in _weight_names(filename):
        try:
            return hf_hub_download(repo, name, cache_dir=str(cache), local_files_only=True)
        except Exception:  # not cached under this name
            continue
    return None


def _missing_weights(model: str, tag: str, cfg: dict, cache: Path, why: str) -> MissingArtifactError:
    if cfg.get("hf_hub"):
        repo, filename = _hub_source(cfg)
        fetch = (f"on a connected machine run `HF_HOME=<dir> hf download {repo} {filename}` (huggingface_hub < 1.0: "
                 f"`huggingface-cli download {repo} {filename}`) and copy <dir>/hub to {cache} here (HF_HOME / "
                 f"HF_HUB_CACHE choose that folder)")  # fmt: skip
    else:
        fetch = f"download {cfg.get('url')} on a connected machine"
    gelu = f" (these weights use QuickGELU: with a local file set --clip_model {model}-quickgelu)" if cfg.get(
        "quick_gelu") and not model.endswith("-quickgelu") else ""  # fmt: skip
    return MissingArtifactError(
        f"CLIP weights for model {model!r}, pretrained tag {tag!r}, are not available: not in the Hugging Face cache "
        f"{cache}, and {why}. Provide them: {fetch}; or set features.clip_pretrained (flag --clip_pretrained) to a "
        f"local checkpoint file{gelu}; or set it to 'none' for random smoke-test weights."
    )


def _probe_url(cfg: dict) -> str:
    """The hub's API entry of the tag's repository (small, and 200 only when it can be downloaded), else its URL."""
    if not cfg.get("hf_hub"):
        return cfg.get("url", "")
    endpoint = os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")
    return f"{endpoint}/api/models/{_hub_source(cfg)[0]}"


def resolve_checkpoint(model: str, tag: str, cfg: dict) -> str:
    """A local file holding the tag's weights: cached, else downloaded when the server answers; never a long wait."""
    cache = hf_hub_cache()
    found = cached_checkpoint(cfg, cache)
    if found:
        return found
    if hub_offline():
        raise _missing_weights(model, tag, cfg, cache, "HF_HUB_OFFLINE is set, so nothing is downloaded")
    why = unreachable(_probe_url(cfg))
    if why:
        raise _missing_weights(model, tag, cfg, cache, why)
    from open_clip.pretrained import download_pretrained

    log.info("downloading CLIP weights %s/%s into %s", model, tag, cache)
    try:
        return download_pretrained(cfg, cache_dir=str(cache) if cfg.get("hf_hub") else None)
    except Exception as err:
        raise _missing_weights(model, tag, cfg, cache, f"the download failed ({err})") from err


def _check_model(open_clip: Any, model: str) -> None:
    known = open_clip.list_models()
    if model not in known:
        hint = difflib.get_close_matches(model, known, n=3)
        raise ConfigError(f"features.clip_model {model!r} is not an open_clip architecture"
                          + (f"; did you mean {', '.join(hint)}?" if hint else "; see open_clip.list_models()"))  # fmt: skip


def _checkpoint_and_cfg(open_clip: Any, model: str, pretrained: str) -> tuple[str, dict]:
    """(checkpoint file, the tag's settings) for a tag or a local file; a bad value fails with what to set."""
    cfg = open_clip.get_pretrained_cfg(model, pretrained)
    if cfg:
        return resolve_checkpoint(model, pretrained, cfg), cfg
    path = Path(pretrained).expanduser()
    if path.is_file():
        return str(path), {}
    if path.suffix in CHECKPOINT_SUFFIXES or os.sep in pretrained:
        raise MissingArtifactError(f"features.clip_pretrained {pretrained!r}: no such checkpoint file")
    tags = open_clip.list_pretrained_tags_by_model(model)
    raise ConfigError(f"features.clip_pretrained {pretrained!r} is neither a checkpoint file nor a pretrained tag of "
                      f"{model!r} (tags: {', '.join(tags) or 'none'}; 'none' = random weights)")  # fmt: skip


def _random_model(open_clip: Any, model: str, device: Any) -> tuple[Any, Any]:
    import torch

    log.warning("CLIP %s with RANDOM weights (features.clip_pretrained is none): a smoke model, its embeddings carry "
                "no meaning", model)  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        created = open_clip.create_model_and_transforms(model, pretrained=None, device=device,
                                                        pretrained_image=False, pretrained_text=False)  # fmt: skip
    return created[0], created[2]


def load_clip(model: str, pretrained: str | None, device: Any = "cpu") -> tuple[Any, Any, Any]:
    """(model in eval mode, inference preprocess, tokenizer) of an open_clip architecture.

    ``pretrained``: an open_clip tag (``openai``), a local checkpoint file, or None / 'none' for random weights.
    """
    import open_clip

    _check_model(open_clip, model)
    if is_random(pretrained):
        net, preprocess = _random_model(open_clip, model, device)
    else:
        checkpoint, cfg = _checkpoint_and_cfg(open_clip, model, str(pretrained))
        log.info("CLIP %s weights: %s", model, checkpoint)
        net, _, preprocess = open_clip.create_model_and_transforms(
            model, pretrained=checkpoint, device=device, force_quick_gelu=bool(cfg.get("quick_gelu")),
            image_mean=cfg.get("mean"), image_std=cfg.get("std"), image_interpolation=cfg.get("interpolation"),
            image_resize_mode=cfg.get("resize_mode"), pretrained_image=False, pretrained_text=False,
        )  # fmt: skip
    return net.eval(), preprocess, open_clip.get_tokenizer(model)


def _normalised(features: Any) -> np.ndarray:
    import torch.nn.functional as F

    return F.normalize(features.float(), dim=-1).cpu().numpy().astype(np.float32, copy=False)


def _stacked(chunks: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)


def _load_image(path: Path, preprocess: Any) -> Any:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return preprocess(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataFormatError(f"{path}: not a readable image ({err}); delete it and run the images stage again "
                              "(`recsys images`)") from err  # fmt: skip


def encode_images(model: Any, preprocess: Any, paths: Sequence[Path], batch_size: int, device: Any = "cpu",
                  progress: bool = True) -> np.ndarray:  # fmt: skip
    """(len(paths), D) L2-normalised float32 image embeddings, in the order of ``paths``."""
    import torch
    from tqdm.auto import tqdm

    chunks = []
    with torch.no_grad(), tqdm(total=len(paths), desc="CLIP images", unit="img", disable=not progress) as bar:
        for start in range(0, len(paths), batch_size):
            batch = torch.stack([_load_image(Path(p), preprocess) for p in paths[start : start + batch_size]])
            chunks.append(_normalised(model.encode_image(batch.to(device))))
            bar.update(len(batch))
    return _stacked(chunks)


def encode_texts_clip(model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int, device: Any = "cpu",
                      progress: bool = True) -> np.ndarray:  # fmt: skip
    """(len(texts), D) L2-normalised float32 CLIP text embeddings; the tokenizer truncates to the context length."""
    import torch
    from tqdm.auto import tqdm

    chunks = []
    with torch.no_grad(), tqdm(total=len(texts), desc="CLIP texts", unit="text", disable=not progress) as bar:
        for start in range(0, len(texts), batch_size):
            batch = list(texts[start : start + batch_size])
            chunks.append(_normalised(model.encode_text(tokenizer(batch).to(device))))
            bar.update(len(batch))
    return _stacked(chunks)
