"""Item text cleaning shared by every source (titles from Amazon 2018 may hold HTML)."""

from __future__ import annotations

import html
import re

_TAG = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")
_MISSING = {"", "nan", "none", "null", "unknown", "unkonwn"}


def clean_text(value: object) -> str:
    """HTML entities decoded, tags removed, whitespace collapsed; lists are joined with spaces."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        value = " ".join(clean_text(v) for v in value)
    text = html.unescape(str(value))
    text = _TAG.sub(" ", text)
    text = _SPACE.sub(" ", text).strip()
    return "" if text.lower() in _MISSING else text


def item_text(title: str, description: str, limit: int = 2000) -> str:
    """The one text field later stages embed or show to an LLM: title, then description, length-capped."""
    parts = [p for p in (title, description) if p]
    return ". ".join(parts)[:limit]
