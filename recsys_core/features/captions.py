"""BLIP-2 captions of the item images: one short caption per item with a usable image, kept in
``<prepared>/blip2_captions.parquet`` (item_id, raw_id, caption, model) for the LLM reranker's ``caption`` mode.

BLIP-2 OPT-2.7B makes a handful of captions per second on a GPU and far fewer on a CPU, so the table is built to be
resumed: a rerun keeps the rows whose (item_id, raw_id) still match the prepared items and captions only the items
with an ``ok`` image that have no caption by the current model yet; progress is saved (atomically) every few
batches and on the way out of a failed or interrupted run. Nothing loads BLIP-2 unless there is work to do: with
captions off, or a dataset without images (MovieLens), the stage ends at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from recsys_core import hub
from recsys_core.config import FeaturesConfig
from recsys_core.data.images import image_files
from recsys_core.errors import ConfigError, DataFormatError
from recsys_core.io import atomic_path

log = logging.getLogger(__name__)

CAPTIONS = "blip2_captions.parquet"
COLUMNS = ("item_id", "raw_id", "caption", "model")
SAVE_EVERY = 20  # batches between partial saves of the table
ENABLE_HINT = "turn them on with `recsys captions --generate_caption` or `dvc exp run -S data.generate_caption=true`"


@dataclass
class CaptionRun:
    """What a run did: the table written, how many captions were made now and kept from before."""

    path: Path
    table: pd.DataFrame
    made: int = 0
    kept: int = 0
    with_image: int = 0
    unreadable: int = 0
    loaded_model: bool = False
    seconds: float = 0.0


# ---- the table ----


def empty_table() -> pd.DataFrame:
    return pd.DataFrame({"item_id": pd.Series(dtype="int64"), "raw_id": pd.Series(dtype=object),
                         "caption": pd.Series(dtype=object), "model": pd.Series(dtype=object)})  # fmt: skip


def _normalise(frame: pd.DataFrame) -> pd.DataFrame:
    if frame.empty:
        return empty_table()
    out = frame[list(COLUMNS)].copy()
    out["item_id"] = out["item_id"].astype("int64")
    for column in COLUMNS[1:]:
        out[column] = out[column].astype(str)
    return out.sort_values("item_id", kind="stable").reset_index(drop=True)


def load_captions(prepared: Path) -> pd.DataFrame:
    """The captions table of ``prepared`` (empty with the columns when the stage has not written one)."""
    path = Path(prepared) / CAPTIONS
    if not path.is_file():
        return empty_table()
    frame = pd.read_parquet(path)
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise DataFormatError(f"{path} lacks the columns {missing}; delete it and run `recsys captions` again")
    return _normalise(frame)


def write_captions(frame: pd.DataFrame, path: Path) -> None:
    """Atomically (temp file, rename), with fixed writer options so that the same table gives the same bytes."""
    with atomic_path(path) as tmp:
        _normalise(frame).to_parquet(tmp, index=False, compression="zstd", engine="pyarrow")


def matching_rows(table: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """The rows whose (item_id, raw_id) pair is still an item of ``items``; a re-prepared dataset renumbers items,
    so a caption is only trusted while its id still names the same raw item."""
    pairs = set(zip(items["item_id"].astype("int64"), items["raw_id"].astype(str), strict=True))
    keep = [(int(i), str(r)) in pairs for i, r in zip(table["item_id"], table["raw_id"], strict=True)]
    return table[pd.Series(keep, index=table.index, dtype=bool)].reset_index(drop=True)


# ---- the model ----


BLIP2_MODEL = hub.ModelSetting("features.caption_model", "the BLIP-2 model", "blip2")


def resolve_blip2(name: str) -> str:
    """A local folder -> its absolute path; anything else is taken as a Hugging Face id."""
    return hub.resolve(name, BLIP2_MODEL)


def load_blip2(name: str, device: Any = "cpu") -> tuple[Any, Any]:
    """(``Blip2ForConditionalGeneration`` in eval mode, ``Blip2Processor``): fp16 on CUDA (BLIP-2 OPT-2.7B is 7.7 GB
    in fp16), fp32 on a CPU (fp16 matmuls are slow or missing there). A hub id that is neither cached nor
    downloadable right now fails at once with MissingArtifactError (never a long wait)."""
    import torch
    from transformers import AutoConfig, Blip2ForConditionalGeneration, Blip2Processor

    source = resolve_blip2(name)
    device = torch.device(device)
    kwargs = hub.hub_kwargs(source, BLIP2_MODEL)
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
        if config.model_type != "blip-2":
            raise ConfigError(f"features.caption_model {source!r} is a {config.model_type!r} model, not BLIP-2")
        if getattr(config, "image_token_index", None) is None:
            raise ConfigError(f"{source!r} has no image_token_index in its config (a revision older than 2024): "
                              f"download it again")  # fmt: skip
        processor = Blip2Processor.from_pretrained(source, **kwargs)
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        model = Blip2ForConditionalGeneration.from_pretrained(source, dtype=dtype, **kwargs)
    except OSError as err:
        raise hub.missing(source, f"loading it failed ({err})", BLIP2_MODEL) from err
    return model.to(device).eval(), processor


# ---- captioning ----


def _open_rgb(path: Path):
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


def caption_batch(model: Any, processor: Any, images: Sequence[Any], max_new_tokens: int) -> list[str]:
    """Greedy captions of PIL images, one line each. The model is prompted with its image tokens and BOS only (as
    BLIP-2's own captioning); the prompt is cut off the output before decoding."""
    import torch

    param = next(model.vision_model.parameters())  # not model.parameters(): the Q-Former stays fp32 under fp16
    pixels = processor(images=list(images), return_tensors="pt")["pixel_values"].to(param.device, param.dtype)
    with torch.inference_mode():
        out = model.generate(pixel_values=pixels, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
    config = model.config
    prompt = torch.tensor([config.image_token_index] * config.num_query_tokens + [config.text_config.bos_token_id])
    width = len(prompt)
    if out.shape[1] >= width and bool((out[:, :width].cpu() == prompt).all()):
        out = out[:, width:]  # generate returned the prompt too (decoder-only language models do)
    texts = processor.batch_decode(out, skip_special_tokens=True)
    return [" ".join(text.split()) for text in texts]


def iter_captions(model: Any, processor: Any, paths: Sequence[Path], batch_size: int, max_new_tokens: int,
                  progress: bool = True) -> Iterator[list[str | None]]:  # fmt: skip
    """One list per batch of ``paths``: each picture's caption, None where the file cannot be read."""
    from tqdm.auto import tqdm

    with tqdm(total=len(paths), desc="BLIP-2 captions", unit="img", disable=not progress) as bar:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            images: list[Any] = []
            for path in chunk:
                try:
                    images.append(_open_rgb(path))
                except Exception as err:  # a damaged file must not stop the run: this item stays uncaptioned
                    log.warning("cannot read %s (%s): no caption for it", path, err)
                    images.append(None)
            readable = [image for image in images if image is not None]
            captions = iter(caption_batch(model, processor, readable, max_new_tokens) if readable else [])
            yield [None if image is None else next(captions) for image in images]
            bar.update(len(chunk))


def caption_images(model: Any, processor: Any, paths: Sequence[Path], batch_size: int = 8,
                   max_new_tokens: int = 30, progress: bool = False) -> list[str | None]:  # fmt: skip
    """Captions of ``paths`` in order (None for unreadable files)."""
    return [c for batch in iter_captions(model, processor, paths, batch_size, max_new_tokens, progress) for c in batch]


# ---- the stage's work ----


def make_captions(prepared: Path, items: pd.DataFrame, images_dir: Path, cfg: FeaturesConfig, enabled: bool,
                  device: Any = "cpu", progress: bool = True, save_every: int = SAVE_EVERY) -> CaptionRun:  # fmt: skip
    """Write ``prepared/blip2_captions.parquet`` for ``items`` (the prepared items: item_id, raw_id, ...) from the
    images stage's folder ``images_dir``; see the module docstring for what is kept, made and when nothing loads."""
    started = time.perf_counter()
    dest = Path(prepared) / CAPTIONS
    existing = load_captions(prepared)
    if not enabled:
        if dest.is_file():
            log.info("captions are off (data.generate_caption=false): kept %s as it is (%d captions); %s",
                     dest, len(existing), ENABLE_HINT)  # fmt: skip
        else:
            write_captions(existing, dest)
            log.info("captions are off (data.generate_caption=false): wrote an empty %s; %s", dest, ENABLE_HINT)
        return CaptionRun(dest, existing, kept=len(existing))
    kept = matching_rows(existing, items)
    if len(kept) < len(existing):
        log.info("dropped %d captions of items that are no longer in %s", len(existing) - len(kept), prepared)
    files = image_files(items, images_dir)
    run = CaptionRun(dest, kept, kept=len(kept), with_image=len(files))
    if not files:
        write_captions(kept, dest)
        log.info("no item of %s has a usable image in %s (MovieLens has no images; run `recsys images` for a dataset "
                 "with image URLs): no captions to make, BLIP-2 not loaded, wrote %s with %d rows", prepared,
                 images_dir, dest, len(kept))  # fmt: skip
        return _finish(run, started)
    source = resolve_blip2(cfg.caption_model)
    done = set(kept.loc[kept["model"] == source, "item_id"].astype(int))
    todo = sorted(i for i in files if i not in done)
    stale = int((kept["item_id"].isin(todo)).sum())
    if stale:
        log.info("%d captions were made by another model than %s: they are made again", stale, source)
    if not todo:
        write_captions(kept, dest)
        log.info(
            "all %d items with an image have a caption by %s: nothing to do, BLIP-2 not loaded", len(files), source
        )
        return _finish(run, started)
    log.info("captioning %d of %d items with an image by %s (%d already done), batches of %d",
             len(todo), len(files), source, len(done), cfg.caption_batch_size)  # fmt: skip
    model, processor = load_blip2(source, device)
    run.loaded_model = True
    raw_ids = dict(zip(items["item_id"].astype("int64"), items["raw_id"].astype(str), strict=True))
    new_rows: list[dict[str, Any]] = []

    def table() -> pd.DataFrame:
        made = pd.DataFrame(new_rows, columns=list(COLUMNS))
        old = kept[~kept["item_id"].isin(made["item_id"])]
        return _normalise(pd.concat([old, made], ignore_index=True)) if len(made) else _normalise(old)

    batches = iter_captions(model, processor, [files[i] for i in todo], cfg.caption_batch_size,
                            cfg.caption_max_new_tokens, progress)  # fmt: skip
    size = cfg.caption_batch_size
    try:
        for n, captions in enumerate(batches, start=1):
            for item_id, caption in zip(todo[(n - 1) * size : n * size], captions, strict=True):
                if caption is None:
                    run.unreadable += 1
                else:
                    new_rows.append({"item_id": item_id, "raw_id": raw_ids[item_id], "caption": caption,
                                     "model": source})  # fmt: skip
            if n % save_every == 0:
                write_captions(table(), dest)
    except BaseException:
        if new_rows:  # an interrupted run keeps what it made
            write_captions(table(), dest)
            log.warning("captioning stopped after %d new captions; they are saved in %s", len(new_rows), dest)
        raise
    run.table, run.made = table(), len(new_rows)
    write_captions(run.table, dest)
    empty = sum(1 for row in new_rows if not row["caption"])
    if empty:
        log.warning("%d of %d new captions are empty (the reranker shows those items' titles alone)", empty, run.made)
    if run.unreadable:
        log.warning("%d images could not be read; the next run tries them again", run.unreadable)
    return _finish(run, started)


def _finish(run: CaptionRun, started: float) -> CaptionRun:
    run.seconds = time.perf_counter() - started
    run.kept = len(run.table) - run.made
    if run.made:
        log.info("made %d captions in %.1f s (%.2f captions/s), kept %d; %s has %d rows", run.made, run.seconds,
                 run.made / max(run.seconds, 1e-9), run.kept, run.path, len(run.table))  # fmt: skip
    return run
