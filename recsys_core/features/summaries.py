"""Semantic summaries: Qwen3-VL describes each item from its image and title, for rerankers that read item texts.

A title alone ("Nike Air 270") tells an LLM reranker little; the picture shows the category, colour and style. So a
vision-language model writes two texts per item: ``semantic_summary`` (a few sentences) and
``semantic_summary_small`` (one sentence of at most :data:`SMALL_MAX_WORDS` words, for prompts that list many
candidates). The small one is asked for in the prompt *and* cut to that many words, because a model's word count is
not to be trusted. Decoding is greedy, so the same model, item and settings always give the same text.

Items without a usable image are summarised from their title and description alone, and the ``source`` column says
so (``image+title`` / ``title``): skipping them would leave holes exactly where a text is most needed (MovieLens has
no images at all), and a reader can still tell the two kinds apart. Items with neither an image nor a text get no
summary (``source`` = ``none``, empty texts): there is nothing to describe, and a model asked about nothing invents.

The table ``<prepared>/semantic_summaries.parquet`` is built incrementally: a rerun keeps the rows whose item still
matches (same item_id and raw_id, same model, same source) and generates only the rest, without loading the model
when nothing is left. The generation settings (token budgets, pixel bounds, a hash of the prompts) are recorded in
the file's parquet metadata; when they change, nothing is reused. Progress is written atomically every few batches
and when a run stops midway, so an interrupted run (minutes per thousand items on a GPU, far more on a CPU) keeps its
work.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from recsys_core.config import FeaturesConfig
from recsys_core.errors import DataFormatError
from recsys_core.io import atomic_path

log = logging.getLogger(__name__)

SUMMARIES = "semantic_summaries.parquet"
COLUMNS = ("item_id", "raw_id", "semantic_summary", "semantic_summary_small", "source", "model")
SOURCES = ("image+title", "title", "none")
IMAGE_AND_TITLE, TITLE, NONE = SOURCES
KINDS = ("semantic_summary", "semantic_summary_small")
SMALL_MAX_WORDS = 25
# One sentence of <= 25 words is about 35-40 Qwen tokens; the margin lets a sentence end rather than be cut mid-word.
SMALL_MAX_NEW_TOKENS = 64
MAX_TITLE_CHARS = 300
MAX_DETAIL_CHARS = 600  # bounds the prompt: descriptions of Amazon items run to thousands of characters
SAVE_EVERY = 10  # batches between two partial saves
SETTINGS_KEY = b"recsys.semantic_summaries.settings"
ENABLE_FLAGS = "--generate_semantic_summary (DVC: `dvc exp run -S data.generate_semantic_summary=true`)"

_ASK = {
    "semantic_summary": (
        "Describe this item for a recommender system in two to four sentences: its category, type, colour, style, "
        "brand and notable features. Use only what the {evidence} show; do not guess a brand or colour that is not "
        "shown. Answer with the description only."
    ),
    "semantic_summary_small": (
        "In one sentence of at most {max_words} words, say what this item is: its category, type, colour, style, "
        "brand and most notable feature, as far as the {evidence} show. Answer with that sentence only."
    ),
}
_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL)
_SPACE = re.compile(r"\s+")
_TRAILING = re.compile(r"[\s,;:\-–—(\[]+$")


@dataclass(frozen=True)
class SummaryInput:
    """What the model is shown for one item: its title, further text, and a picture (a path or a PIL image)."""

    title: str
    details: str = ""
    image: Any = None


@dataclass
class SummaryRun:
    """What :func:`build_summaries` did: the table written, rows kept from the last run, rows made, time per kind."""

    table: pd.DataFrame
    kept: int = 0
    generated: int = 0
    without_input: int = 0
    unreadable_images: int = 0
    loaded_model: bool = False
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(KINDS, 0.0))
    items: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))

    def items_per_second(self, kind: str) -> float | None:
        return self.items[kind] / self.seconds[kind] if self.seconds[kind] > 0 else None


# ---- text helpers ----------------------------------------------------------------------------------------------------


def strip_thinking(text: str) -> str:
    """The answer without any reasoning: closed ``<think>...</think>`` blocks go, everything before a stray
    ``</think>`` (the template opened the block) goes, and an unclosed ``<think>`` drops the rest (the model ran out
    of tokens while thinking, so there is no answer)."""
    text = _THINK_BLOCK.sub(" ", text)
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    if "<think>" in text:
        text = text.split("<think>", 1)[0]
    return text


def clean_summary(text: str) -> str:
    """Thinking removed, whitespace (newlines included) collapsed to single spaces, stripped."""
    return _SPACE.sub(" ", strip_thinking(text)).strip()


def limit_words(text: str, max_words: int = SMALL_MAX_WORDS) -> str:
    """``text`` cut to its first ``max_words`` words; a cut sentence loses its dangling comma or dash and ends with
    a full stop, so the result still reads as one sentence."""
    words = text.split()
    if len(words) <= max_words:
        return " ".join(words)
    cut = _TRAILING.sub("", " ".join(words[:max_words]))
    return cut if not cut or cut.endswith((".", "!", "?")) else cut + "."


def small_summary(text: str) -> str:
    """The one-sentence form: the first line of the cleaned answer (models sometimes add a second paragraph), at
    most :data:`SMALL_MAX_WORDS` words."""
    lines = [line.strip() for line in strip_thinking(text).splitlines() if line.strip()]
    return limit_words(clean_summary(lines[0]) if lines else "")


def prompt_text(kind: str, item: SummaryInput) -> str:
    """The user turn's text for ``kind``: the request, then the title and (if any) the details, each capped."""
    if kind not in _ASK:
        raise ValueError(f"unknown summary kind {kind!r}; expected one of {KINDS}")
    evidence = "image and the text" if item.image is not None else "title and the description"
    ask = _ASK[kind].format(evidence=evidence, max_words=SMALL_MAX_WORDS)
    parts = [ask, f"Title: {_cap(item.title, MAX_TITLE_CHARS)}"]
    details = _cap(item.details, MAX_DETAIL_CHARS)
    if details:
        parts.append(f"Description: {details}")
    return "\n".join(parts)


