"""Stage-1 retrievers by method name. Adding a method: one new file and one line here."""

from __future__ import annotations

from recsys_core.errors import ConfigError
from recsys_core.retrieval.base import Retriever
from recsys_core.retrieval.bm3 import BM3
from recsys_core.retrieval.ease import EASE
from recsys_core.retrieval.lrurec import LRURec
from recsys_core.retrieval.mmgcn import MMGCN
from recsys_core.retrieval.vbpr import VBPR

RETRIEVERS: dict[str, type[Retriever]] = {
    "lrurec": LRURec,
    "vbpr": VBPR,
    "mmgcn": MMGCN,
    "bm3": BM3,
    "ease": EASE,
}


def get_retriever_class(method: str) -> type[Retriever]:
    if method not in RETRIEVERS:
        raise ConfigError(
            f"retrieval method {method!r} is not available in this version; available: {', '.join(RETRIEVERS)}"
        )
    return RETRIEVERS[method]
