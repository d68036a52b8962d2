"""Summary statistics of a loaded data set (what `python -m training.data stats` prints).

Counts users, distinct items with at least one event (`items`; `catalogue_items` counts the item
catalogue, which may list unrated items), events, the UTC time span, category and text coverage,
the length distribution of timelines and the loader's counters (skipped lines, removed duplicates).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from training.data.timeline import Dataset


def _utc_date(timestamp: int | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC).date().isoformat()


@dataclass(frozen=True)
class DatasetStats:
    name: str
    users: int
    items: int  # distinct items with at least one event
    catalogue_items: int  # entries of the item catalogue (rated or not)
    events: int
    first_timestamp: int | None  # seconds, UTC
    last_timestamp: int | None
    start_date: str | None  # ISO date, UTC
    end_date: str | None
    categories: int  # distinct categories on events
    events_with_category: int
    events_with_text: int  # review text or tags
    events_with_rating: int
    min_events_per_user: int
    median_events_per_user: float
    max_events_per_user: int
    skipped: int  # malformed lines dropped under on_error="skip"
    counters: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compute_stats(dataset: Dataset) -> DatasetStats:
    lengths = [len(events) for events in dataset.timelines.values()]
    events = [event for _, event in dataset.events()]
    stamps = [event.timestamp for event in events]
    first = min(stamps) if stamps else None
    last = max(stamps) if stamps else None
    return DatasetStats(
        name=dataset.name,
        users=len(dataset.timelines),
        items=len({event.item for event in events}),
        catalogue_items=len(dataset.items),
        events=len(events),
        first_timestamp=first,
        last_timestamp=last,
        start_date=_utc_date(first),
        end_date=_utc_date(last),
        categories=len({c for event in events for c in event.categories}),
        events_with_category=sum(1 for event in events if event.categories),
        events_with_text=sum(1 for event in events if event.text),
        events_with_rating=sum(1 for event in events if event.rating is not None),
        min_events_per_user=min(lengths, default=0),
        median_events_per_user=float(statistics.median(lengths)) if lengths else 0.0,
        max_events_per_user=max(lengths, default=0),
        skipped=dataset.skipped,
        counters=dict(dataset.counters),
    )


def _share(part: int, whole: int) -> str:
    return f"{part:,} ({100 * part / whole:.1f}%)" if whole else f"{part:,}"


def format_stats(stats: DatasetStats) -> str:
    """Human-readable report, one `name: value` per line."""
    lines = [
        f"dataset: {stats.name}",
        f"users: {stats.users:,}",
        f"items: {stats.items:,} (catalogue {stats.catalogue_items:,})",
        f"events: {stats.events:,}",
        f"time span: {stats.start_date} .. {stats.end_date} (UTC)",
        f"events per user: min {stats.min_events_per_user:,}, median {stats.median_events_per_user:g}, "
        f"max {stats.max_events_per_user:,}",
        f"categories: {stats.categories:,} distinct; events with a category: "
        f"{_share(stats.events_with_category, stats.events)}",
        f"events with text: {_share(stats.events_with_text, stats.events)}",
        f"events with a rating: {_share(stats.events_with_rating, stats.events)}",
        f"skipped lines: {stats.skipped:,}",
    ]
    lines += [f"{name.replace('_', ' ')}: {value:,}" for name, value in stats.counters.items()]
    return "\n".join(lines)
