"""MovieLens ratings through the columnar reader: `ratings.csv` (20M / 25M / latest) and `ratings.dat`
(1M / 10M) read by Arrow, checked, sorted with numpy and turned into the timelines that the line-by-line
path builds.

Followed: `timeline.build_timelines` and `movielens.load_movielens` (the reference results), the
pyarrow docs of `sort_indices` ("a stable sort of the input ... table") and `dictionary_encode`,
the numpy docs of `isin`.

Every reader here answers None when a file is not in the strict shape of `columnar.py`; the caller
then reads that file line by line. When it answers, the result equals the line-by-line one:
- users in ascending id order (canonical ids sort as integers, as `item_sort_key` orders them);
- per user, timestamp, then item id (`tie_break="item"`) or nothing (`"file"`); the sort is stable,
  so rows equal on every key keep file order;
- an event's categories are its movie's genres from `movies.csv` (none for unknown movies), its text
  the tags of its (user, movie) pair joined with ", " (the tags arrive as `movielens._tags` made them).
Events of one movie share one id string and one genre tuple.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from training.data.columnar import (
    MAX_ID,
    canonical_decimals,
    canonical_ids,
    canonical_ints,
    read_csv_strings,
    read_dat_strings,
)
from training.data.timeline import Event, Item, TieBreak, check_tie_break

RATINGS_HEADER = ("userId", "movieId", "rating", "timestamp")
MOVIES_HEADER = ("movieId", "title", "genres")
TAGS_HEADER = ("userId", "movieId", "tag", "timestamp")
_ID = re.compile(r"0|[1-9][0-9]{0,8}")  # columnar.ID_PATTERN, for Python's re (used with fullmatch)


@dataclass(frozen=True)
class RatingColumns:
    """The rows of `ratings.csv` in file order, one array per column."""

    users: np.ndarray  # (N,) int64 user ids
    items: np.ndarray  # (N,) int64 movie ids
    ratings: np.ndarray  # (N,) float64
    timestamps: np.ndarray  # (N,) int64 seconds

    def __len__(self) -> int:
        return len(self.users)


def read_ratings(path: Path) -> RatingColumns | None:
    """`ratings.csv` as columns, or None when a field is not canonical (see `columnar.py`)."""
    table = read_csv_strings(path, RATINGS_HEADER)
    return None if table is None else _rating_columns(table)


def read_ratings_dat(path: Path) -> RatingColumns | None:
    """ML-1M / ML-10M `ratings.dat` (`user::item::rating::time`) as columns, or None when a line is not in
    that shape or a field is not canonical (see `columnar.py`)."""
    table = read_dat_strings(path, RATINGS_HEADER)
    return None if table is None else _rating_columns(table)


def _rating_columns(table: pa.Table) -> RatingColumns | None:
    users, items = canonical_ids(table["userId"]), canonical_ids(table["movieId"])
    if users is None or items is None:
        return None
    ratings, timestamps = canonical_decimals(table["rating"]), canonical_ints(table["timestamp"])
    if ratings is None or timestamps is None:
        return None
    return RatingColumns(users, items, ratings, timestamps)


def read_rows(
    path: Path, header: tuple[str, ...], int_columns: tuple[str, ...] = ()
) -> Iterator[tuple[int, tuple[str, ...]]] | None:
    """`(row number, fields)` of a CSV file read by Arrow, for the line-by-line row consumers.

    None when the file is not in the strict shape or a column of `int_columns` holds a value that
    is not a plain integer. The row numbers count data rows from 1 in file order: they order rows,
    they are not line numbers (no error can name them: the values are already checked).
    """
    table = read_csv_strings(path, header)
    if table is None or any(canonical_ints(table[name]) is None for name in int_columns):
        return None
    columns = [table[name].to_pylist() for name in header]
    return enumerate(zip(*columns, strict=True), start=1)


# --- timelines ---


def _texts(users: np.ndarray, items: np.ndarray, tags: dict[tuple[str, str], list[str]]) -> list[str | None]:
    """Per row, the tags of its (user, item) pair joined with ", ", else None."""
    texts: list[str | None] = [None] * len(users)
    joined: dict[int, str] = {}
    for (user, item), found in tags.items():
        if found and _ID.fullmatch(user) and _ID.fullmatch(item):  # other keys match no canonical row
            joined[int(user) * MAX_ID + int(item)] = ", ".join(found)
    if joined:
        pairs = users * MAX_ID + items  # < 10**18: fits int64
        rows = np.flatnonzero(np.isin(pairs, np.fromiter(joined, np.int64, len(joined))))
        for row, pair in zip(rows.tolist(), pairs[rows].tolist(), strict=True):
            texts[row] = joined[pair]
    return texts


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector (restored after): the events hold no cycles, and
    without the pause it runs every 700 new objects and walks the older generations as they grow,
    which doubles the time to make a million events (2.2 s vs 1.1 s, measured here 2026-12-03)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def columnar_timelines(
    columns: RatingColumns,
    items: dict[str, Item],
    tags: dict[tuple[str, str], list[str]],
    tie_break: TieBreak = "item",
) -> dict[str, list[Event]]:
    """The timelines `build_timelines` makes of these ratings, sorted and built column-wise."""
    check_tie_break(tie_break)
    keys = [("users", "ascending"), ("timestamps", "ascending"), ("items", "ascending")]
    table = pa.table({"users": columns.users, "timestamps": columns.timestamps, "items": columns.items})
    order = pc.sort_indices(table, sort_keys=keys if tie_break == "item" else keys[:2]).to_numpy()  # stable
    users, movies = columns.users[order], columns.items[order]
    encoded = pc.dictionary_encode(pa.array(movies))
    names = [str(movie) for movie in encoded.dictionary.to_pylist()]
    genres = [items[name].categories if name in items else () for name in names]
    codes = encoded.indices.to_numpy().tolist()
    with collector_paused():
        events = list(
            map(
                Event,
                map(names.__getitem__, codes),
                columns.timestamps[order].tolist(),
                columns.ratings[order].tolist(),
                map(genres.__getitem__, codes),
                _texts(users, movies, tags),
            )
        )
    starts = np.flatnonzero(np.diff(users)) + 1
    bounds = [0, *starts.tolist(), len(events)] if len(events) else []
    first_users = users[bounds[:-1]].tolist() if bounds else []
    return {
        str(user): events[start:end]
        for user, start, end in zip(first_users, bounds[:-1], bounds[1:], strict=True)
    }
