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