def _cap(text: str, limit: int) -> str:
    text = _SPACE.sub(" ", str(text or "")).strip()
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _messages(kind: str, item: SummaryInput) -> list[dict]:
    content: list[dict] = [{"type": "image"}] if item.image is not None else []
    content.append({"type": "text", "text": prompt_text(kind, item)})
    return [{"role": "user", "content": content}]


def _chat_text(processor: Any, messages: list[dict]) -> str:
    """The prompt as the model's chat template renders it, with the assistant turn opened. ``enable_thinking=False``
    makes Qwen3-style templates close the think block up front; templates that do not know the variable ignore it."""
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)


def _open_image(image: Any):
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    with Image.open(image) as handle:
        return handle.convert("RGB")


# ---- generation ------------------------------------------------------------------------------------------------------


def _generation_config(model: Any, processor: Any, max_new_tokens: int):
    """Greedy decoding, stopping at the model's end-of-turn tokens. A fresh config rather than the model's own:
    Qwen's generation_config.json asks for sampling (temperature, top_p, top_k), which greedy decoding must not
    inherit (it would also warn on every call)."""
    from transformers import GenerationConfig

    tokenizer = getattr(processor, "tokenizer", processor)
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = eos[0] if isinstance(eos, list) else eos
    return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, eos_token_id=eos,
                            pad_token_id=pad)  # fmt: skip


