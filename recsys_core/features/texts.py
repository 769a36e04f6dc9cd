"""Item texts for the LLM rerankers' modes (``llm.qwen_mode``): the title alone, or the title with a generated text
(a BLIP-2 caption, a Qwen3-VL semantic summary) read from the tables the captions and summaries stages write into
the prepared folder.

Generated texts are optional per item (an item without an image has no caption), so an item lacking one falls back
to its title and the count is logged; but a mode whose texts do not exist at all is a forgotten stage, not a
fallback, and stops with a message naming the stage and the flag that makes them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from recsys_core.config import QWEN_MODES
from recsys_core.errors import ConfigError, DataFormatError, MissingArtifactError
from recsys_core.features.captions import CAPTIONS

log = logging.getLogger(__name__)

SUMMARIES = "semantic_summaries.parquet"  # written by the summaries stage (Qwen3-VL)
CAPTION_HOW = "run `dvc exp run -S data.generate_caption=true` or `recsys captions --generate_caption`"
SUMMARY_HOW = ("run `dvc exp run -S data.generate_semantic_summary=true` or "
               "`recsys summaries --generate_semantic_summary`")  # fmt: skip
# file -> (the text columns it gives, the stage that writes it, how to make it)
TABLES = {
    CAPTIONS: (("caption",), "captions (BLIP-2)", CAPTION_HOW),
    SUMMARIES: (("semantic_summary", "semantic_summary_small"), "summaries (Qwen3-VL)", SUMMARY_HOW),
}
GENERATED = {column: (name, stage, how) for name, (columns, stage, how) in TABLES.items() for column in columns}


def item_titles(items: pd.DataFrame) -> dict[int, str]:
    """id -> title, the ``text`` column where the title is empty."""
    if "item_id" not in items or "title" not in items:
        raise ConfigError("the items frame needs item_id and title columns (data/preprocessed/.../items.parquet)")
    titles = items["title"].fillna("").astype(str)
    if "text" in items:
        titles = titles.where(titles.str.strip() != "", items["text"].fillna("").astype(str))
    return {int(i): t for i, t in zip(items["item_id"], titles, strict=True)}


def attach_generated_texts(items: pd.DataFrame, prepared: Path) -> pd.DataFrame:
    """A copy of ``items`` with ``caption``, ``semantic_summary`` and ``semantic_summary_small`` columns from the
    tables in ``prepared``: None where an item has none, all None for a table that is absent. Rows whose raw_id is
    not the item's (a table left from another preparation) are ignored."""
    out = items.copy()
    for name, (columns, _stage, how) in TABLES.items():
        values: dict[str, list[str | None]] = {c: [None] * len(out) for c in columns}
        path = Path(prepared) / name
        if path.is_file():
            table = pd.read_parquet(path)
            missing = [c for c in ("item_id", "raw_id", *columns) if c not in table.columns]
            if missing:
                raise DataFormatError(f"{path} lacks the columns {missing}; delete it and make it again ({how})")
            by_pair = {(int(i), str(r)): row for i, r, row in zip(table["item_id"], table["raw_id"],
                                                                  table[list(columns)].to_dict("records"), strict=True)}  # fmt: skip
            for k, pair in enumerate(zip(out["item_id"].astype(int), out["raw_id"].astype(str), strict=True)):
                row = by_pair.get(pair)
                if row is None:
                    continue
                for c in columns:
                    values[c][k] = None if pd.isna(row[c]) else str(row[c])
        for c in columns:
            out[c] = pd.Series(values[c], index=out.index, dtype=object)
    return out


def texts_for_mode(items: pd.DataFrame, mode: str) -> dict[int, str]:
    """id -> the text the reranker shows in ``mode``: the title (``text_only``, and ``raw_image``, where the title
    stands beside the picture), or ``"{title}. {generated text}"`` (``caption``, ``semantic_summary``,
    ``semantic_summary_small``; ``items`` from :func:`attach_generated_texts`). Items lacking the generated text get
    the title alone (a warning gives the count); no item having it raises MissingArtifactError."""
    if mode not in QWEN_MODES:
        raise ConfigError(f"llm.qwen_mode {mode!r} is not one of {', '.join(QWEN_MODES)}")
    titles = item_titles(items)
    if mode in ("text_only", "raw_image"):
        return titles
    name, stage, how = GENERATED[mode]
    extra = items[mode] if mode in items else pd.Series([None] * len(items), index=items.index)
    texts: dict[int, str] = {}
    lacking = 0
    for item_id, value in zip(items["item_id"].astype(int), extra, strict=True):
        title = titles[item_id]
        text = "" if value is None or pd.isna(value) else " ".join(str(value).split())
        if not text:
            lacking += 1
            texts[item_id] = title
        else:
            texts[item_id] = f"{title}. {text}" if title.strip() else text
    if lacking == len(items) and len(items):
        raise MissingArtifactError(
            f"llm.qwen_mode={mode} needs the {mode} texts of the {stage} stage ({name} in the prepared folder), but "
            f"no item has one: {how} (and attach them with attach_generated_texts), or use --qwen_mode text_only"
        )
    if lacking:
        log.warning("%d of %d items have no %s: the reranker shows their title alone", lacking, len(items), mode)
    return texts
