"""Qwen3-VL as a stage-2 reranker: the qwen reranker's verbalizer, scores, budget and LoRA training on a
vision-language model that can also see the item images.

Everything but the model and the prompt's images is the qwen reranker's (``rerank/qwen.py``, subclassed): single-token
labels, a candidate's score = its label's logit at the answer slot (one forward pass per batch, -inf for empty
slots), the cross-entropy over the label logits through the shared training loop, and the saved adapter, tokenizer,
item texts and config.

* Model: ``llm.qwen3vl_model`` (default ``Qwen/Qwen3-VL-2B-Instruct``, or a folder such as the smoke model of
  ``recsys tiny-model --arch qwen3vl``) through :func:`recsys_core.rerank.llm.vl_model.load_vl_model`. LoRA goes on
  the ``llm.lora_target_modules`` of the LANGUAGE model only (the vision tower's attention has projections of its
  own); the vision tower, like the rest of the base model, stays frozen.
* Modes (``llm.qwen_mode``): ``text_only``, ``caption``, ``semantic_summary``, ``semantic_summary_small`` show item
  texts (``recsys_core.features.texts.texts_for_mode``) exactly as the qwen reranker's prompt does. ``raw_image``
  shows each history item and each candidate as ``<label>. <title>`` followed by its image
  (``<|vision_start|><|image_pad|>...<|vision_end|>``, as many pads as the image has tokens). Text first: the label
  stays at the start of its line, right before the text, in exactly the context where the labels were checked to be
  single tokens, and the image follows the text it illustrates, so "B. Red sneaker <image>" reads as one entry
  whose label was seen before its picture. Images are resized within ``features.vl_min_pixels`` /
  ``vl_max_pixels`` and the budget is twice ``llm.qwen_max_seq_length``, image tokens included ((h / patch / merge) x
  (w / patch / merge) per image, from the processor's grid). An item without an image follows
  ``llm.qwen3vl_missing_image``: ``placeholder`` writes "(no image)" where the image would be (the items are
  counted and logged), ``error`` stops, naming the item and the images stage.
* Budget (raw_image): whole history items (text and image) are dropped from the oldest first, then item texts are cut
  to one per-item token cap; the candidates, their images, the labels and the answer slot are never cut.
* Saved folder: the qwen reranker's (``adapter/``, ``tokenizer/`` with the processor's files, ``items.json``,
  ``config.json``) plus, in raw_image mode, ``images/<item_id><suffix>``: a copy of every item image, so that a served
  model needs no dataset.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from recsys_core.config import Config
from recsys_core.errors import ConfigError, MissingArtifactError
from recsys_core.rerank.llm.labels import Label, choose_labels, label_ids
from recsys_core.rerank.llm.model import COMPILE_PAD_MULTIPLE, compile_layers
from recsys_core.rerank.llm.prompt import MIN_ITEM_TOKENS, Prompt, _Builder, _largest, left_pad
from recsys_core.rerank.llm.vl_model import bound_pixels, load_vl_model, resolve_vl_model_id
from recsys_core.rerank.qwen import TOKENIZER_DIR, QwenReranker
from recsys_core.rerank.trainable import TrainableWeights

log = logging.getLogger(__name__)

RAW_IMAGE = "raw_image"
TEXT_MODES = ("text_only", "caption", "semantic_summary", "semantic_summary_small")
MODES = (*TEXT_MODES, RAW_IMAGE)
IMAGES_DIR = "images"
NO_IMAGE = "(no image)"
MISSING_IMAGE_POLICIES = ("placeholder", "error")
IMAGES_STAGE = "the images stage (`dvc exp run` with the images stage, or `python -m stages.images`)"
# Preprocessed images kept in memory (each up to vl_max_pixels / 256 patches of 1,536 floats: 1.2 MB at 224x224).
PIXEL_CACHE_ITEMS = 256


def check_vl_mode(mode: str) -> None:
    if mode not in MODES:
        raise ConfigError(f"llm.qwen_mode {mode!r} is not one of {', '.join(MODES)}")


def image_paths_of(items: pd.DataFrame) -> dict[int, str | None]:
    """id -> the ``image_path`` of the items frame (None where it is empty or NaN)."""
    if "image_path" not in items:
        raise MissingArtifactError(
            "llm.qwen_mode raw_image needs the items frame's image_path column (the local item images that "
            f"{IMAGES_STAGE} downloads); pass the items frame with image paths, or use --qwen_mode text_only"
        )
    out: dict[int, str | None] = {}
    for item, path in zip(items["item_id"].astype(int), items["image_path"], strict=True):
        out[int(item)] = None if path is None or (not isinstance(path, str) and pd.isna(path)) or not str(path).strip() \
            else str(path)  # fmt: skip
    return out


@dataclass(frozen=True)
class VLPrompt(Prompt):
    """A prompt whose ``<|image_pad|>`` runs show ``images`` (item ids, in prompt order)."""

    images: tuple[int, ...] = ()


class _ImageBuilder(_Builder):
    """The qwen prompt builder with each item's image (or the placeholder) right after its text; the budget, label
    checks and bookkeeping are the text builder's, so an image's tokens count like any other."""

    def __init__(self, tokenizer, history, candidates, labels: list[Label], markers: list[str],
                 images: list[int | None]):  # fmt: skip
        super().__init__(tokenizer, history, candidates, labels)
        self.markers, self.images = markers, images  # one per item: history, then candidates

    def _cut(self, index: int, text: str, cap: int | None) -> str:
        return super()._cut(index, text, cap) + self.markers[index]

    def finish(self, n_history: int, cap: int | None, untrimmed: int, max_history_kept: int) -> VLPrompt:
        prompt = super().finish(n_history, cap, untrimmed, max_history_kept)
        kept = self.images[len(self.history) - n_history :]
        return VLPrompt(*(getattr(prompt, f.name) for f in fields(Prompt)), images=tuple(i for i in kept if i))


def fit_budget(builder: _ImageBuilder, budget: int) -> VLPrompt:
    """The longest prompt within ``budget`` tokens: whole history items (text and image) dropped from the oldest
    (one kept while it fits), then every item text cut to one token cap, then the last history item dropped too."""
    n = len(builder.history)
    full = builder.length(n, None)
    if full <= budget:
        return builder.finish(n, None, full, n)
    kept = _largest(1, n - 1, lambda k: builder.length(k, None) <= budget) if n > 1 else None
    if kept is not None:
        return builder.finish(kept, None, full, n)
    for k in dict.fromkeys((min(n, 1), 0)):
        cap = builder.best_cap(k, budget)
        if cap is not None:
            return builder.finish(k, cap, full, n)
    raise ConfigError(
        f"a raw_image prompt with {len(builder.candidates)} candidates needs {builder.length(0, MIN_ITEM_TOKENS)} "
        f"tokens with no history and one token per item text, above its budget of {budget} (twice "
        f"llm.qwen_max_seq_length): raise --qwen_max_seq_length, lower --vl_max_pixels (fewer tokens per image) or "
        "--qwen_max_candidates"
    )


class Qwen3VLReranker(QwenReranker):
    method = "qwen3vl"
    reads_item_features = True  # item images (raw_image mode) and generated texts

    def __init__(self, n_items: int, hparams: dict[str, Any], device: torch.device | str = "cpu",
                 items: pd.DataFrame | Mapping[int, str] | None = None, tokenizer_dir: Path | None = None,
                 images: Mapping[int, str | Path | None] | None = None):  # fmt: skip
        """``items``: the items frame (item_id, title, generated text columns, and image_path in raw_image mode) or
        a mapping id -> text; ``images``: id -> image file (raw_image; else the frame's image_path)."""
        check_vl_mode(hparams.get("mode", "text_only"))
        self.n_items, self.hparams, self.device = n_items, dict(hparams), torch.device(device)
        self.item_texts: dict[int, str] = {}
        self.item_images: dict[int, Path] = {}
        self.missing_images: list[int] = []  # items shown with the placeholder (raw_image)
        self.placeholders_shown = 0  # placeholders written into prompts so far
        self._images_set = False
        self._pixels: OrderedDict[int, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._image_tokens: dict[int, int] = {}
        self._tokenizer_dir = tokenizer_dir
        self.model = self.build_model()
        if items is not None:
            self.set_items(items)
        if images is not None:
            self.set_images(images)

    @property
    def raw_image(self) -> bool:
        return self.hparams.get("mode") == RAW_IMAGE

    @classmethod
    def hyperparameters(cls, cfg: Config, dataset_code: str) -> dict:
        q = cfg.llm
        check_vl_mode(q.qwen_mode)
        model = resolve_vl_model_id(q.qwen3vl_model)
        # the qwen reranker's settings (labels, history, budget, LoRA, batches) for this model, read in text mode
        as_text = cfg.model_copy(update={"llm": q.model_copy(update={"qwen_mode": "text_only", "qwen_model": model})})
        h = super().hyperparameters(as_text, dataset_code)
        h.update(
            mode=q.qwen_mode,
            max_seq_length=q.qwen_max_seq_length * (2 if q.qwen_mode == RAW_IMAGE else 1),
            min_pixels=cfg.features.vl_min_pixels,
            max_pixels=cfg.features.vl_max_pixels,
            missing_image=q.qwen3vl_missing_image,
        )
        return h

    def build_model(self) -> nn.Module:
        from peft import LoraConfig, get_peft_model

        h = self.hparams
        base, processor = load_vl_model(h["model"], self.device, bool(h.get("use_quantization")),
                                        h.get("min_pixels"), h.get("max_pixels"))  # fmt: skip
        if self._tokenizer_dir is not None:
            from transformers import AutoProcessor

            processor = AutoProcessor.from_pretrained(str(self._tokenizer_dir))
            bound_pixels(processor, h.get("min_pixels"), h.get("max_pixels"))
        self.processor, self.tokenizer = processor, processor.tokenizer
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if not getattr(self.tokenizer, "chat_template", None) and getattr(processor, "chat_template", None):
            self.tokenizer.chat_template = processor.chat_template
        self.labels: list[Label] = (label_ids(self.tokenizer, h["labels"]) if h.get("labels")
                                    else choose_labels(self.tokenizer, int(h["max_candidates"])))  # fmt: skip
        h["labels"] = [label.text for label in self.labels]
        self._label_tokens = torch.tensor([label.token_id for label in self.labels], device=self.device)
        self._image_token_id = int(base.config.image_token_id)
        self._markers = (processor.vision_start_token, processor.image_token, processor.vision_end_token)
        if h.get("use_quantization"):
            from peft import prepare_model_for_kbit_training

            base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=True)
        targets = language_model_targets(base, h["lora_target_modules"])
        lora = LoraConfig(r=int(h["lora_r"]), lora_alpha=int(h["lora_alpha"]), lora_dropout=float(h["lora_dropout"]),
                          target_modules=targets, bias="none", task_type="CAUSAL_LM")  # fmt: skip
        net = get_peft_model(base, lora)
        self.trainable = TrainableWeights(net, "check llm.lora_target_modules")
        self._pad_multiple = COMPILE_PAD_MULTIPLE if h.get("use_torch_compile") else 1
        if h.get("use_torch_compile"):
            compile_layers(net.get_base_model().model.language_model)
        return net

    # ---- items, images and prompts ----

    def set_items(self, items: pd.DataFrame | Mapping[int, str]) -> None:
        """Texts (``texts_for_mode`` of the items frame, or a mapping id -> text) and, from a frame in raw_image
        mode, the images (its image_path column)."""
        if not isinstance(items, pd.DataFrame):
            super().set_items(items)
            return
        from recsys_core.features.texts import texts_for_mode

        self.item_texts = texts_for_mode(items, self.hparams["mode"])
        if self.raw_image:
            self.set_images(image_paths_of(items))

    def set_images(self, paths: Mapping[int, str | Path | None]) -> None:
        """id -> image file. Every item (of the texts and of ``paths``) without a readable file follows
        ``missing_image``: ``placeholder`` (counted in ``missing_images`` and logged) or ``error``."""
        found: dict[int, Path] = {}
        missing: dict[int, str] = {}
        for item in sorted(set(self.item_texts) | {int(k) for k in paths}):
            path = paths.get(item, None)
            if path is None or not str(path).strip():
                missing[item] = "no image_path"
            elif not Path(path).is_file():
                missing[item] = f"{path} does not exist"
            else:
                found[item] = Path(path)
        if missing and self.hparams.get("missing_image", "placeholder") == "error":
            first, why = next(iter(missing.items()))
            raise MissingArtifactError(
                f"item {first} has no image ({why}) and {len(missing) - 1} more items lack one "
                f"(first: {list(missing)[:10]}); llm.qwen3vl_missing_image=error stops on an item without an image: "
                f"run {IMAGES_STAGE} to download the item images, or pass --qwen3vl_missing_image placeholder to show "
                f"{NO_IMAGE!r} in their place"
            )
        if missing:
            log.warning("%d of %d items have no image (first: %s): raw_image prompts show %r in their place",
                        len(missing), len(missing) + len(found), list(missing)[:10], NO_IMAGE)  # fmt: skip
        self.item_images, self.missing_images, self._images_set = found, sorted(missing), True
        self._pixels.clear()
        self._image_tokens.clear()

    def _check_ready(self, width: int) -> None:
        super()._check_ready(width)
        if self.raw_image and not self._images_set:
            raise MissingArtifactError(
                "the qwen3vl reranker in raw_image mode has no item images: pass the items frame with its "
                f"image_path column (from {IMAGES_STAGE}) or set_images({{item_id: path}})"
            )

    def pixels(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixel_values (patches, C*T*P*P), image_grid_thw (1, 3)) of an item's image, as the processor makes them
        (resized within the pixel bounds); the last few hundred are cached."""
        if item in self._pixels:
            self._pixels.move_to_end(item)
            return self._pixels[item]
        from PIL import Image

        path = self.item_images[item]
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
        except OSError as err:
            raise MissingArtifactError(f"the image of item {item} ({path}) cannot be read ({err}); run "
                                       f"{IMAGES_STAGE} again") from err  # fmt: skip
        out = self.processor.image_processor(images=[rgb], return_tensors="pt")
        entry = (out["pixel_values"], out["image_grid_thw"])
        self._pixels[item] = entry
        if len(self._pixels) > PIXEL_CACHE_ITEMS:
            self._pixels.popitem(last=False)
        return entry

    def image_tokens(self, item: int) -> int:
        """Tokens of an item's image in the prompt: (h / patch / merge) x (w / patch / merge) of the processor's grid."""
        if item not in self._image_tokens:
            _, grid = self.pixels(item)
            merge = int(self.processor.image_processor.merge_size)
            self._image_tokens[item] = int(grid[0].prod()) // (merge * merge)
        return self._image_tokens[item]

    def _marker(self, item: int) -> tuple[str, int | None]:
        """What follows an item's text in a raw_image prompt, and the item if that is its image."""
        if item in self.item_images:
            start, pad, end = self._markers
            return start + pad * self.image_tokens(item) + end, item
        return f" {NO_IMAGE}", None

    def prompts(self, histories: Sequence[np.ndarray], candidates: Sequence[np.ndarray]) -> list[Prompt]:
        if not self.raw_image:
            return super().prompts(histories, candidates)
        keep = int(self.hparams["max_history"])
        out: list[Prompt] = []
        for history, cands in zip(histories, candidates, strict=True):
            hist = [int(i) for i in np.asarray(history)[-keep:]] if keep else []
            cands = [int(i) for i in cands]
            if not cands:
                raise ValueError("a reranking prompt needs at least one candidate")
            markers, images = zip(*(self._marker(i) for i in hist + cands), strict=True)
            builder = _ImageBuilder(self.tokenizer, self._texts(hist), self._texts(cands),
                                    self.labels[: len(cands)], list(markers), list(images))  # fmt: skip
            prompt = fit_budget(builder, int(self.hparams["max_seq_length"]))
            shown = hist[prompt.shortened.history_dropped :] + cands
            self.placeholders_shown += sum(i not in self.item_images for i in shown)
            out.append(prompt)
        return out

    def answer_logits(self, prompts: Sequence[Prompt]) -> torch.Tensor:
        images = [item for prompt in prompts for item in getattr(prompt, "images", ())]
        if not images:
            return super().answer_logits(prompts)
        batch = left_pad(prompts, self.tokenizer.pad_token_id, self._pad_multiple)
        input_ids = batch["input_ids"].to(self.device)
        pixel_values, grids = zip(*(self.pixels(item) for item in images), strict=True)
        dtype = next(p for p in self.model.parameters() if p.is_floating_point()).dtype
        out = self.model(input_ids=input_ids, attention_mask=batch["attention_mask"].to(self.device),
                         pixel_values=torch.cat(pixel_values).to(self.device, dtype),
                         image_grid_thw=torch.cat(grids).to(self.device),
                         mm_token_type_ids=(input_ids == self._image_token_id).int(), use_cache=False,
                         logits_to_keep=1)  # fmt: skip
        return out.logits[:, -1].float()

    # ---- saving ----

    @classmethod
    def from_data(cls, n_items: int, hparams: dict[str, Any], device: torch.device | str,
                  items: pd.DataFrame, features=None) -> Qwen3VLReranker:  # fmt: skip
        return cls(n_items, hparams, device, items=items)

    def save(self, folder: Path) -> None:
        """The qwen reranker's files (the processor's beside the tokenizer's) and, in raw_image mode, a copy of every
        item image in ``images/`` (written to a temporary folder, then renamed into place)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.raw_image:
            tmp = Path(tempfile.mkdtemp(prefix=f".{IMAGES_DIR}.", suffix=".tmp", dir=folder))
            try:
                for item, path in sorted(self.item_images.items()):
                    shutil.copyfile(path, tmp / f"{item}{path.suffix.lower()}")
                if (folder / IMAGES_DIR).exists():
                    shutil.rmtree(folder / IMAGES_DIR)
                tmp.rename(folder / IMAGES_DIR)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        self.processor.save_pretrained(str(folder / TOKENIZER_DIR))
        super().save(folder)

    @classmethod
    def load(cls, folder: Path, device: torch.device | str = "cpu") -> Qwen3VLReranker:
        folder = Path(folder)
        instance = super().load(folder, device)
        if instance.raw_image:
            stored = folder / IMAGES_DIR
            if not stored.is_dir():
                raise MissingArtifactError(f"{stored} is missing: the raw_image reranker saves its item images there; "
                                           "train the qwen3vl reranker again")  # fmt: skip
            images = {int(p.stem): p for p in stored.iterdir() if p.is_file() and p.stem.isdigit()}
            instance.set_images(images)
        return instance


def language_model_targets(model: nn.Module, names: Sequence[str]) -> str:
    """A peft ``target_modules`` regex matching the modules called ``names`` inside the language model only (never
    the vision tower's, whose attention has ``qkv`` / ``proj`` projections of its own); ConfigError when none."""
    names = [str(n) for n in names]
    pattern = rf"(?:.*\.)?language_model\.(?:.*\.)?(?:{'|'.join(re.escape(n) for n in names)})"
    found = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and re.fullmatch(pattern, n)]
    if not found:
        raise ConfigError(
            f"llm.lora_target_modules {names} name no linear layer of the language model of "
            f"{type(model).__name__} (e.g. q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)"
        )
    return pattern
