"""The one timeline format every loader produces.

A `Dataset` maps each user id to a time-ordered list of `Event`s (item id, categorical features,
rating, UTC timestamp in seconds, optional text and summary) and keeps an item catalogue.
Order within a user is deterministic: timestamp, then a tie-break, because real data sets rate in
bursts (75,772 of ML-100K's 100,000 rows share their (user, timestamp) with another row).
Tie-breaks: `"item"` (default) compares item ids, numeric ids as integers and other ids as strings
(numeric ids sort before the others); `"file"` keeps the order of the source file. Rows equal on
both keys keep file order (the sort is stable).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from models.vocab import item_sort_key

TieBreak = Literal["item", "file"]
TIE_BREAKS: tuple[str, ...] = ("item", "file")


@dataclass(frozen=True, slots=True)
class Event:
    """One interaction of a user, as the user encoder sees it."""

    item: str  # item id as in the source (movieId, asin, parent_asin, gmap_id)
    timestamp: int  # seconds since the epoch, UTC
    rating: float | None = None  # explicit rating when the source has one
    categories: tuple[str, ...] = ()  # categorical feature(s): genres or one category level
    text: str | None = None  # review text, or MovieLens tags joined with ", "
    summary: str | None = None  # review headline (Amazon `summary` / 2023 `title`)


@dataclass(frozen=True, slots=True)
class Item:
    """Catalogue entry of an item."""

    item_id: str
    title: str | None = None
    categories: tuple[str, ...] = ()  # every category known for the item (full path for Amazon)


@dataclass
class Dataset:
    """A loaded data set: time-ordered timelines per user plus the item catalogue."""

    name: str
    timelines: dict[str, list[Event]]  # user id -> events, time-ordered
    items: dict[str, Item]  # item id -> catalogue entry (may list items nobody rated)
    skipped: int = 0  # malformed lines dropped under on_error="skip"
    counters: dict[str, int] = field(default_factory=dict)  # e.g. duplicate lines removed

    @property
    def num_events(self) -> int:
        return sum(len(events) for events in self.timelines.values())

    def events(self) -> Iterable[tuple[str, Event]]:
        """Every (user, event) pair, users in insertion order."""
        for user, events in self.timelines.items():
            for event in events:
                yield user, event


# --- building timelines ---


def check_tie_break(tie_break: str) -> None:
    """ValueError unless `tie_break` is one of TIE_BREAKS."""
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"tie_break must be one of {TIE_BREAKS}, got {tie_break!r}")


def build_timelines(
    rows: Iterable[tuple[str, int, Event]], tie_break: TieBreak = "item"
) -> dict[str, list[Event]]:
    """Group `(user, sort_time, event)` rows (file order) into time-ordered timelines.

    `sort_time` is the source's own clock (e.g. milliseconds) so that ordering is not coarsened
    by the conversion of `Event.timestamp` to seconds. Users appear in natural id order.
    """
    check_tie_break(tie_break)
    grouped: dict[str, list[tuple[int, Event]]] = {}
    for user, sort_time, event in rows:
        grouped.setdefault(user, []).append((sort_time, event))
    timelines: dict[str, list[Event]] = {}
    for user in sorted(grouped, key=item_sort_key):
        pairs = grouped[user]
        if tie_break == "item":
            pairs.sort(key=lambda pair: (pair[0], item_sort_key(pair[1].item)))
        else:
            pairs.sort(key=lambda pair: pair[0])
        timelines[user] = [event for _, event in pairs]
    return timelines
