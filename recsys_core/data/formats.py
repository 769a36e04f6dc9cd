"""Readers for raw files that count bad lines instead of dying on the first one (or silently skipping them).

Every reader reports malformed lines by their true line number in the file (1-based, counting every line, blank
or not): lines with too few or too many fields, undecodable bytes, lines over MAX_LINE_BYTES and bad values. Above
``max_share`` of bad lines it fails, naming the file, the count, the first few lines and the fix. A file with no
line at all (0 bytes, or only blank lines) is an error of its own, naming the file and how to get a good copy.
"""

from __future__ import annotations

import ast
import csv
import gzip
import io
import json
import logging
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, NoReturn

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from recsys_core.errors import DataFormatError, MissingArtifactError

log = logging.getLogger(__name__)

INTERACTION_COLUMNS = ("user", "item", "rating", "timestamp")
EXAMPLES_KEPT = 5
# A longer line is malformed: no raw format has lines near this size (the longest Amazon metadata lines are a few
# hundred KB), and it bounds what one line can cost (memory, literal_eval time).
MAX_LINE_BYTES = 4 << 20
DOWNLOAD_FIX = "Delete it and run the download stage again (`recsys download`), or place an intact copy there."
CUSTOM_FIX = (
    "Export the table again with a header line and at least one row (csv, tsv or parquet), and run "
    "`recsys download --dataset_code custom` again."
)


@dataclass
class BadLines:
    """Tally of malformed lines in one file, with the first few (lowest line numbers) kept for the message."""

    path: Path
    total: int = 0
    count: int = 0
    examples: list[tuple[int, str, str]] = field(default_factory=list)

    def add(self, line_no: int, reason: str, text: str = "") -> None:
        self.count += 1
        self.examples.append((int(line_no), reason, text[:120]))
        if len(self.examples) > EXAMPLES_KEPT:  # readers add in several passes: keep the first lines of the file
            self.examples.sort(key=lambda example: example[0])
            del self.examples[EXAMPLES_KEPT:]

    def add_many(self, line_nos: np.ndarray, reasons: list[str], texts: list[str]) -> None:
        for line_no, reason, text in zip(line_nos, reasons, texts, strict=True):
            self.add(line_no, reason, text)

    @property
    def share(self) -> float:
        return self.count / self.total if self.total else 0.0

    def describe(self) -> str:
        shown = "\n".join(f"    line {n}: {reason}: {text!r}" for n, reason, text in sorted(self.examples))
        return f"{self.count} of {self.total} lines ({self.share:.2%}) malformed in {self.path}; first ones:\n{shown}"

    def check(self, max_share: float) -> None:
        """Fail above ``max_share``; otherwise warn (and go on without those lines)."""
        if not self.count:
            return
        if self.share > max_share:
            raise DataFormatError(
                f"{self.describe()}\n  This is more than data.max_bad_line_share = {max_share:.2%}. Fix or "
                f"re-download the file, or raise --max_bad_line_share to skip these lines."
            )
        log.warning("skipping %s", self.describe())

    def as_dict(self) -> dict:
        return {
            "file": self.path.name,
            "lines": self.total,
            "malformed": self.count,
            "first": [{"line": n, "reason": r} for n, r, _ in sorted(self.examples)],
        }


def empty_file_error(path: Path, size: int, fix: str = DOWNLOAD_FIX) -> DataFormatError:
    """The error for a file without a single line: no data to read, so no share of bad lines can describe it."""
    what = "0 bytes" if size == 0 else f"{size} bytes, all blank"
    return DataFormatError(f"{path} is empty ({what}): it holds no line to read. {fix}")


def _gzip_error(path: Path, err: BaseException | str) -> DataFormatError:
    return DataFormatError(
        f"{path}: truncated or corrupt gzip file ({err}). Delete it and run the download stage again "
        f"(or place an intact copy there by hand)."
    )


class _GzipGuard:
    """Turn low-level decompression failures (raised while reading, even midway) into one clear error."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and issubclass(exc_type, (EOFError, gzip.BadGzipFile, zlib.error)):
            raise _gzip_error(self.path, exc) from None
        return False


def _open_binary(path: Path) -> BinaryIO:
    """The file's bytes, decompressed for .gz; a 0-byte .gz is a failed download, not an empty file."""
    if not path.is_file():
        raise MissingArtifactError(f"{path} is missing: run the download stage (`recsys download`) first.")
    if path.suffix == ".gz":
        if path.stat().st_size == 0:
            raise _gzip_error(path, "0 bytes")
        return gzip.open(path, "rb")
    return open(path, "rb")


