"""Item images: fetch each item's picture (URL or local file), check it, save a small RGB JPEG, record the outcome.

Image embeddings and multimodal rerankers need one decoded, same-sized picture per item, but the image URLs of
public datasets are often dead, slow, oversized or not images at all. So no single item can fail the run: every
item gets a row in ``manifest.parquet`` with a status and a reason, and a rerun reuses what is done and retries only
what failed for a transient reason (timeouts, dropped connections, 5xx/408/429 answers).

A local ``image_path`` is data, not a licence to read any file: it must lead (after following symlinks and "..") to
a regular file inside the items file's folder, else the item is ``refused`` without the file being opened.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import stat
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import requests
from PIL import Image, ImageOps
from requests.adapters import HTTPAdapter
from tqdm.auto import tqdm
from urllib3.exceptions import NameResolutionError, ReadTimeoutError

from recsys_core.config import FeaturesConfig
from recsys_core.errors import DataFormatError, MissingArtifactError
from recsys_core.io import atomic_path

log = logging.getLogger(__name__)

MANIFEST = "manifest.parquet"
FILES = "files"
TOTAL_TIMEOUTS = 4  # a whole download may take this many times features.image_timeout
STATUSES = ("ok", "missing_url", "http_error", "timeout", "not_image", "corrupt", "too_large", "refused")
COLUMNS = ("raw_id", "source", "status", "reason", "file", "width", "height", "orig_width", "orig_height")
_TEXT_COLUMNS = COLUMNS[:5]
_INT_COLUMNS = COLUMNS[5:]
ITEM_COLUMNS = ("raw_id", "image_url", "image_path")

USER_AGENT = "seqrerank/0.1 (item image download for research; python-requests)"
JPEG_QUALITY = 95
RETRY_STATUS = frozenset({408, 429})  # plus every 5xx
BACKOFF_START, BACKOFF_CAP = 0.5, 4.0  # seconds
FINAL_STATUSES = frozenset({"missing_url", "not_image", "corrupt", "too_large", "refused"})  # + http_error on a 4xx
# Only the formats item pictures come in: Pillow's rarer plugins (EPS runs Ghostscript) are not worth the risk. MPO
# (multi-picture JPEG from cameras) has no opener of its own: the JPEG one returns it. Naming a format Pillow cannot
# open made every non-JPEG/PNG/... picture fail with "KeyError: 'MPO'", so FORMATS keeps only what this Pillow opens
# (pillow==13.0.0 opens all of these, AVIF included; tests/test_hostile_input.py checks it).
WANTED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF")
Image.init()
FORMATS = tuple(f for f in WANTED_FORMATS if f in Image.OPEN)
# Signatures of files people take for images but Pillow does not read here, to name them in the reason.
_KNOWN_OTHERS = (
    (b"%PDF", "a PDF document"),
    (b"<svg", "an SVG drawing (vector, not decoded)"),
    (b"<?xml", "XML text (an SVG drawing?)"),
    (b"<!doctype html", "an HTML page"),
    (b"<html", "an HTML page"),
    (b"PK\x03\x04", "a zip archive"),
    (b"\x1f\x8b", "gzip data"),
)
_PSEUDO_FS = (Path("/proc"), Path("/sys"))
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1")
_SAFE_NAME = re.compile(r"[A-Za-z0-9._-]{1,80}")
_HTTP_CODE = re.compile(r"^HTTP (\d{3})\b")
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_MB = 1 << 20


class _Failure(Exception):
    """One item's image cannot be used: its status, the reason, and whether another try may help."""

    def __init__(self, status: str, reason: str, transient: bool = False):
        super().__init__(reason)
        self.status, self.reason, self.transient = status, reason, transient


@dataclass(frozen=True)
class _Job:
    """One item to process: where its picture comes from (``local``, the resolved file, is set when ``source`` is a
    file path; ``refusal`` says why that path may not be read)."""

    raw_id: str
    source: str
    local: Path | None
    refusal: str = ""


