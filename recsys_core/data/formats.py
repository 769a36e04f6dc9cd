"""Readers for raw files that count bad lines instead of dying on the first one (or silently skipping them).

Every reader reports malformed lines by line number; above ``max_share`` of bad lines it fails, naming the file,
the count, the first few lines and the fix.
"""

from __future__ import annotations

import ast
import gzip
import json
import logging
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from recsys_core.errors import DataFormatError

log = logging.getLogger(__name__)

INTERACTION_COLUMNS = ("user", "item", "rating", "timestamp")
EXAMPLES_KEPT = 5


@dataclass
class BadLines:
    """Tally of malformed lines in one file, with the first few kept for the message."""

    path: Path
    total: int = 0
    count: int = 0
    examples: list[tuple[int, str, str]] = field(default_factory=list)

    def add(self, line_no: int, reason: str, text: str = "") -> None:
        self.count += 1
        if len(self.examples) < EXAMPLES_KEPT:
            self.examples.append((int(line_no), reason, text[:120]))

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


def _open_text(path: Path, encoding: str):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding=encoding, newline="")
    return open(path, encoding=encoding, newline="")


def _decode_errors(path: Path, encoding: str):
    """Turn low-level decompression/decoding failures into one clear error."""

    class _Guard:
        def __enter__(self):
            return self

        def __exit__(self, exc_type, exc, tb):
            if exc_type is None:
                return False
            if issubclass(exc_type, (EOFError, gzip.BadGzipFile, zlib.error)):
                raise DataFormatError(
                    f"{path}: truncated or corrupt gzip file ({exc}). Delete it and run the download stage again "
                    f"(or place an intact copy there by hand)."
                ) from None
            if issubclass(exc_type, UnicodeDecodeError):
                raise DataFormatError(
                    f"{path}: not valid {encoding} text ({exc.reason} at byte {exc.start}). "
                    f"Convert the file to {encoding} or re-download it."
                ) from None
            return False

    return _Guard()


def read_lines(path: Path, encoding: str = "utf-8") -> list[str]:
    """All lines of a (possibly gzipped) text file, split on newlines only (not on U+2028 inside strings)."""
    path = Path(path)
    with _decode_errors(path, encoding), _open_text(path, encoding) as handle:
        text = handle.read()
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_delimited_interactions(
    path: Path,
    sep: str,
    *,
    header: bool,
    encoding: str = "utf-8",
) -> tuple[pd.DataFrame, BadLines]:
    """A headerless-or-typed-header file of ``user sep item sep rating sep timestamp`` lines."""
    path = Path(path)
    lines = read_lines(path, encoding)
    first = 1 if header else 0
    if len(lines) <= first:
        raise DataFormatError(f"{path}: holds no interaction lines; re-download it or check the path")
    strings = pd.Series(lines[first:], dtype="str")
    line_no = np.arange(first + 1, len(lines) + 1)
    keep = strings.str.strip().to_numpy() != ""
    strings, line_no = strings[keep].reset_index(drop=True), line_no[keep]
    n_fields = (strings.str.count(re.escape(sep)) + 1).to_numpy()
    expected = len(INTERACTION_COLUMNS)
    if np.mean(n_fields < expected) > 0.5:
        typical = int(np.bincount(n_fields).argmax())
        raise DataFormatError(
            f"{path}: missing columns: expected {expected} fields ({', '.join(INTERACTION_COLUMNS)}) separated by "
            f"{sep!r}, but most lines have {typical} (line {line_no[0]}: {strings.iloc[0][:80]!r}). "
            f"Check that this is the right file and separator."
        )
    bad = BadLines(path, total=len(strings))
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
    """One dict per line of an Amazon metadata file; only lines whose asin is ``wanted`` are fully parsed."""
    path = Path(path)
    with _decode_errors(path, encoding), _open_text(path, encoding) as handle:
        lines = tqdm(handle, desc=path.name, unit=" lines", mininterval=2.0, leave=False)
        for line_no, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            bad.total += 1
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


def parse_python_literal(line: str) -> object:
    """Amazon 2014 metadata lines are Python literals (single quotes): literal_eval, never eval."""
    return ast.literal_eval(line.strip())


def parse_json(line: str) -> object:
    return json.loads(line)


def read_table(path: Path) -> pd.DataFrame:
    """A user-supplied csv / tsv / parquet table, every column as text (the caller coerces types)."""
    path = Path(path)
    if not path.exists():
        raise DataFormatError(f"{path}: no such file; check the --custom_interactions / --custom_items path")
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    if suffix in (".parquet", ".pq"):
        try:
            frame = pd.read_parquet(path)
        except Exception as err:  # pyarrow raises several types for a corrupt file
            raise DataFormatError(f"{path}: not a readable parquet file ({err}); re-export it") from None
        return frame.astype("str").where(frame.notna(), "")
    seps = {".csv": ",", ".csv.gz": ",", ".tsv": "\t", ".tsv.gz": "\t", ".txt": "\t"}
    if suffix not in seps:
        raise DataFormatError(f"{path}: unknown file type {suffix!r}; use .csv, .tsv or .parquet")
    with _decode_errors(path, "utf-8"):
        try:
            return pd.read_csv(path, sep=seps[suffix], dtype=str, keep_default_na=False, on_bad_lines="error")
        except pd.errors.ParserError as err:
            raise DataFormatError(
                f"{path}: {err}. Fix the line named, or quote fields that hold the separator."
            ) from None
