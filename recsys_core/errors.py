"""One exception type per kind of failure, so callers and tests can tell them apart.

Every message names the file, key or value at fault and says how to fix it.
"""


class RecsysError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(RecsysError):
    """A params.yaml key or a flag is unknown or holds a bad value."""


class DownloadError(RecsysError):
    """A file could not be fetched; the message names the URL and where to place the file by hand."""


class ChecksumError(RecsysError):
    """A file's sha256 differs from the one we expect."""


class DataFormatError(RecsysError):
    """A raw file is malformed: truncated, missing columns, or too many bad lines."""


class EmptyDatasetError(RecsysError):
    """The filters removed every interaction; the message lists the counts after each step."""


class CandidateSamplingError(RecsysError):
    """Too few unseen items remain to draw the requested negatives for a user."""


class MissingArtifactError(RecsysError):
    """An input that an earlier stage should have produced is absent; the message names that stage."""


class LineageError(RecsysError):
    """Models, lists or metrics of different prepared data (or evaluation protocols) would be combined or compared;
    the message names both sides and how to bring them together."""


def lost_insert_race(err: Exception) -> bool:
    """Whether a store error is a unique key that another process inserted first (SQLite or PostgreSQL): two
    stages started at once (queued sweeps) both insert the same row and the database lets one in."""
    text = str(err).lower()
    return "unique constraint" in text or "uniqueviolation" in text or "already exists" in text