def download_images(
    items: pd.DataFrame, dest: Path, cfg: FeaturesConfig, base_dir: Path | None = None, progress: bool = True
) -> pd.DataFrame:
    """Fetch, check and resize the picture of every item into ``dest/files``; write and return the manifest.

    ``items`` holds ``raw_id``, ``image_url`` and ``image_path`` ('' when absent). A local ``image_path`` wins over
    ``image_url``; it resolves against ``base_dir`` (the items file's folder; else the working directory) and must stay
    inside it after symlinks and ".." are followed (absolute paths too), and be a regular file: anything else (a
    path outside, a device, fifo, folder or /proc entry) is ``refused`` and never opened. Each picture is
    converted to RGB (transparency composited onto white), shrunk to fit ``cfg.image_size`` squared with its aspect
    ratio kept (smaller pictures are not upscaled: that would add no detail) and saved as ``files/<name>.jpg``.

    Resuming: an item whose previous manifest row has the same source and is ``ok`` (file present, saved at the size
    the current ``image_size`` gives) or a final failure is not fetched again; timeouts and transient HTTP errors are.
    Local files are read again unless ``ok`` (cheap, and the user may have fixed them). Rows of the previous manifest
    for items not in ``items`` are kept: a later run with other filters may need them. The manifest is written even
    when the run stops midway, so a rerun resumes. The return value is the whole manifest as written (sorted by
    raw_id), so it may hold rows of items outside ``items``; filter on ``raw_id`` for those of this call.
    """
    dest = Path(dest)
    (dest / FILES).mkdir(parents=True, exist_ok=True)
    rows = _previous_rows(dest)
    jobs = _jobs(items, base_dir)
    todo, reused = [], 0
    for job in jobs:
        old = rows.get(job.raw_id)
        if not job.source:
            rows[job.raw_id] = _row(job.raw_id, "", "missing_url", "no image_url or image_path")
            (dest / FILES / f"{file_name(job.raw_id)}.jpg").unlink(missing_ok=True)
        elif job.refusal:  # also drops a copy that an earlier version made of a file outside the folder
            rows[job.raw_id] = _row(job.raw_id, job.source, "refused", job.refusal)
            (dest / FILES / f"{file_name(job.raw_id)}.jpg").unlink(missing_ok=True)
        elif old is not None and _reusable(old, job, dest, cfg.image_size):
            reused += 1
        else:
            todo.append(job)

    futures: list[Future] = []
    session = _session(cfg.image_workers)
    pool = ThreadPoolExecutor(max_workers=cfg.image_workers, thread_name_prefix="images")
    try:
        futures = [pool.submit(_process, job, session, cfg, dest) for job in todo]
        with tqdm(total=len(todo), desc="images", unit="img", disable=not progress) as bar:
            for future in as_completed(futures):
                row = future.result()
                rows[row["raw_id"]] = row
                bar.update()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        session.close()
        for future in futures:  # finished but not yet collected when the loop stopped early
            if future.done() and not future.cancelled() and future.exception() is None:
                rows[future.result()["raw_id"]] = future.result()
        manifest = _frame(rows.values())
        with atomic_path(dest / MANIFEST) as tmp:
            manifest.to_parquet(tmp, index=False)

    _log_summary(manifest, {job.raw_id for job in jobs}, reused, len(todo))
    return manifest


def load_manifest(dest: Path) -> pd.DataFrame:
    """The manifest written by ``download_images`` into ``dest``; one row per item, sorted by raw_id."""
    path = Path(dest) / MANIFEST
    if not path.is_file():
        raise MissingArtifactError(f"{path} is missing; run the images stage first (`recsys images`)")
    frame = pd.read_parquet(path)
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise DataFormatError(f"{path} lacks the columns {missing}; delete it and run `recsys images` again")
    return frame[list(COLUMNS)]


def usable_raw_ids(manifest: pd.DataFrame) -> set[str]:
    """Raw ids whose picture was saved (status ok)."""
    return set(manifest.loc[manifest["status"] == "ok", "raw_id"].astype(str))


def image_files(items: pd.DataFrame, dest: Path) -> dict[int, Path]:
    """item_id -> its saved picture in ``dest`` (the images stage's folder), for the items whose status is ok and
    whose file exists; items without one are absent (callers decide: skip, placeholder or error). No manifest at all
    (a dataset without images, or the stage not run) gives an empty mapping."""
    dest = Path(dest)
    if not (dest / MANIFEST).is_file():
        return {}
    manifest = load_manifest(dest)
    ok = manifest[manifest["status"] == "ok"].set_index("raw_id")["file"]
    found = {}
    for item_id, raw_id in zip(items["item_id"], items["raw_id"].astype(str), strict=True):
        name = ok.get(raw_id)
        if name and (dest / name).is_file():
            found[int(item_id)] = dest / name
    return found


