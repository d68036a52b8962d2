"""Amazon review loaders: Amazon Review Data 2018 and Amazon Reviews 2023 (McAuley Lab, UCSD).

2018 (Ni, Li & McAuley, EMNLP 2019; https://nijianmo.github.io/amazon/): gzip JSON lines.
  Reviews `<Category>_5.json.gz`: reviewerID, asin, overall, reviewText, summary, unixReviewTime (s).
  Metadata `meta_<Category>.json.gz` (optional): asin, title, brand, category (coarse -> fine).
2023 (Hou et al., arXiv 2403.03952; https://amazon-reviews-2023.github.io/): JSON lines, `.jsonl`
  or `.jsonl.gz`. Reviews `<Category>.jsonl`: user_id, asin, parent_asin, rating, timestamp (ms),
  title, text. Metadata `meta_<Category>.jsonl`: parent_asin, title, store, main_category, categories.
  The item id is parent_asin (variants of one product share it), else asin.

The files repeat reviews, so reviews are de-duplicated twice, keeping the first in file order:
(1) identical lines, (2) the same (user, text, time), which is one review copied onto product variants
(text-less reviews included: All_Beauty's 4 are one "Five Stars" review on 4 variants). Counters
report both.
Engines: `"columnar"` (default) reads a review file with Arrow's JSON reader (`amazon_columnar.py`)
when it is in the strict shape that reader checks, else line by line; `"python"` reads it line by line
(the reference). Both give the same data set and counters, and the same error naming file and line.
Metadata files likewise: Arrow's JSON reader converting only the fields used
(`amazon_meta_columnar.py`) when the file is in its strict shape, else line by line.
Metadata: first record per item id wins; the categories are `category` when not null, else
`categories`; HTML-debris titles (starting with '<') fall back to the brand/store; HTML entities in
categories are unescaped. The event's category feature is the level-2
category (category[1]) when present, else category[0] (else the 2023 main_category), else none.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from training.data.amazon_columnar import read_reviews
from training.data.amazon_meta_columnar import read_meta
from training.data.errors import DataFormatError, DatasetNotFoundError, ErrorPolicy, OnError
from training.data.files import (
    as_float,
    as_int,
    distinct_json_records,
    existing_path,
    find_file,
    find_optional,
    parse_json_line,
    read_lines,
    require_fields,
)
from training.data.movielens import ENGINES, Engine
from training.data.movielens_columnar import collector_paused
from training.data.timeline import Dataset, Event, Item, TieBreak, build_timelines


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value)
    return text if text.strip() else None


def clean_categories(raw: Any) -> tuple[str, ...]:
    """Category path with HTML entities unescaped and empty (or null) entries dropped."""
    if not isinstance(raw, list):
        return ()
    cleaned = (html.unescape(str(entry)).strip() for entry in raw if entry is not None)
    return tuple(entry for entry in cleaned if entry)


def category_feature(categories: tuple[str, ...], fallback: str | None = None) -> tuple[str, ...]:
    """The favourite-category feature: level 2 when present, else level 1, else `fallback`."""
    if len(categories) >= 2:
        return (categories[1],)
    if categories:
        return (categories[0],)
    return (fallback,) if fallback else ()


def clean_title(title: Any, fallback: Any = None) -> str | None:
    """Unescaped title; HTML debris (`<span class=...`) or empty -> the fallback (brand/store)."""
    text = html.unescape(str(title)).strip() if title is not None else ""
    if not text or text.startswith("<"):
        text = html.unescape(str(fallback)).strip() if fallback is not None else ""
    return text or None


def _resolve(
    path: str | Path, category: str | None, review_names: list[str], glob: str, meta_names: list[str]
) -> tuple[Path, Path | None, str]:
    """(reviews file, metadata file or None, category) from a directory or a reviews file."""
    root = existing_path(path)
    if root.is_file():
        reviews, root = root, root.parent
    elif category is not None:
        reviews = find_file(root, [name.format(category) for name in review_names], "reviews")
    else:
        found = sorted(p for p in root.glob(glob) if not p.name.startswith("meta"))
        if len(found) != 1:
            listed = ", ".join(p.name for p in found) or "none"
            raise DatasetNotFoundError(f"{root}: pass a category; review files found: {listed}", root)
        reviews = found[0]
    if category is None:
        category = reviews.name.split(".")[0].removesuffix("_5")
    meta = find_optional(root, [name.format(category) for name in meta_names])
    return reviews, meta, category


def load_meta(
    path: Path | None, id_keys: tuple[str, ...], brand_key: str, policy: ErrorPolicy, engine: Engine
) -> tuple[dict[str, Item], dict[str, tuple[str, ...]]]:
    """Items and each item's category feature; first record per id wins."""
    items: dict[str, Item] = {}
    features: dict[str, tuple[str, ...]] = {}

    def add(item_id: str, title: Any, brand: Any, main: Any, categories_raw: Any) -> None:
        if item_id in items:
            return
        categories = clean_categories(categories_raw)
        main_text = _text(main)
        items[item_id] = Item(item_id, clean_title(title, brand), categories)
        main_category = html.unescape(main_text).strip() if main_text else None
        features[item_id] = category_feature(categories, main_category)

    if path is None:
        return items, features
    columns = read_meta(path, id_keys, brand_key) if engine == "columnar" else None
    if columns is not None:
        for item_id, title, brand, main, categories_raw in columns.rows():
            if item_id is None:
                break  # a record without an id: read line by line below, which names the line
            add(item_id, title, brand, main, categories_raw)
        else:
            return items, features
        items.clear()
        features.clear()
    for number, line in read_lines(path):
        if not line.strip():
            continue
        try:
            record = parse_json_line(path, number, line)
            item_id = next((record[key] for key in id_keys if record.get(key)), None)
            if item_id is None:
                raise DataFormatError(path, number, f"missing field {' or '.join(id_keys)}")
        except DataFormatError as error:
            policy(error)
            continue
        categories_raw = record.get("category")
        if categories_raw is None:
            categories_raw = record.get("categories")
        title, brand, main = record.get("title"), record.get(brand_key), record.get("main_category")
        add(str(item_id), title, brand, main, categories_raw)
    return items, features