def generate_texts(model: Any, processor: Any, items: Sequence[SummaryInput], kind: str, max_new_tokens: int,
                   min_pixels: int | None = None, max_pixels: int | None = None) -> list[str]:  # fmt: skip
    """One batched, greedy ``generate`` call for ``items``; the raw decoded answers (special tokens dropped).

    Prompts are left-padded, so every row's answer starts right after the shared prompt width. Items with and
    without an image may share a batch. ``min_pixels`` / ``max_pixels`` bound the image resolution (and so the
    number of image tokens: one per 32 x 32 pixels for Qwen3-VL).
    """
    import torch

    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"  # generation appends on the right: the prompts must end together
    texts = [_chat_text(processor, _messages(kind, item)) for item in items]
    images = [_open_image(item.image) for item in items if item.image is not None]
    kwargs: dict[str, Any] = {"text": texts, "return_tensors": "pt", "padding": True}
    if images:
        kwargs["images"] = images
        if min_pixels is not None and max_pixels is not None:
            kwargs["images_kwargs"] = {"size": {"shortest_edge": int(min_pixels), "longest_edge": int(max_pixels)}}
    inputs = processor(**kwargs)
    inputs.pop("token_type_ids", None)
    device, dtype = model.device, model.dtype
    inputs = {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) if torch.is_tensor(v) else v
              for k, v in inputs.items()}  # fmt: skip
    with torch.inference_mode():
        out = model.generate(**inputs, generation_config=_generation_config(model, processor, max_new_tokens))
    answers = out[:, inputs["input_ids"].shape[1] :]
    decoded = tokenizer.batch_decode(answers, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    # A thinking template that opens the think block in the prompt: the answer starts inside it, so put the tag back
    # for strip_thinking to drop what the model thought (all of it, if it never closed the block).
    return ["<think>" + text if _opens_thinking(prompt) else text for prompt, text in zip(texts, decoded, strict=True)]


def _opens_thinking(prompt: str) -> bool:
    return prompt.rfind("<think>") > prompt.rfind("</think>")


def summarise(
    model: Any,
    processor: Any,
    items: Sequence[SummaryInput],
    cfg: FeaturesConfig,
    kinds: Sequence[str] = KINDS,
    timings: dict[str, float] | None = None,
) -> dict[str, list[str]]:
    """Both summaries of ``items`` (one generate call per kind): kind -> cleaned texts, in the order of ``items``.

    ``semantic_summary`` gets ``cfg.summary_max_new_tokens`` new tokens; ``semantic_summary_small`` gets
    :data:`SMALL_MAX_NEW_TOKENS` (never more than the full one) and is cut to :data:`SMALL_MAX_WORDS` words.
    ``timings`` (kind -> seconds) is added to when given.
    """
    budget = {"semantic_summary": cfg.summary_max_new_tokens,
              "semantic_summary_small": min(SMALL_MAX_NEW_TOKENS, cfg.summary_max_new_tokens)}  # fmt: skip
    finish: dict[str, Callable[[str], str]] = {
        "semantic_summary": clean_summary,
        "semantic_summary_small": small_summary,
    }
    out: dict[str, list[str]] = {}
    for kind in kinds:
        start = time.perf_counter()
        raw = generate_texts(model, processor, items, kind, budget[kind], cfg.vl_min_pixels, cfg.vl_max_pixels)
        out[kind] = [finish[kind](text) for text in raw]
        if timings is not None:
            timings[kind] = timings.get(kind, 0.0) + time.perf_counter() - start
    return out


# ---- the table -------------------------------------------------------------------------------------------------------


def empty_table() -> pd.DataFrame:
    frame = pd.DataFrame({column: pd.Series(dtype="str") for column in COLUMNS})
    frame["item_id"] = frame["item_id"].astype("int32")
    return frame


def _normalised(frame: pd.DataFrame) -> pd.DataFrame:
    """Our column order and types, sorted by item_id: the same rows always give the same bytes (DVC hashes them)."""
    if frame.empty:
        return empty_table()
    frame = frame[list(COLUMNS)].copy()
    frame["item_id"] = frame["item_id"].astype("int32")
    for column in COLUMNS[1:]:
        frame[column] = frame[column].fillna("").astype("str")
    return frame.sort_values("item_id", kind="stable").reset_index(drop=True)


def summary_settings(cfg: FeaturesConfig) -> dict[str, Any]:
    """What, besides the model, decides a summary's text: token budgets, word limit, image resolution, the prompts.
    Recorded in the table; rows made under other settings are not reused (DVC reruns the stage when these params
    change and must then get new texts, not the old ones back)."""
    prompts = json.dumps(_ASK, sort_keys=True).encode("utf-8")
    return {
        "summary_max_new_tokens": int(cfg.summary_max_new_tokens),
        "small_max_new_tokens": min(SMALL_MAX_NEW_TOKENS, int(cfg.summary_max_new_tokens)),
        "small_max_words": SMALL_MAX_WORDS,
        "vl_min_pixels": int(cfg.vl_min_pixels),
        "vl_max_pixels": int(cfg.vl_max_pixels),
        "prompts": hashlib.sha1(prompts, usedforsecurity=False).hexdigest()[:12],
    }


def read_settings(prepared: Path) -> dict[str, Any] | None:
    """The settings recorded in the table of ``prepared``; None when absent (no table, or one written elsewhere)."""
    import pyarrow.parquet as pq

    path = Path(prepared) / SUMMARIES
    if not path.is_file():
        return None
    raw = (pq.read_schema(path).metadata or {}).get(SETTINGS_KEY)
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def load_summaries(prepared: Path) -> pd.DataFrame | None:
    """The table of ``prepared`` (None when absent), checked for our columns."""
    path = Path(prepared) / SUMMARIES
    if not path.is_file():
        return None
    frame = pd.read_parquet(path)
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise DataFormatError(
            f"{path} lacks the columns {missing}; delete it and run `recsys summaries {ENABLE_FLAGS.split(' ')[0]}` "
            "again"
        )
    return _normalised(frame)


def save_summaries(frame: pd.DataFrame, prepared: Path, settings: dict[str, Any] | None = None) -> Path:
    """Write the table atomically (fixed writer options: the same rows give the same bytes), with ``settings`` in
    the parquet metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(prepared) / SUMMARIES
    table = pa.Table.from_pandas(_normalised(frame), preserve_index=False)
    if settings is not None:
        metadata = {**(table.schema.metadata or {}), SETTINGS_KEY: json.dumps(settings, sort_keys=True).encode()}
        table = table.replace_schema_metadata(metadata)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return path


def summary_inputs(items: pd.DataFrame, images: dict[int, Path]) -> dict[int, SummaryInput]:
    """item_id -> what the model sees: the title (the text's first part when there is no title column), the
    description, and the image file when the images stage saved one."""
    n = len(items)
    titles = items["title"] if "title" in items else items.get("text", pd.Series([""] * n, index=items.index))
    details = items["description"] if "description" in items else pd.Series([""] * n, index=items.index)
    found = {}
    for item_id, title, detail in zip(items["item_id"], titles.fillna(""), details.fillna(""), strict=True):
        title, detail = str(title).strip(), str(detail).strip()
        if not title and detail:  # a description but no title: show the description as the title
            title, detail = detail, ""
        found[int(item_id)] = SummaryInput(title, detail, images.get(int(item_id)))
    return found


def source_of(item: SummaryInput) -> str:
    if item.image is not None:
        return IMAGE_AND_TITLE
    return TITLE if item.title else NONE


def reusable_rows(previous: pd.DataFrame | None, items: pd.DataFrame, sources: dict[int, str],
                  model_name: str) -> pd.DataFrame:  # fmt: skip
    """The rows of the last table still valid: same item_id and raw_id (the item table was not rebuilt in between),
    made by the same model, from the same source (an item whose image appeared since is summarised again)."""
    if previous is None or previous.empty:
        return empty_table()
    current = pd.DataFrame({"item_id": items["item_id"].astype("int32"), "raw_id": items["raw_id"].astype("str")})
    current["want_source"] = current["item_id"].map(sources)
    merged = previous.merge(current, on=["item_id", "raw_id"], how="inner")
    keep = (merged["model"] == model_name) & (merged["source"] == merged["want_source"])
    return _normalised(merged.loc[keep, list(COLUMNS)])


def build_summaries(prepared: Path, items: pd.DataFrame, images: dict[int, Path], cfg: FeaturesConfig,
                    generate: bool, device: Any = "cpu", model_and_processor: tuple[Any, Any] | None = None,
                    save_every: int = SAVE_EVERY, progress: bool = True) -> SummaryRun:  # fmt: skip
    """Bring ``<prepared>/semantic_summaries.parquet`` up to date with ``items`` and return what was done.

    ``generate`` False (data.generate_semantic_summary off): no model is loaded; an existing table is kept as it
    is, else an empty one with the columns is written (so that the readers and DVC find the file), and the log says
    how to turn generation on. ``images``: item_id -> picture (``recsys_core.data.images.image_files``).
    ``model_and_processor`` skips loading (tests, or a caller that already holds the model); else
    ``cfg.summary_model`` is loaded with ``load_vl_model`` only when some item needs a summary.
    """
    prepared = Path(prepared)
    previous = load_summaries(prepared)
    if not generate:
        log.info("semantic summaries are off (data.generate_semantic_summary: false); turn them on with %s",
                 ENABLE_FLAGS)  # fmt: skip
        if previous is None:
            save_summaries(empty_table(), prepared)
            return SummaryRun(empty_table())
        log.info("kept the existing %s (%d rows) as it is", prepared / SUMMARIES, len(previous))
        return SummaryRun(previous, kept=len(previous))

    model_name = str(cfg.summary_model).strip()
    settings, before = summary_settings(cfg), read_settings(prepared)
    inputs = summary_inputs(items, images)
    sources = {item_id: source_of(item) for item_id, item in inputs.items()}
    reusable = previous
    if previous is not None and before is not None and before != settings:
        changed = ", ".join(f"{k} {before.get(k)!r} -> {v!r}" for k, v in settings.items() if before.get(k) != v)
        log.warning("the summaries in %s were made with other settings (%s): every item is summarised again",
                    prepared / SUMMARIES, changed)  # fmt: skip
        reusable = None
    kept = reusable_rows(reusable, items, sources, model_name)
    raw_ids = dict(zip(items["item_id"].astype(int), items["raw_id"].astype(str), strict=True))
    done = set(kept["item_id"].astype(int))
    blank = [i for i in sorted(inputs) if i not in done and sources[i] == NONE]
    # Image items first, then title-only ones: batches of one kind pad less (an image adds up to 49 tokens).
    todo = [i for i in sorted(inputs) if i not in done and sources[i] != NONE]
    todo.sort(key=lambda i: sources[i] != IMAGE_AND_TITLE)  # stable: item order within each group
    rows = [_row(i, raw_ids[i], "", "", NONE, model_name) for i in blank]
    if blank:
        log.warning("%d item(s) have neither an image nor a title/description: no summary (source 'none')", len(blank))
    run = SummaryRun(kept, kept=len(kept), without_input=len(blank))
    log.info("semantic summaries (%s): %d kept from the last run, %d to generate", model_name, len(kept), len(todo))

    if not todo:
        table = _normalised(pd.concat([kept, pd.DataFrame(rows, columns=list(COLUMNS))], ignore_index=True))
        if previous is None or not table.equals(previous) or before != settings:
            save_summaries(table, prepared, settings)
        run.table = table
        return run

    model, processor = model_and_processor or _load(model_name, cfg, device)
    run.loaded_model = model_and_processor is None
    size = cfg.semantic_summary_batch_size
    from tqdm.auto import tqdm

    def save() -> pd.DataFrame:
        table = _normalised(pd.concat([kept, pd.DataFrame(rows, columns=list(COLUMNS))], ignore_index=True))
        save_summaries(table, prepared, settings)
        return table

    try:
        with tqdm(total=len(todo), desc="semantic summaries", unit="item", disable=not progress) as bar:
            for number, start in enumerate(range(0, len(todo), size), start=1):
                batch = [_readable(inputs[i], run) for i in todo[start : start + size]]
                texts = summarise(model, processor, batch, cfg, timings=run.seconds)
                for kind in KINDS:
                    run.items[kind] += len(batch)
                for n, (item_id, item) in enumerate(zip(todo[start : start + size], batch, strict=True)):
                    rows.append(_row(item_id, raw_ids[item_id], texts["semantic_summary"][n],
                                     texts["semantic_summary_small"][n], source_of(item), model_name))  # fmt: skip
                run.generated += len(batch)
                bar.update(len(batch))
                if save_every and number % save_every == 0 and start + size < len(todo):
                    save()
    finally:
        run.table = save()  # also when interrupted: the next run resumes from here
    empty = sum(1 for row in rows if row["source"] != NONE and not row["semantic_summary"])
    if empty:
        log.warning("%d summaries came out empty (the model answered nothing but whitespace or thinking)", empty)
    if run.unreadable_images:
        log.warning("%d image file(s) could not be read: those items were summarised from their title alone",
                    run.unreadable_images)  # fmt: skip
    return run


def _row(item_id: int, raw_id: str, full: str, small: str, source: str, model: str) -> dict:
    return {"item_id": item_id, "raw_id": raw_id, "semantic_summary": full, "semantic_summary_small": small,
            "source": source, "model": model}  # fmt: skip


def _readable(item: SummaryInput, run: SummaryRun) -> SummaryInput:
    """``item`` with its picture opened, or without the picture when the file cannot be read (deleted or damaged
    after the images stage): one bad file must not stop a run of thousands; the row's source then says ``title``."""
    if item.image is None:
        return item
    try:
        return SummaryInput(item.title, item.details, _open_image(item.image))
    except (OSError, ValueError) as err:
        log.warning("cannot read the image %s (%s): summarising from the title alone", item.image, err)
        run.unreadable_images += 1
        return SummaryInput(item.title, item.details, None)


def _load(name: str, cfg: FeaturesConfig, device: Any) -> tuple[Any, Any]:
    """The model and processor of ``name``; a missing model's message names this stage's setting."""
    from recsys_core import hub
    from recsys_core.rerank.llm import vl_model

    setting = hub.ModelSetting("features.summary_model", "the vision-language model", "qwen3vl")
    return vl_model.load_vl_model(name, device=device, min_pixels=cfg.vl_min_pixels, max_pixels=cfg.vl_max_pixels,
                                  setting=setting)  # fmt: skip