def file_name(raw_id: str) -> str:
    """The file stem for an item: its raw id when filesystem-safe, else a sha1 hex prefix of it."""
    if _SAFE_NAME.fullmatch(raw_id) and raw_id not in (".", ".."):
        return raw_id
    return hashlib.sha1(raw_id.encode("utf-8"), usedforsecurity=False).hexdigest()[:20]


def fit_size(width: int, height: int, size: int) -> tuple[int, int]:
    """The size that fits within size×size with the aspect ratio kept, never larger than the original."""
    scale = min(size / width, size / height, 1.0)
    return max(1, round(width * scale)), max(1, round(height * scale))


def is_final(status: str, reason: str) -> bool:
    """Whether a failure will not change on another try: bad content, no source, or a 4xx other than 408/429."""
    if status in FINAL_STATUSES:
        return True
    match = _HTTP_CODE.match(reason) if status == "http_error" else None
    return bool(match) and 400 <= int(match.group(1)) < 500 and int(match.group(1)) not in RETRY_STATUS


# ---------------------------------------------------------------------------------------------- planning, manifest


def _jobs(items: pd.DataFrame, base_dir: Path | None) -> list[_Job]:
    """One job per distinct raw id (the first row wins), with the source that will be used."""
    missing = [c for c in ITEM_COLUMNS if c not in items.columns]
    if missing:
        raise DataFormatError(f"the items frame lacks the columns {missing}; it needs {list(ITEM_COLUMNS)}")
    frame = items[list(ITEM_COLUMNS)].fillna("").astype(str)
    dupes = frame["raw_id"].duplicated()
    if dupes.any():
        log.warning("%d duplicate raw ids in the items; using the first row of each", int(dupes.sum()))
        frame = frame[~dupes]
    root = Path(base_dir if base_dir is not None else Path.cwd()).resolve()
    jobs = []
    for raw_id, url, path in frame.itertuples(index=False, name=None):
        url, path = url.strip(), path.strip()
        if path:
            local, refusal = _local_path(path, root)
            jobs.append(_Job(raw_id, path, local, refusal))
        else:
            jobs.append(_Job(raw_id, url, None))
    return jobs


def _local_path(given: str, root: Path) -> tuple[Path, str]:
    """The file an ``image_path`` leads to (symlinks and ".." followed) and, when it is outside ``root``, why it is
    refused: the items table may come from anyone, and must not make the stage copy /etc/passwd into the images."""
    if "\x00" in given:
        return root, f"image_path {given!r} holds a NUL character; give a plain file path"
    try:
        path = Path(given).expanduser()
        real = (path if path.is_absolute() else root / path).resolve()
    except (OSError, RuntimeError) as err:  # a symlink loop, or a "~user" that does not exist
        return root, f"image_path {given!r} cannot be resolved ({err}); give a plain file path inside {root}"
    if real.is_relative_to(root):
        pseudo = next((p for p in _PSEUDO_FS if real.is_relative_to(p)), None)
        if pseudo is not None:  # their entries look like regular files (of size 0) but are views of the system
            return real, f"image_path {given!r} leads to {real}, a {pseudo} entry, not a regular file"
        return real, ""
    return real, (
        f"image_path {given!r} leads to {real}, outside the items file's folder {root} (after following symlinks "
        f"and '..'): only files inside it are read. Copy the image into that folder and give its path relative to it."
    )


def _reusable(old: dict, job: _Job, dest: Path, size: int) -> bool:
    """Whether the previous row still holds: same source, and ok with its file at today's size, or a final failure."""
    if old["source"] != job.source:
        return False
    if old["status"] == "ok":
        ow, oh = int(old["orig_width"]), int(old["orig_height"])
        return (
            bool(old["file"])
            and (dest / old["file"]).is_file()
            and ow > 0
            and oh > 0
            and (int(old["width"]), int(old["height"])) == fit_size(ow, oh, size)
        )
    return job.local is None and is_final(old["status"], old["reason"])


