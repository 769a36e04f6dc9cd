"""Lineage: which prepared data a model version belongs to and on which protocol it was evaluated, so that versions
of different data are never combined and numbers of different protocols are never compared.

A *data version* is a short hash of the prepared ``interactions.parquet`` and ``items.parquet`` (their DVC md5s):
two folders with the same data version hold the same item ids and the same split. Every training run and registered
version carries it as the tag ``data.version`` (older versions carry the two md5 tags it is computed from).

A reranker's *protocol* says what its validation numbers are numbers of: ground-truth lists (N candidates with
random negatives) or the top K of one registered retriever version.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from recsys_core.errors import LineageError, MissingArtifactError

DATA_VERSION_TAG = "data.version"
PREPARED_TAG = "prepared_dir"
PROTOCOL_TAG = "protocol"
FINGERPRINT_TAG = "training.fingerprint"
_MD5_TAGS = ("data.interactions.md5", "data.items.md5")


def data_version_from_md5(interactions_md5: str, items_md5: str) -> str:
    return hashlib.sha256(f"{interactions_md5}\n{items_md5}".encode()).hexdigest()[:12]


def data_version(prepared: Path) -> str:
    """The data version of a prepared folder (from its files)."""
    from recsys_core.data.store import INTERACTIONS, ITEMS
    from recsys_core.tracking import dvc_md5

    prepared = Path(prepared)
    missing = [name for name in (INTERACTIONS, ITEMS) if not (prepared / name).exists()]
    if missing:
        raise MissingArtifactError(f"{prepared}: missing {', '.join(missing)}; run the prepare stage first")
    return data_version_from_md5(dvc_md5(prepared / INTERACTIONS), dvc_md5(prepared / ITEMS))


def data_tags(prepared: Path) -> dict[str, str]:
    """What every run and version of this data is tagged with."""
    return {DATA_VERSION_TAG: data_version(prepared), PREPARED_TAG: Path(prepared).name}


def version_data(tags: dict[str, str]) -> str | None:
    """The data version a run or registry version was tagged with (None: it predates lineage and has no md5s)."""
    if tags.get(DATA_VERSION_TAG):
        return tags[DATA_VERSION_TAG]
    if all(tags.get(t) for t in _MD5_TAGS):
        return data_version_from_md5(*(tags[t] for t in _MD5_TAGS))
    return None


def describe(record: Any) -> str:
    """'ml-100k-retriever v3 (prepared data ml-100k_min_rating0-min_uc5-min_sc5, data version 1a2b3c4d5e6f)'."""
    tags = record.tags
    return (f"{record.name} v{record.version} (prepared data {tags.get(PREPARED_TAG, '?')}, data version "
            f"{version_data(tags) or 'unknown'})")  # fmt: skip


def require_same_data(record: Any, current: str, prepared: Path, fix: str) -> None:
    """Stop unless the registry version ``record`` was trained on the data version ``current`` (of ``prepared``)."""
    theirs = version_data(record.tags)
    if theirs == current:
        return
    raise LineageError(
        f"{describe(record)} belongs to other data than the prepared folder {Path(prepared).name} (data version "
        f"{current}): its item ids and split differ, so its numbers and lists would be wrong here. {fix}"
    )


def reranker_protocol(mode: str, tags: dict[str, str], candidates: int) -> str:
    """The evaluation protocol of a reranker's validation numbers, as a tag value."""
    if mode == "ground_truth":
        return (f"ground_truth: {candidates} candidates, {tags.get('gt_candidates.negative_sampling', '?')} "
                f"negatives, seed {tags.get('gt_candidates.seed', '?')}")  # fmt: skip
    return f"retrieval: top {candidates} of {tags['retriever.name']} v{tags['retriever.version']}"