def _load(
    name: str,
    reviews: Path,
    meta: Path | None,
    fields: dict[str, str],
    millis: bool,
    tie_break: TieBreak,
    on_error: OnError,
    engine: Engine,
) -> Dataset:
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; expected one of {ENGINES}")
    policy = ErrorPolicy(on_error)
    counters = {"duplicate_lines": 0, "duplicate_reviews": 0}
    items, features = load_meta(meta, ("parent_asin", "asin"), fields["brand"], policy, engine)
    seen: set[tuple[str, str | None, int]] = set()
    rows: list[tuple[str, int, Event]] = []

    def add(
        user: str, item_id: str, rating: float, sort_time: int, text: str | None, summary: str | None
    ) -> None:
        """One review's event (text and summary as `_text` returns them), unless the same (user, text,
        time) came before."""
        key = (user, text, sort_time)
        if key in seen:
            counters["duplicate_reviews"] += 1
            return
        seen.add(key)
        if item_id not in items:
            items[item_id] = Item(item_id)
        timestamp = sort_time // 1000 if millis else sort_time
        event = Event(item_id, timestamp, rating, features.get(item_id, ()), text, summary)
        rows.append((user, sort_time, event))

    columns = read_reviews(reviews, fields, ("parent_asin", "asin")) if engine == "columnar" else None
    if columns is not None:
        counters["duplicate_lines"] = columns.duplicate_lines
        with collector_paused():  # millions of new objects and no cycles (movielens_columnar.py)
            for row in columns.rows():
                add(*row)
            return Dataset(
                name, build_timelines(rows, tie_break), items, skipped=policy.skipped, counters=counters
            )
    for number, record in distinct_json_records(reviews, policy, counters):
        try:
            item_id = record.get("parent_asin") or record.get("asin")
            if item_id is None:
                raise DataFormatError(reviews, number, "missing field parent_asin or asin")
            require_fields(reviews, number, record, (fields["user"], fields["rating"], fields["time"]))
            rating = as_float(reviews, number, record[fields["rating"]], fields["rating"])
            sort_time = as_int(reviews, number, record[fields["time"]], fields["time"])
        except DataFormatError as error:
            policy(error)
            continue
        text, summary = _text(record.get(fields["text"])), _text(record.get(fields["summary"]))
        add(str(record[fields["user"]]), str(item_id), rating, sort_time, text, summary)
    timelines = build_timelines(rows, tie_break)
    return Dataset(name, timelines, items, skipped=policy.skipped, counters=counters)


_FIELDS_2018 = {
    "user": "reviewerID", "rating": "overall", "time": "unixReviewTime",
    "text": "reviewText", "summary": "summary", "brand": "brand",
}  # fmt: skip
_FIELDS_2023 = {
    "user": "user_id", "rating": "rating", "time": "timestamp",
    "text": "text", "summary": "title", "brand": "store",
}  # fmt: skip


def load_amazon_2018(
    path: str | Path,
    category: str | None = None,
    *,
    tie_break: TieBreak = "item",
    on_error: OnError = "raise",
    engine: Engine = "columnar",
) -> Dataset:
    """Load `<category>_5.json(.gz)` (+ `meta_<category>.json(.gz)` when present) from `path`.

    `path` is a directory (category None: its single `*_5.json*` file) or the reviews file itself.
    """
    reviews, meta, category = _resolve(
        path, category, ["{}_5.json", "{}.json"], "*_5.json*", ["meta_{}.json"]
    )
    return _load(f"amazon-2018-{category}", reviews, meta, _FIELDS_2018, False, tie_break, on_error, engine)


def load_amazon_2023(
    path: str | Path,
    category: str | None = None,
    *,
    tie_break: TieBreak = "item",
    on_error: OnError = "raise",
    engine: Engine = "columnar",
) -> Dataset:
    """Load `<category>.jsonl(.gz)` (+ `meta_<category>.jsonl(.gz)` when present) from `path`."""
    reviews, meta, category = _resolve(path, category, ["{}.jsonl"], "*.jsonl*", ["meta_{}.jsonl"])
    return _load(f"amazon-2023-{category}", reviews, meta, _FIELDS_2023, True, tie_break, on_error, engine)