def _previous_rows(dest: Path) -> dict[str, dict]:
    """The previous manifest's rows by raw id; empty when there is none or it cannot be read."""
    if not (dest / MANIFEST).is_file():
        return {}
    try:
        frame = load_manifest(dest)
    except Exception as err:  # a broken cache only costs time: start over rather than fail
        log.warning("ignoring the unreadable %s (%s); every item is fetched again", dest / MANIFEST, err)
        return {}
    return {row["raw_id"]: row for row in frame.to_dict("records")}


def _row(raw_id: str, source: str, status: str, reason: str, file: str = "", size=(0, 0), orig=(0, 0)) -> dict:
    """A manifest row."""
    return dict(zip(COLUMNS, (raw_id, source, status, reason, file, *size, *orig), strict=True))


def _frame(rows) -> pd.DataFrame:
    """Manifest rows as a frame with fixed dtypes, sorted by raw id so reruns write the same bytes."""
    frame = pd.DataFrame(list(rows), columns=list(COLUMNS))
    frame = frame.astype({c: "int64" for c in _INT_COLUMNS} | {c: str for c in _TEXT_COLUMNS})
    return frame.sort_values("raw_id", kind="stable").reset_index(drop=True)


def _log_summary(manifest: pd.DataFrame, raw_ids: set[str], reused: int, fetched: int) -> None:
    """Log how many of this call's items ended in each status."""
    counts = Counter(manifest.loc[manifest["raw_id"].isin(raw_ids), "status"])
    parts = ", ".join(f"{status} {counts[status]}" for status in STATUSES if counts[status])
    log.info("images: %d items (%d reused, %d processed): %s", len(raw_ids), reused, fetched, parts or "none")


# ---------------------------------------------------------------------------------------------- one item


def _process(job: _Job, session: requests.Session, cfg: FeaturesConfig, dest: Path) -> dict:
    """Fetch, check and save one item's picture; a per-item failure becomes a manifest row, never an exception."""
    target = dest / FILES / f"{file_name(job.raw_id)}.jpg"
    try:
        data = _read_local(job.local, cfg) if job.local is not None else _fetch(session, job.source, cfg)
        image, orig = _load_image(data, cfg.image_size)
    except _Failure as err:
        log.debug("image of %s from %s: %s (%s)", job.raw_id, job.source, err.status, err.reason)
        target.unlink(missing_ok=True)  # a file from an older source would contradict the row
        return _row(job.raw_id, job.source, err.status, err.reason)
    with atomic_path(target) as tmp:
        image.save(tmp, format="JPEG", quality=JPEG_QUALITY)
    return _row(job.raw_id, job.source, "ok", "", f"{FILES}/{target.name}", image.size, orig)


