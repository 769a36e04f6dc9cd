"""Stage-2 rerankers by method name. Adding a method: one new file and one line here."""

from __future__ import annotations

from recsys_core.errors import ConfigError
from recsys_core.rerank.base import Reranker
from recsys_core.rerank.bert4rec import BERT4Rec
from recsys_core.rerank.ltr import LTRReranker
from recsys_core.rerank.qwen import QwenReranker
from recsys_core.rerank.qwen3vl import Qwen3VLReranker
from recsys_core.rerank.vip5 import VIP5Reranker

RERANKERS: dict[str, type[Reranker]] = {
    "bert4rec": BERT4Rec,
    "qwen": QwenReranker,
    "qwen3vl": Qwen3VLReranker,
    "vip5": VIP5Reranker,
    "ltr": LTRReranker,
}


def get_reranker_class(method: str) -> type[Reranker]:
    if method not in RERANKERS:
        raise ConfigError(
            f"rerank method {method!r} is not available in this version; available: {', '.join(RERANKERS)}"
        )
    return RERANKERS[method]