def _bad_bytes(err: UnicodeDecodeError, raw: bytes, encoding: str) -> str:
    return f"not valid {encoding}: byte 0x{raw[err.start]:02x} at position {err.start + 1} of the line"


def _too_long(size: int) -> str:
    return f"line of {size:,} bytes is longer than the {MAX_LINE_BYTES:,}-byte limit"


def read_lines(
    path: Path, encoding: str = "utf-8", bad: BadLines | None = None, *, fix: str = DOWNLOAD_FIX
) -> list[str]:
    """All lines of a (possibly gzipped) text file, split on newlines only (not on U+2028 inside strings).

    The list index + 1 is the line number. A line with bytes that are not ``encoding`` or over MAX_LINE_BYTES is
    recorded in ``bad`` (``bad.total`` counts it too) and comes back as "" so that every reader skips it and the
    line numbers of the others stay true; without ``bad`` such a line is an error naming it. A UTF-8 byte order
    mark is dropped; a file with only "\\r" line ends (old Mac exports) is split on those. An empty file raises
    ``empty_file_error`` with ``fix``.
    """
    path = Path(path)
    with _GzipGuard(path), _open_binary(path) as handle:
        data = handle.read()
    if not data or data.isspace():
        raise empty_file_error(path, len(data), fix)
    newline = b"\n" if data.find(b"\n") != -1 or data.find(b"\r") == -1 else b"\r"
    try:
        lines = data.decode(encoding).split(newline.decode())
    except UnicodeDecodeError:
        lines = _decode_each(path, data.split(newline), encoding, bad)
    crlf = newline == b"\n" and b"\r\n" in data
    del data
    if lines and lines[-1] == "":
        lines.pop()
    if lines and encoding.replace("-", "").replace("_", "").lower().startswith("utf8"):
        lines[0] = lines[0].removeprefix("\ufeff")
    if crlf:
        lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    if max(map(len, lines), default=0) > MAX_LINE_BYTES // 4:  # only then can a line be over the byte limit
        for i, line in enumerate(lines):
            if len(line) > MAX_LINE_BYTES // 4 and (size := len(line.encode(encoding))) > MAX_LINE_BYTES:
                _skip(path, bad, i + 1, _too_long(size), line)
                lines[i] = ""
    return lines


def _decode_each(path: Path, raw_lines: list[bytes], encoding: str, bad: BadLines | None) -> list[str]:
    """Decode line by line (only when the whole file does not decode): a bad line is reported, not fatal."""
    lines = []
    for line_no, raw in enumerate(raw_lines, start=1):
        try:
            lines.append(raw.decode(encoding))
        except UnicodeDecodeError as err:
            _skip(path, bad, line_no, _bad_bytes(err, raw, encoding), raw.decode(encoding, errors="replace"))
            lines.append("")
    return lines


def _skip(path: Path, bad: BadLines | None, line_no: int, reason: str, text: str) -> None:
    """Count an unreadable line in ``bad``, or fail naming it when the caller keeps no tally."""
    if bad is None:
        raise DataFormatError(f"{path}: line {line_no}: {reason}. Fix or re-download the file.")
    bad.total += 1
    bad.add(line_no, reason, text)


def _bounded_lines(handle: BinaryIO) -> Iterator[tuple[bytes | None, int]]:
    """(line, size) for each line of a binary stream; a line over MAX_LINE_BYTES is skipped in pieces (never held
    whole in memory) and comes as (None, its size)."""
    while True:
        line = handle.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        if len(line) <= MAX_LINE_BYTES or line.endswith(b"\n"):
            yield line, len(line)
            continue
        size = len(line)
        while line and not line.endswith(b"\n"):
            line = handle.readline(1 << 20)
            size += len(line)
        yield None, size - (1 if line.endswith(b"\n") else 0)


