"""Columnar reading with Apache Arrow (`pyarrow.csv`): the fast path of the CSV loaders, and the raw
lines of a JSON-lines file for the JSON fast paths (`amazon_columnar.py`, `amazon_meta_columnar.py`).

Followed: the pyarrow docs "Reading CSV files" (`ReadOptions`, `ParseOptions`, `ConvertOptions`) and
"Compute Functions" (`match_substring_regex`, `cast`, `all`).

The fast path takes a file only in the strict shape that the line-by-line reader (Python's `csv`
module, `movielens._csv_rows`) reads the same way, and answers None for anything else; the caller
then reads that file line by line, which gives the same result or raises the `DataFormatError`
that names the file and line. Rejected here:
- a first row other than the expected header, compared exactly as the `csv` module reads it (so a
  byte-order mark, which Arrow would drop, or padded names fall back);
- any row with another number of fields, invalid UTF-8, an unreadable gzip stream (Arrow's error);
- a column outside its canonical form (`canonical_*` below), checked by the caller.
Blank lines are skipped and empty fields are empty strings, as with the `csv` module; quoted
fields may hold commas, doubled quotes and newlines. `.gz` files are decompressed by Arrow.
The "::"-separated files of ML-1M / ML-10M (`read_dat_strings`) have no header and no quoting; Arrow
takes one-character delimiters only, so it splits them on ":" and a line in shape has its fields in the
even columns and nothing in the odd ones (any other line is rejected: a field holding ":", a line with
another number of fields).
Canonical forms: ids `0` or `[1-9][0-9]{0,8}` (so `str(int(id)) == id`, ids order as the natural
id order does, and a (user, item) pair packs into one int64), integers (timestamps)
`-?[0-9]{1,18}`, decimals (ratings) `[0-9]{1,6}(.[0-9]{1,6})?` (Arrow and `float()` round both to
the nearest double).

Why Arrow and not polars (measured 2026-12-03 here, a 1M-row ratings.csv read as strings, one
thread): pyarrow 26.0.1 took 0.14-0.25 s, polars 2.1.0 0.27-0.36 s; and Arrow reads a CSV file as
the `csv` module does (a row with a field too few is an error, a blank line is skipped, an empty
field is an empty string), where polars fills a short row with nulls and reads a blank line as a
row of nulls, so a malformed line could pass unseen.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from training.data.files import open_text

LINE_DELIMITER = "\x1f"  # a control character: inside a JSON string it must be escaped (RFC 8259)
BOM = b"\xef\xbb\xbf"

ID_PATTERN = r"^(0|[1-9][0-9]{0,8})$"
INT_PATTERN = r"^-?[0-9]{1,18}$"
DECIMAL_PATTERN = r"^[0-9]{1,6}(\.[0-9]{1,6})?$"
MAX_ID = 10**9  # ids are below this (at most 9 digits)


def _first_row(path: Path) -> list[str] | None:
    """The first CSV row as the `csv` module reads it, or None when it cannot be read."""
    try:
        with open_text(path) as handle:
            return next(csv.reader(handle), None)
    except (csv.Error, UnicodeDecodeError, OSError, EOFError):
        return None


def starts_with_bom(path: Path) -> bool:
    """Whether the (decompressed) file starts with a UTF-8 byte-order mark, which Arrow's readers skip
    and the line-by-line readers do not (`json.loads` rejects it; `csv` keeps it in the first field)."""
    try:
        with open_text(path, encoding="latin-1") as handle:  # any bytes decode; U+00EF... for a BOM
            return bytes(handle.read(3), "latin-1") == BOM
    except (OSError, EOFError):
        return False


def raw_lines(path: Path) -> pa.ChunkedArray | None:
    """Every non-empty line of a JSON-lines file as one string each, or None when Arrow cannot read
    them so (or the file starts with a byte-order mark).

    Arrow's CSV reader with a delimiter that a valid JSON line cannot hold unescaped (U+001F) and no
    quoting gives one row per line; like Arrow's JSON reader it skips empty lines, so the i-th line
    here is the i-th row of `pyarrow.json.read_json` whenever the two counts agree."""
    if starts_with_bom(path):
        return None
    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=["line"]),
            parse_options=pacsv.ParseOptions(
                delimiter=LINE_DELIMITER, quote_char=False, ignore_empty_lines=True
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={"line": pa.string()}, strings_can_be_null=False
            ),
        )
    except (pa.ArrowInvalid, OSError, EOFError):
        return None
    return table["line"]


def read_csv_strings(path: Path, header: tuple[str, ...]) -> pa.Table | None:
    """Every column of `path` as strings, or None when the file is not in the strict shape."""
    if _first_row(path) != list(header):
        return None
    try:
        return pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=list(header), skip_rows=1),
            parse_options=pacsv.ParseOptions(newlines_in_values=True, ignore_empty_lines=True),
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in header},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, OSError, EOFError):
        return None


def read_dat_strings(path: Path, names: tuple[str, ...]) -> pa.Table | None:
    """The fields of a "::"-separated file with no header (ML-1M / ML-10M `.dat`) as string columns
    `names`, or None when a line is not exactly `len(names)` fields joined by "::"."""
    columns = [name for field in names for name in (field, f"{field}::")][:-1]  # the gaps between fields
    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=columns),
            parse_options=pacsv.ParseOptions(delimiter=":", quote_char=False, ignore_empty_lines=True),
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in columns}, strings_can_be_null=False
            ),
        )
    except (pa.ArrowInvalid, OSError, EOFError):
        return None
    gaps = [name for name in columns if name.endswith("::")]
    if any(pc.any(pc.not_equal(table[gap], ""), min_count=0).as_py() for gap in gaps):
        return None
    return table.select(list(names))


def _matches(column: pa.ChunkedArray, pattern: str) -> bool:
    """Whether every value of `column` matches `pattern` (True for an empty column)."""
    found = pc.all(pc.match_substring_regex(column, pattern), min_count=0).as_py()
    return bool(found)


def canonical_ids(column: pa.ChunkedArray) -> np.ndarray | None:
    """The ids as int64 when every value is a canonical id (`ID_PATTERN`), else None."""
    if not _matches(column, ID_PATTERN):
        return None
    return pc.cast(column, pa.int64()).to_numpy()


def canonical_ints(column: pa.ChunkedArray) -> np.ndarray | None:
    """The values as int64 when every value is a plain integer (`INT_PATTERN`), else None."""
    if not _matches(column, INT_PATTERN):
        return None
    return pc.cast(column, pa.int64()).to_numpy()


def canonical_decimals(column: pa.ChunkedArray) -> np.ndarray | None:
    """The values as float64 when every value is a plain decimal (`DECIMAL_PATTERN`), else None."""
    if not _matches(column, DECIMAL_PATTERN):
        return None
    return pc.cast(column, pa.float64()).to_numpy()
