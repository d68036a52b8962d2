"""Amazon metadata files (2018 `meta_*.json(.gz)`, 2023 `meta_*.jsonl(.gz)`) through Arrow's JSON
reader: the fast path of `amazon.load_meta`.

Followed: the pyarrow docs "Reading JSON files" (`ParseOptions(explicit_schema=...,
unexpected_field_behavior="ignore")`: only the named fields are converted; the others are parsed for
validity and dropped, so the large nested `details`, `images` and `description` fields cost no
Python objects).

`read_meta` answers None for a file it does not take in the strict shape below; the caller then
reads it line by line (the reference), which gives the same items or raises the `DataFormatError`
naming the file and line. Taken: every non-blank line is one JSON object (the row count equals the
line count of `columnar.raw_lines`, no byte-order mark); the id fields, the title, the brand (2018
`brand`, 2023 `store`) and `main_category` are strings or absent/null; `category` and `categories`
are lists of strings (or nulls) or absent/null; no key twice in an object. Anything else (a
number for a title, a category written as one string, invalid JSON or UTF-8) falls back.
An absent field and a null read the same here, so the reference takes `category` when it is not
null, else `categories`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from training.data.columnar import raw_lines

__all__ = ["MetaColumns", "read_meta"]

CATEGORY_KEYS = ("category", "categories")


@dataclass(frozen=True)
class MetaColumns:
    """The metadata records of a file, in file order, one Python list per field (None = absent)."""

    ids: list[list[str | None]]  # one list per id key, in order of preference
    titles: list[str | None]
    brands: list[str | None]
    main_categories: list[str | None]
    categories: list[list[str] | None]  # `category` when not null, else `categories`

    def rows(self) -> Iterator[tuple[str | None, str | None, str | None, str | None, list[str] | None]]:
        """(item id, title, brand, main category, categories) per record; the item id is the first
        non-empty id key (as `amazon.load_meta` takes it), None when there is none."""
        for ids, title, brand, main, categories in zip(
            zip(*self.ids, strict=True), self.titles, self.brands, self.main_categories, self.categories,
            strict=True,
        ):  # fmt: skip
            yield next((value for value in ids if value), None), title, brand, main, categories


def _schema(id_keys: tuple[str, ...], brand_key: str) -> pa.Schema:
    strings = dict.fromkeys((*id_keys, "title", brand_key, "main_category"), pa.string())
    lists = dict.fromkeys(CATEGORY_KEYS, pa.list_(pa.string()))
    return pa.schema(list({**strings, **lists}.items()))


def read_meta(path: Path, id_keys: tuple[str, ...], brand_key: str) -> MetaColumns | None:
    """The records of metadata file `path` as columns, or None when it is not in the strict shape."""
    lines = raw_lines(path)
    if lines is None:
        return None
    options = pajson.ParseOptions(
        explicit_schema=_schema(id_keys, brand_key), unexpected_field_behavior="ignore"
    )
    try:
        table = pajson.read_json(path, parse_options=options)
    except (pa.ArrowInvalid, OSError, EOFError, UnicodeDecodeError):
        return None
    if table.num_rows != len(lines):
        return None  # not one object per line: the line-by-line reader names the line
    category, categories = (table[key] for key in CATEGORY_KEYS)
    chosen = pc.if_else(pc.is_null(category), categories, category)
    try:
        return MetaColumns(
            ids=[table[key].to_pylist() for key in id_keys],
            titles=table["title"].to_pylist(),
            brands=table[brand_key].to_pylist(),
            main_categories=table["main_category"].to_pylist(),
            categories=chosen.to_pylist(),
        )
    except UnicodeDecodeError:  # invalid UTF-8 inside a string (Arrow checks it when converting)
        return None