def read_delimited_interactions(
    path: Path,
    sep: str,
    *,
    header: bool,
    encoding: str = "utf-8",
) -> tuple[pd.DataFrame, BadLines]:
    """A headerless-or-typed-header file of ``user sep item sep rating sep timestamp`` lines."""
    path = Path(path)
    bad = BadLines(path)
    lines = read_lines(path, encoding, bad)
    first = 1 if header else 0
    strings = pd.Series(lines[first:], dtype="str")
    line_no = np.arange(first + 1, len(lines) + 1)
    keep = strings.str.strip().to_numpy() != ""
    strings, line_no = strings[keep].reset_index(drop=True), line_no[keep]
    if not len(strings) and not bad.count:
        raise DataFormatError(f"{path}: holds {'a header but ' if header else ''}no interaction lines. {DOWNLOAD_FIX}")
    bad.total += len(strings)
    n_fields = (strings.str.count(re.escape(sep)) + 1).to_numpy()
    expected = len(INTERACTION_COLUMNS)
    if len(strings) and np.mean(n_fields < expected) > 0.5:
        typical = int(np.bincount(n_fields).argmax())
        raise DataFormatError(
            f"{path}: missing columns: expected {expected} fields ({', '.join(INTERACTION_COLUMNS)}) separated by "
            f"{sep!r}, but most lines have {typical} (line {line_no[0]}: {strings.iloc[0][:80]!r}). "
            f"Check that this is the right file and separator."
        )
    wrong = n_fields != expected
    if wrong.any():
        idx = np.flatnonzero(wrong)
        bad.add_many(
            line_no[idx[:EXAMPLES_KEPT]],
            [f"expected {expected} fields, found {n_fields[i]}" for i in idx[:EXAMPLES_KEPT]],
            strings.iloc[idx[:EXAMPLES_KEPT]].tolist(),
        )
        bad.count += len(idx) - min(len(idx), EXAMPLES_KEPT)
    good = ~wrong
    parts = strings[good].str.split(sep, n=expected - 1, expand=True, regex=False)
    if parts.shape[1] != expected:  # no good line at all: split gives no columns
        parts = pd.DataFrame({c: pd.Series(dtype="str") for c in INTERACTION_COLUMNS})
    parts.columns = list(INTERACTION_COLUMNS)
    frame = coerce_interactions(parts.reset_index(drop=True), line_no[good], strings[good].tolist(), bad)
    return frame, bad


# What pandas' default NA parsing (read_csv without keep_default_na=False) turns into NaN, plus the empty string. An
# id that is one of these after stripping whitespace is missing, not a user or item called "nan": such lines are
# malformed ("missing user id" / "missing item id"). Case matters, as in pandas: only the spellings listed here are
# missing ("NAN" or "Nan" stay ids). tests/test_split_inputs.py checks the list against pandas' own parsing.
MISSING_ID_TOKENS = frozenset(
    {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA",
     "NULL", "NaN", "None", "n/a", "nan", "null"}
)  # fmt: skip
INT64_MIN, INT64_MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)
_INTEGER = r"[+-]?[0-9]+"


