"""Favourite-category labels, as defined by USER-LLM (Ning, Liu et al., 2024, arXiv 2402.13598).

The favourite genre/category of a user is the most frequent category in the history; ties go to
the category seen most recently. Within one event listing several tied categories, the one listed
first wins (the order of the source, e.g. MovieLens genre order).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from training.data.timeline import Event


def favourite_category(events: Sequence[Event]) -> str | None:
    """Most frequent category of the time-ordered events, ties to the most recent; None if none."""
    counts: dict[str, int] = {}
    last_seen: dict[str, tuple[int, int]] = {}
    for index, event in enumerate(events):
        for position, category in enumerate(event.categories):
            counts[category] = counts.get(category, 0) + 1
            last_seen[category] = (index, -position)
    if not counts:
        return None
    return max(counts, key=lambda category: (counts[category], last_seen[category]))


def favourite_categories(timelines: Mapping[str, Sequence[Event]]) -> dict[str, str]:
    """User -> favourite category, for users with at least one categorised event."""
    labels: dict[str, str] = {}
    for user, events in timelines.items():
        label = favourite_category(events)
        if label is not None:
            labels[user] = label
    return labels
