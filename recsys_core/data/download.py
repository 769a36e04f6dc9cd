"""Fetch raw files over HTTP: streamed, with a progress bar, retries with backoff, sha256, written atomically."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import requests
from tqdm.auto import tqdm
from urllib3.exceptions import NameResolutionError

from recsys_core.errors import ChecksumError, DownloadError
from recsys_core.io import atomic_path, sha256_file

log = logging.getLogger(__name__)

RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class FetchedFile:
    """What we record about each raw file, so a run can say exactly which bytes it used."""

    name: str
    url: str | None
    sha256: str
    size: int
    origin: str  # "downloaded" | "already present"

    def as_dict(self) -> dict:
        return {"name": self.name, "url": self.url, "sha256": self.sha256, "size": self.size, "origin": self.origin}


def download(
    url: str,
    dest: Path,
    *,
    retries: int = 3,
    backoff: float = 1.0,
    timeout: float = 30.0,
    expected_sha256: str | None = None,
    session: requests.Session | None = None,
    manual_hint: str | None = None,
) -> FetchedFile:
    """Download ``url`` to ``dest`` unless a file is already there (placed by hand, or fetched before).

    Retries connection errors, timeouts and 5xx/429 answers ``retries`` times, waiting backoff·2^attempt seconds.
    A 4xx answer or an unknown host name fails at once. On failure the message names the URL and where to put the
    file by hand (``manual_hint`` replaces the default advice, e.g. for archives that are unpacked).
    """
    dest = Path(dest)
    if dest.exists():
        digest = sha256_file(dest)
        _check_sha(dest, digest, expected_sha256)
        return FetchedFile(dest.name, url, digest, dest.stat().st_size, "already present")

    http = session or requests.Session()
    last_error = "no attempt made"
    for attempt in range(retries + 1):
        if attempt:
            wait = backoff * 2 ** (attempt - 1)
            log.warning("retrying %s in %.1fs (attempt %d/%d): %s", url, wait, attempt + 1, retries + 1, last_error)
            time.sleep(wait)
        try:
            digest, size = _stream_once(http, url, dest, timeout)
        except _Permanent as err:
            last_error = str(err)
            break
        except (
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
            _Retryable,
        ) as err:
            last_error = f"{type(err).__name__}: {err}"
            if _unknown_host(err):
                break
            continue
        _check_sha(dest, digest, expected_sha256, remove=True)
        return FetchedFile(dest.name, url, digest, size, "downloaded")
    advice = manual_hint or f"download the file elsewhere and place it at {dest.resolve()}, then run the stage again"
    raise DownloadError(f"could not download {url} ({last_error}). If this machine cannot reach the host, {advice}.")


def _unknown_host(err: Exception) -> bool:
    """DNS said the host does not exist (offline machine, typo): retrying will not help."""
    reason = getattr(err.args[0], "reason", None) if err.args else None
    return isinstance(reason, NameResolutionError)


class _Retryable(Exception):
    pass


class _Permanent(Exception):
    pass


def _stream_once(http: requests.Session, url: str, dest: Path, timeout: float) -> tuple[str, int]:
    with http.get(url, stream=True, timeout=timeout) as resp:
        if resp.status_code in RETRYABLE_STATUS:
            raise _Retryable(f"HTTP {resp.status_code}")
        if resp.status_code >= 400:
            raise _Permanent(f"HTTP {resp.status_code} {resp.reason}")
        total = int(resp.headers.get("content-length") or 0) or None
        digest = hashlib.sha256()
        size = 0
        with atomic_path(dest) as tmp, open(tmp, "wb") as out:
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, leave=False) as bar:
                for chunk in resp.iter_content(chunk_size=1 << 16):
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    bar.update(len(chunk))
            if total is not None and size != total:
                raise _Retryable(f"connection closed after {size} of {total} bytes")
            out.flush()
    return digest.hexdigest(), size


def _check_sha(path: Path, actual: str, expected: str | None, remove: bool = False) -> None:
    if expected and actual != expected:
        if remove:
            path.unlink(missing_ok=True)
        raise ChecksumError(
            f"{path}: sha256 {actual} differs from the expected {expected}; the file is corrupt or a different "
            f"release. Delete it and run the download stage again."
        )