def _id_column(values: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """Ids as stripped text and a mask of the missing ones (a real null, or a MISSING_ID_TOKENS spelling)."""
    null = values.isna().to_numpy()
    text = values.astype("str").str.strip()
    return text, null | text.isin(MISSING_ID_TOKENS).to_numpy()


def parse_timestamps(values: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Text timestamps -> (int64 seconds, non-numeric mask, out-of-range mask).

    Integers are read exactly (no trip through float64, so 19-digit nanosecond times keep every digit); other
    numbers ("874965758.0", "1e9") are floored. A value is out of range when it is not finite ("inf") or does not fit
    int64 (e.g. 1e20, which a plain cast would wrap to -9223372036854775808 and sort first). Negative times (before
    1970) are legal.
    """
    text = values.astype("str").str.strip()
    out = np.zeros(len(text), dtype=np.int64)
    non_numeric = np.zeros(len(text), dtype=bool)
    out_of_range = np.zeros(len(text), dtype=bool)
    integer = text.str.fullmatch(_INTEGER).fillna(False).to_numpy(dtype=bool)
    if integer.any():
        digits = text[integer].str.lstrip("+-").str.lstrip("0")
        negative = text[integer].str.startswith("-").to_numpy()
        width = digits.str.len().to_numpy()
        limit = np.where(negative, str(-INT64_MIN), str(INT64_MAX))
        fits = (width < 19) | ((width == 19) & (digits.to_numpy(dtype=object) <= limit))
        where = np.flatnonzero(integer)
        out[where[fits]] = text.iloc[where[fits]].astype(np.int64).to_numpy()
        out_of_range[where[~fits]] = True
    rest = np.flatnonzero(~integer)
    if len(rest):
        number = pd.to_numeric(text.iloc[rest], errors="coerce").to_numpy(dtype=np.float64)
        floored = np.floor(number)
        # float64 bounds: -2**63 is exact; 2**63 is the first value above int64.
        ok = np.isfinite(floored) & (floored >= -(2.0**63)) & (floored < 2.0**63)
        out[rest[ok]] = floored[ok].astype(np.int64)
        non_numeric[rest[np.isnan(number)]] = True
        out_of_range[rest[~ok & ~np.isnan(number)]] = True
    return out, non_numeric, out_of_range


def coerce_interactions(raw: pd.DataFrame, line_no: np.ndarray, texts: list[str] | None, bad: BadLines) -> pd.DataFrame:
    """String columns -> typed interactions, in the given (file) order with its line numbers in ``line``.

    Lines go to ``bad`` with one reason each: "missing user id" / "missing item id" (empty, a real null, or a
    spelling in MISSING_ID_TOKENS such as "nan", "None", "null", "NA"), "non-numeric rating" (also "inf"),
    "non-numeric timestamp", or "timestamp out of range" (not finite or outside int64; see parse_timestamps).
    """
    user, user_missing = _id_column(raw["user"])
    item, item_missing = _id_column(raw["item"])
    rating = pd.to_numeric(raw["rating"].astype("str").str.strip(), errors="coerce").to_numpy(dtype=np.float64)
    timestamp, ts_non_numeric, ts_out_of_range = parse_timestamps(raw["timestamp"])
    reasons = np.full(len(raw), "", dtype=object)
    # Later assignments win: a line reports its first problem in column order.
    reasons[ts_out_of_range] = "timestamp out of range"
    reasons[ts_non_numeric] = "non-numeric timestamp"
    reasons[~np.isfinite(rating)] = "non-numeric rating"
    reasons[item_missing] = "missing item id"
    reasons[user_missing] = "missing user id"
    is_bad = reasons != ""
    if is_bad.any():
        idx = np.flatnonzero(is_bad)
        head = idx[:EXAMPLES_KEPT]
        shown = [texts[i] for i in head] if texts is not None else [str(raw.iloc[i].tolist()) for i in head]
        shown_column = {"non-numeric rating": "rating", "non-numeric timestamp": "timestamp",
                        "timestamp out of range": "timestamp"}  # fmt: skip
        details = []
        for i in head:
            column = shown_column.get(reasons[i])
            details.append(reasons[i] + (f" {raw[column].iloc[i]!r}" if column else ""))
        bad.add_many(line_no[head], details, shown)
        bad.count += len(idx) - len(head)
    ok = ~is_bad
    return pd.DataFrame(
        {
            "user": user[ok].to_numpy(dtype=object),
            "item": item[ok].to_numpy(dtype=object),
            "rating": rating[ok],
            "timestamp": timestamp[ok],
            "line": np.asarray(line_no)[ok].astype(np.int64),
        }
    )


_ASIN = re.compile(r"""["']asin["']\s*:\s*["']([^"']+)["']""")


def iter_metadata(
    path: Path,
    parse: Callable[[str], object],
    bad: BadLines,
    wanted: set[str] | None = None,
    encoding: str = "utf-8",
) -> Iterator[dict]:
    """One dict per line of an Amazon metadata file; only lines whose asin is ``wanted`` are fully parsed.

    Read as bytes, one bounded line at a time: a line over MAX_LINE_BYTES or with bytes that are not ``encoding``
    is a malformed line (with its true number), never a failure of the whole file.
    """
    path = Path(path)
    line_no = 0
    with _GzipGuard(path), _open_binary(path) as handle:
        lines = tqdm(_bounded_lines(handle), desc=path.name, unit=" lines", mininterval=2.0, leave=False)
        for line_no, (raw, size) in enumerate(lines, start=1):
            if raw is None:
                bad.total += 1
                bad.add(line_no, _too_long(size))
                continue
            if raw.isspace():
                continue
            bad.total += 1
            try:
                line = raw.decode(encoding)
            except UnicodeDecodeError as err:
                bad.add(line_no, _bad_bytes(err, raw, encoding), raw.decode(encoding, errors="replace"))
                continue
            match = _ASIN.search(line)
            if match is None:
                bad.add(line_no, "no asin", line)
                continue
            if wanted is not None and match.group(1) not in wanted:
                continue
            try:
                record = parse(line)
            except (ValueError, SyntaxError, MemoryError, RecursionError) as err:
                bad.add(line_no, f"unparseable ({type(err).__name__})", line)
                continue
            if not isinstance(record, dict):
                bad.add(line_no, f"expected a dict, got {type(record).__name__}", line)
                continue
            yield record
    if line_no == 0:
        log.warning("%s holds no lines: the items get no title, description or image URL from it", path)


def parse_python_literal(line: str) -> object:
    """Amazon 2014 metadata lines are Python literals (single quotes): literal_eval, never eval."""
    return ast.literal_eval(line.strip())


def parse_json(line: str) -> object:
    return json.loads(line)


@dataclass
class Table:
    """A user table: text columns, the line each row starts on, and the lines that could not become rows."""

    frame: pd.DataFrame
    lines: np.ndarray
    bad: BadLines


TABLE_SEPARATORS = {".csv": ",", ".csv.gz": ",", ".tsv": "\t", ".tsv.gz": "\t", ".txt": "\t"}


def read_table(path: Path, *, fix: str = CUSTOM_FIX) -> Table:
    """A user-supplied csv / tsv / parquet table, every column as text (the caller coerces types).

    Csv/tsv rows are read with the csv module (quotes, separators and newlines inside quoted fields as pandas reads
    them) so that every row keeps the line it starts on: a row with more or fewer fields than the header, bytes
    that are not UTF-8, a line over MAX_LINE_BYTES or a broken quote is a malformed line in ``Table.bad``, not a
    failure of the whole file. Parquet rows are numbered from 1. An empty file raises, with ``fix`` as the advice.
    """
    path = Path(path)
    if not path.exists():
        raise DataFormatError(f"{path}: no such file; check the --custom_interactions / --custom_items path")
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    if suffix in (".parquet", ".pq"):
        if path.stat().st_size == 0:
            raise empty_file_error(path, 0, fix)
        try:
            frame = pd.read_parquet(path)
        except Exception as err:  # pyarrow raises several types for a corrupt file
            raise DataFormatError(f"{path}: not a readable parquet file ({err}); re-export it") from None
        frame = frame.astype("str").where(frame.notna(), "")
        return Table(frame, np.arange(1, len(frame) + 1), BadLines(path, total=len(frame)))
    if suffix not in TABLE_SEPARATORS:
        raise DataFormatError(f"{path}: unknown file type {suffix!r}; use .csv, .tsv or .parquet")
    bad = BadLines(path)
    lines = read_lines(path, "utf-8", bad, fix=fix)
    sep = TABLE_SEPARATORS[suffix]
    joined = "\n".join(lines)
    quoted, carriage = '"' in joined, "\r" in joined
    del joined
    if quoted or carriage:
        header, rows, starts = _csv_rows(path, lines, sep, bad, fix)
        frame = pd.DataFrame(rows, columns=_column_names(header), dtype="str")
    else:  # no quote anywhere: a row is a line, checked here and split by pandas' C parser (4x the csv module)
        header, frame, starts = _plain_rows(path, lines, sep, bad, fix)
        frame.columns = _column_names(header)
    return Table(frame, np.asarray(starts, dtype=np.int64), bad)


def _plain_rows(
    path: Path, lines: list[str], sep: str, bad: BadLines, fix: str
) -> tuple[list[str], pd.DataFrame, np.ndarray]:
    """``_csv_rows`` for a file without quotes, vectorised: (header, rows as text columns, start line of each)."""
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        _no_header(path, bad, fix)
    _header_readable(path, bad, first + 1, None, fix)
    header = lines[first].split(sep)
    strings = pd.Series(lines[first + 1 :], dtype="str")
    line_no = np.arange(first + 2, len(lines) + 1)
    keep = strings.str.strip().to_numpy() != ""
    strings, line_no = strings[keep].reset_index(drop=True), line_no[keep]
    bad.total += len(strings)
    n_fields = (strings.str.count(re.escape(sep)) + 1).to_numpy()
    wrong = n_fields != len(header)
    for i in np.flatnonzero(wrong)[:EXAMPLES_KEPT]:
        bad.add(line_no[i], f"expected {len(header)} fields as in the header, found {n_fields[i]}", strings.iloc[i])
    bad.count += max(0, int(wrong.sum()) - EXAMPLES_KEPT)
    good = strings[~wrong]
    if len(good):
        # Every line has exactly len(header) fields and no quote or "\r": the C parser can only split them.
        frame = pd.read_csv(io.StringIO("\n".join(good.tolist())), sep=sep, header=None, names=range(len(header)),
                            dtype="str", keep_default_na=False, quoting=csv.QUOTE_NONE, skip_blank_lines=False,
                            engine="c")  # fmt: skip
        if len(frame) != len(good):  # cannot happen for checked lines; never trade correctness for speed
            raise AssertionError(f"{path}: {len(good)} lines gave {len(frame)} rows")
    else:
        frame = pd.DataFrame({i: pd.Series(dtype="str") for i in range(len(header))})
    return header, frame.astype("str"), line_no[~wrong]


def _header_readable(path: Path, bad: BadLines, start: int, problem: str | None, fix: str) -> None:
    """The header must be the first line and readable: else every column name would be wrong."""
    unreadable = [(n, r) for n, r, _ in bad.examples if n < start]
    if problem is not None or unreadable:
        n, reason = min(unreadable) if unreadable else (start, problem)
        raise DataFormatError(f"{path}: line {n}, before or at the header, cannot be read: {reason}. {fix}")


def _no_header(path: Path, bad: BadLines, fix: str) -> NoReturn:
    """A file with no line that could be the header."""
    if bad.count:
        raise DataFormatError(f"{path}: not a single readable line. {bad.describe()}\n  {fix}")
    raise empty_file_error(path, path.stat().st_size, fix)


def _csv_rows(
    path: Path, lines: list[str], sep: str, bad: BadLines, fix: str
) -> tuple[list[str], list[list[str]], list[int]]:
    """(header, rows, start line of each row); blank lines are skipped, malformed ones go to ``bad``."""
    csv.field_size_limit(max(csv.field_size_limit(), MAX_LINE_BYTES))  # pandas has no field limit either
    # strict: a quote left open to the end of the file is an error (else it silently swallows every line after it)
    reader = csv.reader((line + "\n" for line in lines), delimiter=sep, strict=True)
    header: list[str] | None = None
    rows, starts, end = [], [], 0
    while True:
        start = end + 1
        try:
            fields = next(reader)
            problem = None
        except StopIteration:
            break
        except csv.Error as err:
            fields, problem = [], f"broken quoting ({err})"
        end = reader.line_num
        if problem is not None and "unexpected end of data" in problem:
            problem = f"a quote opened on line {start} is never closed: lines {start} to {end} are lost"
        if problem is None and (not fields or (len(fields) == 1 and not fields[0].strip())):
            continue  # a blank line (or one read_lines already counted as malformed)
        if header is None:
            _header_readable(path, bad, start, problem, fix)
            header = fields
            continue
        span = end - start + 1
        bad.total += span
        if problem is None and len(fields) != len(header):
            problem = f"expected {len(header)} fields as in the header, found {len(fields)}"
            if span > 1:
                problem += f" (a quoted field runs from line {start} to {end}: is a quote left open?)"
        if problem is not None:
            bad.add(start, problem, lines[start - 1])
            bad.count += span - 1  # every line the broken row swallowed is lost too
            continue
        rows.append(fields)
        starts.append(start)
    if header is None:
        _no_header(path, bad, fix)
    return header, rows, starts


def _column_names(header: list[str]) -> list[str]:
    """Header names as pandas makes them: an empty name is 'Unnamed: i', a repeated one gets '.1', '.2', ..."""
    names, seen = [], {}
    for i, name in enumerate(header):
        name = name or f"Unnamed: {i}"
        base, k = name, seen.get(name, 0)
        while name in seen:
            k += 1
            name = f"{base}.{k}"
        seen[base] = k
        seen[name] = 0
        names.append(name)
    return names