def _session(workers: int) -> requests.Session:
    """A requests session whose connection pool fits the worker threads (no urllib3-level retries)."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=workers, pool_maxsize=workers, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    return session


def _max_bytes(cfg: FeaturesConfig) -> int:
    """The download limit in bytes (1 MB = 2**20 bytes)."""
    return int(cfg.image_max_mb * _MB)


def _too_large(size: int | None, cfg: FeaturesConfig) -> _Failure:
    """The too_large failure, naming the limit."""
    got = f"{size / _MB:.1f} MB" if size is not None else "the body"
    return _Failure("too_large", f"{got} exceeds the {cfg.image_max_mb:g} MB limit (features.image_max_mb)")


def _read_local(path: Path, cfg: FeaturesConfig) -> bytes:
    """The bytes of a local picture (``path`` is resolved and inside the folder: see ``_local_path``).

    Only a regular file is read: a fifo would block, a device or /proc entry is not data, a folder is not a file.
    The file is opened without following a symlink put there since the check and without blocking, checked again on
    the open descriptor, and read up to the size limit (a /proc file says it is 0 bytes long). A missing or
    unreadable file is missing_url.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise _Failure("missing_url", f"local file {path} not found") from None
    except OSError as err:
        raise _Failure("missing_url", f"cannot read local file {path}: {err.strerror or err}") from err
    if not stat.S_ISREG(info.st_mode):
        raise _not_regular(path, info.st_mode)
    if info.st_size > _max_bytes(cfg):
        raise _too_large(info.st_size, cfg)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        with os.fdopen(os.open(path, flags), "rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise _not_regular(path, mode)
            data = handle.read(_max_bytes(cfg) + 1)
    except OSError as err:
        raise _Failure("missing_url", f"cannot read local file {path}: {err.strerror or err}") from err
    if len(data) > _max_bytes(cfg):
        raise _too_large(None, cfg)
    return data


def _not_regular(path: Path, mode: int) -> _Failure:
    """The refusal of a path that is not a regular file, naming what it is."""
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a fifo (named pipe)"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))  # fmt: skip
    kind = next((name for test, name in kinds if test(mode)), "not a regular file")
    return _Failure("refused", f"{path} is {kind}, not a regular file: point image_path at an image file")


def _fetch(session: requests.Session, url: str, cfg: FeaturesConfig) -> bytes:
    """GET ``url``, retrying transient failures up to ``cfg.image_retries`` times with exponential backoff."""
    attempt = 0
    while True:
        try:
            return _fetch_once(session, url, cfg)
        except _Failure as err:
            if not err.transient or attempt >= cfg.image_retries:
                raise
            time.sleep(min(BACKOFF_START * 2**attempt, BACKOFF_CAP))
            attempt += 1


def _fetch_once(session: requests.Session, url: str, cfg: FeaturesConfig) -> bytes:
    """One streamed GET with the header and size checks; requests errors become _Failure."""
    try:
        with session.get(url, stream=True, timeout=cfg.image_timeout) as resp:
            _check_headers(resp, cfg)
            return _read_body(resp, cfg)
    except requests.RequestException as err:
        raise _request_failure(err, cfg.image_timeout) from err


def _check_headers(resp: requests.Response, cfg: FeaturesConfig) -> None:
    """Refuse error answers, non-image Content-Types and a Content-Length over the limit before reading the body."""
    code = resp.status_code
    if not 200 <= code < 300:
        reason = f"HTTP {code} {resp.reason or ''}".strip()
        raise _Failure("http_error", reason, transient=code in RETRY_STATUS or code >= 500)
    ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if ctype and not (ctype.startswith("image/") or ctype == "application/octet-stream"):
        raise _Failure("not_image", f"Content-Type is {ctype}, not an image")
    length = resp.headers.get("Content-Length", "").strip()
    if length.isdigit() and int(length) > _max_bytes(cfg):
        raise _too_large(int(length), cfg)


def _read_body(resp: requests.Response, cfg: FeaturesConfig) -> bytes:
    """The body, read in chunks with a running count so that an endless or huge answer is cut off; a server that
    trickles bytes (each read within the timeout) is cut off after TOTAL_TIMEOUTS x the timeout."""
    limit, body = _max_bytes(cfg), bytearray()
    deadline = time.monotonic() + TOTAL_TIMEOUTS * cfg.image_timeout
    for chunk in resp.iter_content(chunk_size=1 << 16):
        body += chunk
        if len(body) > limit:
            raise _too_large(None, cfg)
        if time.monotonic() > deadline:
            raise _Failure("timeout", f"the download took over {TOTAL_TIMEOUTS * cfg.image_timeout:g} s "
                                      f"({TOTAL_TIMEOUTS} x features.image_timeout)", transient=True)  # fmt: skip
    length = resp.headers.get("Content-Length", "").strip()
    if length.isdigit() and "Content-Encoding" not in resp.headers and len(body) < int(length):
        raise _Failure("http_error", f"connection closed after {len(body)} of {length} bytes", transient=True)
    return bytes(body)


def _request_failure(err: requests.RequestException, timeout: float) -> _Failure:
    """Map a requests error to a status: timeouts and dropped connections may pass, a malformed URL will not."""
    if isinstance(err, requests.Timeout) or (err.args and isinstance(err.args[0], ReadTimeoutError)):
        return _Failure("timeout", f"no answer within {timeout:g} s (features.image_timeout)", transient=True)
    if isinstance(err, requests.ConnectionError | requests.exceptions.ChunkedEncodingError):
        return _Failure("http_error", f"connection error: {_short(err)}", transient=not _unknown_host(err))
    return _Failure("http_error", f"request failed: {type(err).__name__}: {_short(err)}")


def _unknown_host(err: Exception) -> bool:
    """DNS says the host does not exist (offline machine, typo): retrying now will not help."""
    reason = getattr(err.args[0], "reason", None) if err.args else None
    return isinstance(reason, NameResolutionError)


def _short(err: BaseException, limit: int = 300) -> str:
    """An error message without object addresses (so reruns give the same manifest), cut to ``limit`` characters."""
    return _ADDRESS.sub("", str(err))[:limit]


# ---------------------------------------------------------------------------------------------- decoding


def _load_image(data: bytes, size: int) -> tuple[Image.Image, tuple[int, int]]:
    """Decode, check and shrink a picture; return the RGB result and the original (upright) size.

    Failures say what went wrong: ``not_image`` for bytes no decoder here recognises (naming what they look like),
    ``corrupt`` with "truncated <format>" or "damaged <format>" for a picture that starts right but cannot be read.
    """
    if not data:
        raise _Failure("not_image", "not an image: the file is empty (0 bytes)")
    fmt = "image"
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as probe:
            fmt = probe.format or fmt
            _check_pixels(probe.size)
            probe.verify()
        image = Image.open(io.BytesIO(data), formats=FORMATS)
        image.load()
        ImageOps.exif_transpose(image, in_place=True)  # phone photos store the rotation in EXIF
        orig = image.size
        rgb = _to_rgb(image)
        return rgb.resize(fit_size(*orig, size), Image.Resampling.LANCZOS, reducing_gap=3.0), orig
    except _Failure:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise _Failure("too_large", f"decompression bomb guard: {_short(err)}") from err
    except Image.UnidentifiedImageError as err:
        raise _unidentified(data) from err
    except Exception as err:  # Pillow reports bad bytes as OSError, SyntaxError, ValueError, struct.error, ...
        raise _damaged(fmt if fmt != "image" else _signature(data) or fmt, err) from err


def _damaged(fmt: str, err: BaseException) -> _Failure:
    """A picture of a known format whose data cannot be read: cut short, or broken."""
    message = _short(err)
    if isinstance(err, EOFError) or "truncated" in message.lower():
        return _Failure("corrupt", f"truncated {fmt}: {message or type(err).__name__}")
    return _Failure("corrupt", f"damaged {fmt}: {type(err).__name__}: {message}")


def _unidentified(data: bytes) -> _Failure:
    """Why Pillow could not open the bytes: a known format's header with broken data after it (``corrupt``, with
    that decoder's own error), or no picture format at all (``not_image``, naming what the bytes look like)."""
    fmt = _signature(data)
    if fmt is not None:
        try:
            Image.OPEN[fmt][0](io.BytesIO(data)).close()
        except Exception as err:  # the plugin's own complaint is the real reason
            return _damaged(fmt, err)
        return _Failure("corrupt", f"damaged {fmt}: its header is there but Pillow cannot open it")
    return _Failure("not_image", f"not an image: cannot identify image file ({_looks_like(data)}; "
                                 f"decoded formats: {', '.join(FORMATS)})")  # fmt: skip


def _signature(data: bytes) -> str | None:
    """The decoded format whose signature the bytes start with, if any."""
    head = data[:16]
    return next((f for f in FORMATS if (accept := Image.OPEN[f][1]) is not None and accept(head) is True), None)


def _looks_like(data: bytes) -> str:
    """A short description of non-picture bytes, without quoting them (they may be private)."""
    lowered = data[:64].lstrip().lower()
    for signature, name in _KNOWN_OTHERS:
        if lowered.startswith(signature.lower()):
            return f"it is {name}"
    if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
        return "it is HEIC/HEIF, which is not decoded: convert it to JPEG"
    try:
        data[:4096].decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < 4090:  # not just a character cut at the end of the sample
            return "unknown binary data"
    return "it is text"


def _check_pixels(dims: tuple[int, int]) -> None:
    """Refuse pictures over Pillow's pixel limit (about 89 Mpx): decoding them could exhaust memory."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit and dims[0] * dims[1] > limit:
        raise _Failure("too_large", f"{dims[0]}x{dims[1]} pixels exceed the decompression bomb limit of {limit}")


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB pixels; transparent areas are composited onto white (JPEG and the image encoders have no alpha)."""
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")
