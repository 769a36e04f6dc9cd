"""Dataset sources by code. Adding a source: one new file and one line here."""

from __future__ import annotations

from recsys_core.data.sources.amazon import Beauty, Games
from recsys_core.data.sources.base import RawDataset, Source
from recsys_core.data.sources.custom import Custom
from recsys_core.data.sources.movielens import MovieLens100K, MovieLensLatestSmall
from recsys_core.data.sources.movielens_1m import MovieLens1M

SOURCES: dict[str, type[Source]] = {
    "ml-100k": MovieLens100K,
    "ml-1m": MovieLens1M,
    "ml-latest-small": MovieLensLatestSmall,
    "beauty": Beauty,
    "games": Games,
    "custom": Custom,
}


def get_source(code: str) -> Source:
    from recsys_core.config import is_custom

    if is_custom(code):
        return Custom(code)
    if code not in SOURCES:
        from recsys_core.errors import ConfigError

        raise ConfigError(f"unknown dataset_code {code!r}; choose one of {', '.join(SOURCES)} or custom-NAME")
    return SOURCES[code]()


__all__ = ["SOURCES", "RawDataset", "Source", "get_source"]
