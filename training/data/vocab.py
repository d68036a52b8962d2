"""Building vocabularies from data sets, and the integer encoding the models consume (pure Python).

`Vocab` itself lives in `models/vocab.py` (the checkpoint carries it and the service reads it);
this module builds the `item` / `category` / `rating` vocabularies of a data set: items in natural
id order, categories in string order, ratings in numeric order of their canonical strings
("0.5" < "4.0" < "4.5"), and on request the fixed `length` vocabulary (review-length buckets).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from models.vocab import PAD_ID, PAD_TOKEN, UNK_ID, UNK_TOKEN, Vocab, format_rating, length_bucket
from training.data.timeline import Dataset, Event

__all__ = [
    "FEATURES", "OPTIONAL_FEATURES", "PAD_ID", "PAD_TOKEN", "UNK_ID", "UNK_TOKEN", "Vocab", "build_vocabs",
    "encode_events", "length_bucket",
]  # fmt: skip
FEATURES: tuple[str, ...] = ("item", "category", "rating")  # keys of build_vocabs / encode_events
OPTIONAL_FEATURES: tuple[str, ...] = ("length",)  # built on request (`length=True`), encoded when present


def _rating_key(token: str) -> tuple[float, str]:
    try:
        return (float(token), token)
    except ValueError:
        return (float("inf"), token)


def build_vocabs(
    data: Dataset | Mapping[str, Sequence[Event]], *, min_item_count: int = 1, length: bool = False
) -> dict[str, Vocab]:
    """`{"item", "category", "rating"}` vocabularies over every event of the timelines, plus the fixed
    `length` vocabulary (review-length buckets of the event text) when `length`.

    Pass training timelines (e.g. `leave_last_out(ds).train`) to keep held-out-only items unknown.
    """
    timelines = data.timelines if isinstance(data, Dataset) else data
    events = [event for user_events in timelines.values() for event in user_events]
    ratings = (format_rating(e.rating) for e in events if e.rating is not None)
    vocabs = {
        "item": Vocab.build((e.item for e in events), min_count=min_item_count),
        "category": Vocab.build((c for e in events for c in e.categories), sort_key=str),
        "rating": Vocab.build((r for r in ratings if r is not None), sort_key=_rating_key),
    }
    if length:
        vocabs["length"] = Vocab.lengths()
    return vocabs


def encode_events(events: Sequence[Event], vocabs: Mapping[str, Vocab]) -> dict[str, list[Any]]:
    """Per-feature id lists: `item` list[int], `category` list[list[int]] (empty = no category),
    `rating` list[int] (a missing rating encodes as `<unk>`), and `length` list[int] (review-length
    bucket; no text encodes as `<unk>`) when the vocabularies have it."""
    out = {
        "item": [vocabs["item"].encode(e.item) for e in events],
        "category": [[vocabs["category"].encode(c) for c in e.categories] for e in events],
        "rating": [vocabs["rating"].encode(format_rating(e.rating)) for e in events],
    }
    if "length" in vocabs:
        out["length"] = [vocabs["length"].encode(length_bucket(e.text)) for e in events]
    return out
