"""Leave-last-out splits, sliding windows and k-core filtering of timelines.

Leave-last-out (the protocol of SASRec/BERT4Rec and of USER-LLM's next-item evaluation): per user,
the last event is the test target, the one before it the validation target, the rest is training.
Validation history = the training events; test history = training events + validation target.
Users with fewer than `min_events` (default 3) events have no held-out target: all their events
stay in train. Windows of 50 events (USER-LLM's pretraining length) cut training histories for
next-event pretraining. k-core filtering (iterative) keeps users and items with >= k events.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from training.data.timeline import Dataset, Event


@dataclass(frozen=True)
class Example:
    """A held-out target with the history that precedes it."""

    user: str
    history: tuple[Event, ...]  # time-ordered events before the target
    target: Event


@dataclass(frozen=True)
class Splits:
    """Training timelines plus validation and test examples (one each per eligible user)."""

    train: dict[str, list[Event]]  # user -> training events (every user appears)
    valid: list[Example] = field(default_factory=list)
    test: list[Example] = field(default_factory=list)


@dataclass(frozen=True)
class Window:
    """A contiguous slice `events = timeline[start : start + len(events)]` of one user's timeline."""

    user: str
    start: int
    events: tuple[Event, ...]


def _timelines(data: Dataset | Mapping[str, Sequence[Event]]) -> Mapping[str, Sequence[Event]]:
    return data.timelines if isinstance(data, Dataset) else data


def leave_last_out(data: Dataset | Mapping[str, Sequence[Event]], *, min_events: int = 3) -> Splits:
    """Split every timeline: last event -> test, the one before -> valid, the rest -> train."""
    if min_events < 3:
        raise ValueError(
            f"min_events must be >= 3 (train, valid and test each need an event), got {min_events}"
        )
    train: dict[str, list[Event]] = {}
    valid: list[Example] = []
    test: list[Example] = []
    for user, events in _timelines(data).items():
        if len(events) < min_events:
            train[user] = list(events)
            continue
        train[user] = list(events[:-2])
        valid.append(Example(user, tuple(events[:-2]), events[-2]))
        test.append(Example(user, tuple(events[:-1]), events[-1]))
    return Splits(train, valid, test)


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets covering a sequence of `length`: every `stride`, plus one ending at the end."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] + window < length:
        starts.append(length - window)
    return starts


def sliding_windows(
    data: Dataset | Mapping[str, Sequence[Event]],
    *,
    window: int = 50,
    stride: int | None = None,
    min_length: int = 2,
) -> list[Window]:
    """Windows of at most `window` events (step `stride`, default `window`) over every timeline.

    Shorter timelines give one window of their full length; windows shorter than `min_length`
    (nothing to predict) are dropped. The last window always ends at the last event.
    """
    stride = window if stride is None else stride
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be >= 1, got {window}, {stride}")
    windows: list[Window] = []
    for user, events in _timelines(data).items():
        if len(events) < min_length:
            continue
        for start in window_starts(len(events), window, stride):
            windows.append(Window(user, start, tuple(events[start : start + window])))
    return windows


def k_core(dataset: Dataset, k: int) -> Dataset:
    """Iteratively drop users and items with fewer than `k` events until none remain."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    timelines = {user: list(events) for user, events in dataset.timelines.items()}
    while True:
        item_counts = Counter(e.item for events in timelines.values() for e in events)
        kept = {user: [e for e in events if item_counts[e.item] >= k] for user, events in timelines.items()}
        kept = {user: events for user, events in kept.items() if len(events) >= k}
        if sum(map(len, kept.values())) == sum(map(len, timelines.values())):
            break
        timelines = kept
    items_left = {e.item for events in timelines.values() for e in events}
    items = {item_id: item for item_id, item in dataset.items.items() if item_id in items_left}
    counters = dict(dataset.counters)
    counters["k_core_removed_events"] = dataset.num_events - sum(map(len, timelines.values()))
    return Dataset(f"{dataset.name}-{k}core", timelines, items, dataset.skipped, counters)
