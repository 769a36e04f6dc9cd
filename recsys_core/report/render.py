"""The report page: a Jinja2 template (HTML-escaped) filled with the numbers and the inline plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recsys_core.significance import PairedDelta

TEMPLATE = Path(__file__).with_name("template.html")


def verdict_class(delta: PairedDelta) -> str:
    return delta.verdict if delta.verdict in ("gain", "loss") else "none"


def render(report: Any) -> str:
    """The whole page as one string: no file it links to, no script, nothing fetched when it opens."""
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.from_string(TEMPLATE.read_text(encoding="utf-8")).render(r=report, verdict_class=verdict_class)
