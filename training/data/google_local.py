"""Google Local 2021 loader (McAuley Lab, UCSD; https://datarepo.eng.ucsd.edu/mcauley_group/gdrive/googlelocal/).

Citations: Li, Shang & McAuley, "UCTopic", ACL 2022; Yan et al., "Personalized Showcases", SIGIR 2023.
Per-state gzip JSON lines:
- reviews `review-<State>.json.gz` or the 10-core `review-<State>_10.json.gz`: user_id, name, time
  (ms since the epoch), rating (1-5), text, pics, resp, gmap_id;
- metadata `meta-<State>.json.gz` (optional): gmap_id, name, category (list of Google business
  categories, may be null), address, avg_rating, ...
Identical review lines are dropped (counted as `duplicate_lines`); the first metadata record of a
gmap_id wins (meta-Vermont repeats 48 of its 11,243 ids). Businesses carry several categories, so the
event's category feature is the whole list (multi-valued).
"""

from __future__ import annotations

from pathlib import Path

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
from training.data.timeline import Dataset, Event, Item, TieBreak, build_timelines


def load_google_local_meta(path: str | Path, *, on_error: OnError = "raise") -> tuple[dict[str, Item], int]:
    """Items of a `meta-<State>.json(.gz)` file (first record per gmap_id) and the skipped-line count."""
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"{path}: no such file", path)
    policy = ErrorPolicy(on_error)
    return _meta(path, policy), policy.skipped


def _meta(path: Path, policy: ErrorPolicy) -> dict[str, Item]:
    items: dict[str, Item] = {}
    for number, line in read_lines(path):
        if not line.strip():
            continue
        try:
            record = parse_json_line(path, number, line)
            require_fields(path, number, record, ("gmap_id",))
        except DataFormatError as error:
            policy(error)
            continue
        gmap_id = str(record["gmap_id"])
        if gmap_id in items:
            continue
        raw = record.get("category") or []
        categories = tuple(str(c).strip() for c in raw if str(c).strip()) if isinstance(raw, list) else ()
        name = str(record.get("name") or "").strip()
        items[gmap_id] = Item(gmap_id, name or None, categories)
    return items


def _resolve(root: Path, state: str | None) -> tuple[Path, Path | None, str]:
    if root.is_file():
        reviews, root = root, root.parent
    elif state is not None:
        reviews = find_file(root, [f"review-{state}_10.json", f"review-{state}.json"], "reviews")
    else:
        found = sorted(root.glob("review-*.json*"))
        if len(found) != 1:
            listed = ", ".join(p.name for p in found) or "none"
            raise DatasetNotFoundError(f"{root}: pass a state; review files found: {listed}", root)
        reviews = found[0]
    if state is None:
        state = reviews.name.split(".")[0].removeprefix("review-").removesuffix("_10")
    meta = find_optional(root, [f"meta-{state}.json"])
    return reviews, meta, state


def load_google_local(
    path: str | Path,
    state: str | None = None,
    *,
    tie_break: TieBreak = "item",
    on_error: OnError = "raise",
) -> Dataset:
    """Load a state's reviews (+ metadata when present) from a directory or the reviews file."""
    reviews, meta, state = _resolve(existing_path(path), state)
    policy = ErrorPolicy(on_error)
    counters: dict[str, int] = {"duplicate_lines": 0}
    items = _meta(meta, policy) if meta is not None else {}
    rows: list[tuple[str, int, Event]] = []
    for number, record in distinct_json_records(reviews, policy, counters):
        try:
            require_fields(reviews, number, record, ("user_id", "gmap_id", "time"))
            millis = as_int(reviews, number, record["time"], "time")
            rating = record.get("rating")
            rating = None if rating is None else as_float(reviews, number, rating, "rating")
        except DataFormatError as error:
            policy(error)
            continue
        gmap_id = str(record["gmap_id"])
        if gmap_id not in items:
            items[gmap_id] = Item(gmap_id)
        text = record.get("text")
        text = str(text) if text is not None and str(text).strip() else None
        event = Event(gmap_id, millis // 1000, rating, items[gmap_id].categories, text)
        rows.append((str(record["user_id"]), millis, event))
    timelines = build_timelines(rows, tie_break)
    return Dataset(f"google-local-2021-{state}", timelines, items, skipped=policy.skipped, counters=counters)
