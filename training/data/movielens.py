"""MovieLens loaders (GroupLens Research, University of Minnesota; https://grouplens.org/datasets/movielens/).

Formats (Harper & Konstan, "The MovieLens Datasets: History and Context", ACM TiiS 2015):
- 100K: `u.data` = `user \\t item \\t rating \\t unix time`, no header; `u.item` = latin-1,
  `id|title|release|video release|IMDb URL|19 genre flags`; genre names from `u.genre` (`name|index`)
  or the fixed list below.
- 1M / 10M: `ratings.dat` = `user::item::rating::time`; `movies.dat` = `id::title::Genre|Genre`
  (1M is latin-1, 10M UTF-8); 10M `tags.dat` = `user::item::tag::time`.
- 20M / 25M / latest(-small): CSV with header, UTF-8: `ratings.csv` (userId,movieId,rating,timestamp),
  `movies.csv` (movieId,title,genres; titles with commas are quoted), `tags.csv`
  (userId,movieId,tag,timestamp).
Tags become the event text of the rated (user, item) pair, joined with ", " in time order; tags on
unrated pairs are ignored. `(no genres listed)` and the 100K `unknown` genre mean no category.
A CSV header that differs from the expected one raises even under `on_error="skip"`: the columns
cannot be trusted. Missing movie files are allowed (events then have no category).
Engines: `"columnar"` (default) reads the CSV files and the 1M/10M `ratings.dat` with Arrow
(`movielens_columnar.py`), and any file it does not take, the 100K files and the other `.dat` files
(movies, tags: small; 2.8 s, 10% of the columnar load, for a synthetic ML-10M folder with 62,423
movies and 434,782 tags, 4.5x the real tag count; docs/benchmarks.md), line by line; `"python"`
reads every file line by line (the reference). Both give the same data set, and the same error
naming file and line.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from training.data.errors import DataFormatError, DatasetNotFoundError, ErrorPolicy, OnError
from training.data.files import (
    as_float,
    as_int,
    existing_path,
    find_file,
    find_optional,
    open_text,
    read_lines,
)
from training.data.movielens_columnar import (
    MOVIES_HEADER,
    RATINGS_HEADER,
    TAGS_HEADER,
    RatingColumns,
    columnar_timelines,
    read_ratings,
    read_ratings_dat,
    read_rows,
)
from training.data.timeline import Dataset, Event, Item, TieBreak, build_timelines

Engine = Literal["columnar", "python"]
ENGINES: tuple[str, ...] = ("columnar", "python")

ML100K_GENRES: tuple[str, ...] = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)  # fmt: skip
NO_GENRE = frozenset({"(no genres listed)", "unknown", ""})
VERSIONS: tuple[str, ...] = ("100k", "1m", "10m", "20m", "25m", "latest")

_Row = tuple[str, str, float, int]  # (user, item, rating, timestamp)


def _genres(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    return tuple(name for name in names if name not in NO_GENRE)


# --- line readers: each yields parsed rows, reporting malformed lines through the policy ---


def _split_rows(
    path: Path, sep: str, width: int, policy: ErrorPolicy, encoding: str = "utf-8"
) -> Iterator[tuple[int, list[str]]]:
    label = "tab" if sep == "\t" else f"'{sep}'"
    for number, line in read_lines(path, encoding):
        if not line.strip():
            continue
        fields = line.split(sep)
        if len(fields) != width:
            policy(
                DataFormatError(path, number, f"expected {width} {label}-separated fields, got {len(fields)}")
            )
            continue
        yield number, fields


def _csv_rows(path: Path, header: tuple[str, ...], policy: ErrorPolicy) -> Iterator[tuple[int, list[str]]]:
    with open_text(path) as handle:
        reader = csv.reader(handle)
        try:
            first = next(reader, None)
        except csv.Error as exc:
            raise DataFormatError(path, 1, f"unreadable CSV: {exc}") from None
        if first is None or tuple(field.strip() for field in first) != header:
            raise DataFormatError(path, 1, f"expected header {','.join(header)}, got {first}")
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                policy(DataFormatError(path, reader.line_num, f"unreadable CSV: {exc}"))
                continue
            if not fields:
                continue
            if len(fields) != len(header):
                policy(
                    DataFormatError(
                        path,
                        reader.line_num,
                        f"expected {len(header)} comma-separated fields, got {len(fields)}",
                    )
                )
                continue
            yield reader.line_num, fields


def _any_rows(
    path: Path,
    header: tuple[str, ...],
    policy: ErrorPolicy,
    engine: Engine,
    int_columns: tuple[str, ...] = (),
) -> Iterator[tuple[int, list[str]] | tuple[int, tuple[str, ...]]]:
    """The CSV rows read by Arrow when the engine is columnar and Arrow takes the file, else line by line."""
    rows = read_rows(path, header, int_columns) if engine == "columnar" else None
    return rows if rows is not None else _csv_rows(path, header, policy)


def _rating_row(path: Path, number: int, fields: list[str]) -> _Row:
    user, item, rating, timestamp = (field.strip() for field in fields)
    as_int(path, number, user, "user id")
    as_int(path, number, item, "item id")
    return user, item, as_float(path, number, rating, "rating"), as_int(path, number, timestamp, "timestamp")


def _ratings(path: Path, rows: Iterator[tuple[int, list[str]]], policy: ErrorPolicy) -> list[_Row]:
    parsed: list[_Row] = []
    for number, fields in rows:
        try:
            parsed.append(_rating_row(path, number, fields))
        except DataFormatError as error:
            policy(error)
    return parsed


def _tags(
    path: Path, rows: Iterator[tuple[int, list[str]]], policy: ErrorPolicy
) -> dict[tuple[str, str], list[str]]:
    """(user, item) -> tags in (time, file) order."""
    found: dict[tuple[str, str], list[tuple[int, int, str]]] = {}
    for number, fields in rows:
        user, item, tag, timestamp = fields
        try:
            stamp = as_int(path, number, timestamp.strip(), "timestamp")
        except DataFormatError as error:
            policy(error)
            continue
        if tag.strip():
            found.setdefault((user.strip(), item.strip()), []).append((stamp, number, tag.strip()))
    return {key: [tag for _, _, tag in sorted(tags)] for key, tags in found.items()}


def _tags_dat(path: Path, policy: ErrorPolicy) -> Iterator[tuple[int, list[str]]]:
    """10M tags.dat: the tag is free text, so split the ids off the left and the time off the right."""
    for number, line in read_lines(path):
        if not line.strip():
            continue
        head = line.split("::", 2)
        tail = head[-1].rsplit("::", 1) if len(head) == 3 else []
        if len(tail) != 2:
            policy(DataFormatError(path, number, "expected 4 '::'-separated fields (user::item::tag::time)"))
            continue
        yield number, [head[0], head[1], tail[0], tail[1]]


# --- item catalogues ---


def _items_100k(path: Path, genre_path: Path | None, policy: ErrorPolicy) -> dict[str, Item]:
    names = list(ML100K_GENRES)
    if genre_path is not None:
        names = [fields[0] for _, fields in _split_rows(genre_path, "|", 2, policy, "latin-1")]
    items: dict[str, Item] = {}
    for number, fields in _split_rows(path, "|", 5 + len(names), policy, "latin-1"):
        flags = fields[5:]
        if any(flag not in ("0", "1") for flag in flags):
            policy(DataFormatError(path, number, f"genre flags must be 0 or 1, got {'|'.join(flags)}"))
            continue
        genres = [name for name, flag in zip(names, flags, strict=True) if flag == "1"]
        items[fields[0]] = Item(fields[0], fields[1] or None, _genres(genres))
    return items


def _items_split(rows: Iterator[tuple[int, list[str]]]) -> dict[str, Item]:
    items: dict[str, Item] = {}
    for _, (item_id, title, genres) in rows:
        items[item_id.strip()] = Item(item_id.strip(), title or None, _genres(genres.split("|")))
    return items


# --- public ---


def detect_version(path: str | Path) -> str:
    """`100k`, `1m`, `10m` or `latest` from the files present (20M/25M read like `latest`)."""
    root = existing_path(path)
    if find_optional(root, ["u.data"]):
        return "100k"
    if find_optional(root, ["ratings.dat"]):
        return "1m" if find_optional(root, ["users.dat"]) else "10m"
    if find_optional(root, ["ratings.csv"]):
        return "latest"
    raise DatasetNotFoundError(f"{root}: no MovieLens ratings file (u.data, ratings.dat, ratings.csv)", root)


def load_movielens(
    path: str | Path,
    version: str | None = None,
    *,
    tie_break: TieBreak = "item",
    on_error: OnError = "raise",
    engine: Engine = "columnar",
) -> Dataset:
    """Load a MovieLens directory (`version` one of VERSIONS; detected from the files when None).

    `engine`: `"columnar"` or `"python"` (line by line, the reference); both give the same data set.
    """
    root = existing_path(path)
    if root.is_file():  # e.g. the ratings file itself
        root = root.parent
    version = version or detect_version(root)
    if version not in VERSIONS:
        raise ValueError(f"unknown MovieLens version {version!r}; expected one of {VERSIONS}")
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; expected one of {ENGINES}")
    policy = ErrorPolicy(on_error)
    tags: dict[tuple[str, str], list[str]] = {}
    columns: RatingColumns | None = None
    if version == "100k":
        ratings_path = find_file(root, ["u.data"], "ratings")
        rows = _ratings(ratings_path, _split_rows(ratings_path, "\t", 4, policy), policy)
        item_path = find_optional(root, ["u.item"])
        genre_path = find_optional(root, ["u.genre"])
        items = _items_100k(item_path, genre_path, policy) if item_path else {}
    elif version in ("1m", "10m"):
        ratings_path = find_file(root, ["ratings.dat"], "ratings")
        columns = read_ratings_dat(ratings_path) if engine == "columnar" else None
        if columns is None:
            rows = _ratings(ratings_path, _split_rows(ratings_path, "::", 4, policy), policy)
        movies = find_optional(root, ["movies.dat"])
        encoding = "latin-1" if version == "1m" else "utf-8"
        items = _items_split(_split_rows(movies, "::", 3, policy, encoding)) if movies else {}
        tag_path = find_optional(root, ["tags.dat"])
        if tag_path is not None:
            tags = _tags(tag_path, _tags_dat(tag_path, policy), policy)
    else:
        ratings_path = find_file(root, ["ratings.csv"], "ratings")
        columns = read_ratings(ratings_path) if engine == "columnar" else None
        if columns is None:
            rows = _ratings(ratings_path, _csv_rows(ratings_path, RATINGS_HEADER, policy), policy)
        movies = find_optional(root, ["movies.csv"])
        items = _items_split(_any_rows(movies, MOVIES_HEADER, policy, engine)) if movies else {}
        tag_path = find_optional(root, ["tags.csv"])
        if tag_path is not None:
            tags = _tags(tag_path, _any_rows(tag_path, TAGS_HEADER, policy, engine, ("timestamp",)), policy)

    def events() -> Iterator[tuple[str, int, Event]]:
        for user, item, rating, timestamp in rows:
            known = items.get(item)
            pair_tags = tags.get((user, item))
            text = ", ".join(pair_tags) if pair_tags else None
            yield user, timestamp, Event(item, timestamp, rating, known.categories if known else (), text)

    if columns is not None:
        timelines = columnar_timelines(columns, items, tags, tie_break)
    else:
        timelines = build_timelines(events(), tie_break)
    return Dataset(name=f"movielens-{version}", timelines=timelines, items=items, skipped=policy.skipped)
