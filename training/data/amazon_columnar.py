"""Amazon review files (2018 `.json(.gz)`, 2023 `.jsonl(.gz)`) through Arrow's JSON reader: the fast
path of `amazon.load_amazon_2018` / `load_amazon_2023`.

Followed: the pyarrow docs "Reading JSON files" (`pyarrow.json.read_json`: one object per line, column
types inferred over the file, blank lines skipped), "Reading CSV files" (here only to get the raw lines
as one string column) and `dictionary_encode`; numpy's stable `argsort`.

`read_reviews` answers None for a file it does not take in the strict shape below; the caller then
reads that file line by line (the reference), which gives the same data set or raises the
`DataFormatError` naming the file and line. Taken: every non-blank line parses as a JSON object;
the user id, the item ids (parent_asin, asin), text and summary columns are strings or absent/null,
the rating a number other than NaN (Arrow's int64 or double), the time an integer (int64); no row
lacks the user, the rating, the time or both item ids; no key twice in an object. Anything else (a
bad line, a number where a string is expected, a time written as 1.6e12, a line of spaces, invalid
UTF-8, a byte-order mark, which Arrow skips and `json.loads` rejects) falls back.

What the line-by-line reader does, done here the same way:
- identical lines (compared as raw text) are dropped after the first, counted in `duplicate_lines`:
  the raw lines come from `columnar.raw_lines`, so row i of the lines is row i of the parsed table
  (both skip empty lines; a count mismatch falls back); only lines that share their user and time
  with another are compared;
- the item id is parent_asin when non-empty, else asin; text and summary blank -> None; the same
  (user, text, time) again is one review copied onto product variants (`duplicate_reviews`).
The events are then built row by row in Python, as the line-by-line reader builds them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from training.data.columnar import raw_lines

__all__ = ["ReviewColumns", "read_reviews"]

_STRING_TYPES = (pa.string(), pa.large_string(), pa.null())
_NUMBER_TYPES = (pa.int64(), pa.float64())


@dataclass(frozen=True)
class ReviewColumns:
    """The distinct lines of a review file, in file order, one Python list per field."""

    users: list[str]
    parents: list[str | None]  # parent_asin (None when absent)
    asins: list[str | None]
    ratings: list[float]
    times: list[int]
    texts: list[str | None]
    summaries: list[str | None]
    duplicate_lines: int

    def rows(self) -> Iterator[tuple[str, str, float, int, str | None, str | None]]:
        """(user, item id, rating, time, text, summary) per distinct line; a blank text or summary is
        None (`amazon._text`: `str.isspace` is true exactly when `str.strip` leaves nothing)."""
        for user, parent, asin, rating, time, text, summary in zip(
            self.users, self.parents, self.asins, self.ratings, self.times, self.texts, self.summaries,
            strict=True,
        ):  # fmt: skip
            yield (
                user, str(parent or asin), rating, time, text if text and not text.isspace() else None,
                summary if summary and not summary.isspace() else None,
            )  # fmt: skip


def _first_occurrences(lines: pa.ChunkedArray, users: pa.ChunkedArray, times: pa.ChunkedArray) -> np.ndarray:
    """Indices (ascending) of the first occurrence of every distinct line.

    Identical lines hold the same user and time, so only rows whose (user, time) pair repeats are
    compared as text (in the synthetic benchmark file 2% of the rows; hashing every line in Arrow cost
    more than the JSON parse)."""
    codes = [
        pc.dictionary_encode(column).combine_chunks().indices.to_numpy(zero_copy_only=False)
        for column in (users, times)
    ]
    codes = [code.astype(np.int64) for code in codes]
    key = codes[0] * len(lines) + codes[1]  # one int64 per (user, time) pair: codes < N, N^2 < 2^63
    order = np.argsort(key, kind="stable")
    same = key[order[1:]] == key[order[:-1]]  # neighbours in key order with the same pair
    candidates = np.unique(np.concatenate([order[1:][same], order[:-1][same]]))  # ascending
    seen: set[str] = set()
    repeats = []
    for row, line in zip(candidates.tolist(), lines.take(pa.array(candidates)).to_pylist(), strict=True):
        if line in seen:
            repeats.append(row)
        seen.add(line)
    keep = np.ones(len(key), dtype=bool)
    keep[repeats] = False
    return np.flatnonzero(keep)


def _column(table: pa.Table, name: str, types: tuple[pa.DataType, ...]) -> pa.ChunkedArray | None | bool:
    """The column when its type is one of `types`; None when absent; False when of another type."""
    if name not in table.column_names:
        return None
    column = table[name]
    return column if column.type in types else False


def read_reviews(path: Path, fields: dict[str, str], id_keys: tuple[str, str]) -> ReviewColumns | None:
    """The distinct review lines of `path` as columns, or None when the file is not in the strict shape.

    `fields` maps "user", "rating", "time", "text", "summary" to the file's keys; `id_keys` are the
    item id keys in order of preference (parent_asin, asin)."""
    lines = raw_lines(path)
    if lines is None:
        return None
    try:
        table = pajson.read_json(path)
    except (pa.ArrowInvalid, OSError, EOFError):
        return None
    if table.num_rows != len(lines):
        return None
    strings = {key: _column(table, fields[key], _STRING_TYPES) for key in ("user", "text", "summary")}
    ids = [_column(table, key, _STRING_TYPES) for key in id_keys]
    rating, time = (
        _column(table, fields["rating"], _NUMBER_TYPES),
        _column(table, fields["time"], (pa.int64(),)),
    )
    columns = [*strings.values(), *ids, rating, time]
    if any(c is False for c in columns) or any(c is None for c in (strings["user"], rating, time)):
        return None
    if strings["user"].null_count or rating.null_count or time.null_count:
        return None  # a required field is null: the line-by-line reader names the line
    keep = pa.array(_first_occurrences(lines, strings["user"], time))
    kept = {name: None if c is None else c.take(keep) for name, c in zip(
        ("user", "text", "summary", "parent", "asin", "rating", "time"), columns, strict=True
    )}  # fmt: skip

    def values(column: pa.ChunkedArray | None) -> list:
        return [None] * len(keep) if column is None else column.to_pylist()

    parents, asins = values(kept["parent"]), values(kept["asin"])
    if any((parent or asin) is None for parent, asin in zip(parents, asins, strict=True)):
        return None  # a row without an item id: the line-by-line reader names it
    try:
        rating_values = pc.cast(kept["rating"], pa.float64())
    except pa.ArrowInvalid:  # an integer rating that a double cannot hold exactly
        return None
    if pc.any(pc.is_nan(rating_values)).as_py():  # Arrow reads NaN; the line-by-line reader rejects it
        return None
    ratings = rating_values.to_pylist()
    return ReviewColumns(
        users=values(kept["user"]), parents=parents, asins=asins, ratings=ratings, times=values(kept["time"]),
        texts=values(kept["text"]), summaries=values(kept["summary"]),
        duplicate_lines=len(lines) - len(keep),
    )  # fmt: skip
