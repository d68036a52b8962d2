"""Vocabularies and the integer encoding the models consume (pure Python lists, no torch).

Every vocabulary reserves id 0 for padding and id 1 for unknown tokens; real tokens follow in a
deterministic order (items: natural id order, numeric ids as integers; categories: string order;
ratings: numeric order of their canonical strings, e.g. "0.5" < "4.0" < "4.5"). A vocabulary
serialises to a JSON-friendly dict with `to_dict` / `from_dict`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from training.data.timeline import Dataset, Event, format_rating, item_sort_key

PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
PAD_ID = 0
UNK_ID = 1
FEATURES: tuple[str, ...] = ("item", "category", "rating")  # keys of build_vocabs / encode_events


@dataclass(frozen=True)
class Vocab:
    """Token <-> id map with `<pad>` = 0 and `<unk>` = 1."""

    tokens: tuple[str, ...]  # every token by id, specials included
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.tokens[:2] != (PAD_TOKEN, UNK_TOKEN):
            raise ValueError(f"a Vocab starts with {PAD_TOKEN!r}, {UNK_TOKEN!r}; got {self.tokens[:2]}")
        index = {token: i for i, token in enumerate(self.tokens)}
        if len(index) != len(self.tokens):
            raise ValueError("duplicate tokens in Vocab")
        object.__setattr__(self, "_index", index)

    @classmethod
    def build(
        cls,
        tokens: Iterable[str],
        *,
        min_count: int = 1,
        sort_key: Callable[[str], Any] = item_sort_key,
    ) -> Vocab:
        """Vocabulary of the tokens seen at least `min_count` times, ordered by `sort_key`."""
        counts = Counter(tokens)
        kept = sorted(
            (t for t, n in counts.items() if n >= min_count and t not in (PAD_TOKEN, UNK_TOKEN)), key=sort_key
        )
        return cls((PAD_TOKEN, UNK_TOKEN, *kept))

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def unk_id(self) -> int:
        return UNK_ID

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: object) -> bool:
        return token in self._index

    def encode(self, token: str | None) -> int:
        """Id of the token; unknown or None -> `<unk>`."""
        if token is None:
            return UNK_ID
        return self._index.get(token, UNK_ID)

    def decode(self, token_id: int) -> str:
        """Token of an id (IndexError when out of range)."""
        if not 0 <= token_id < len(self.tokens):
            raise IndexError(f"id {token_id} outside vocabulary of size {len(self.tokens)}")
        return self.tokens[token_id]

    def to_dict(self) -> dict[str, Any]:
        return {"pad": PAD_TOKEN, "unk": UNK_TOKEN, "tokens": list(self.tokens[2:])}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Vocab:
        if data.get("pad") != PAD_TOKEN or data.get("unk") != UNK_TOKEN:
            raise ValueError(f"not a Vocab dict: pad/unk must be {PAD_TOKEN!r}/{UNK_TOKEN!r}")
        return cls((PAD_TOKEN, UNK_TOKEN, *(str(t) for t in data["tokens"])))


def _rating_key(token: str) -> tuple[float, str]:
    try:
        return (float(token), token)
    except ValueError:
        return (float("inf"), token)


def build_vocabs(
    data: Dataset | Mapping[str, Sequence[Event]], *, min_item_count: int = 1
) -> dict[str, Vocab]:
    """`{"item", "category", "rating"}` vocabularies over every event of the timelines.

    Pass training timelines (e.g. `leave_last_out(ds).train`) to keep held-out-only items unknown.
    """
    timelines = data.timelines if isinstance(data, Dataset) else data
    events = [event for user_events in timelines.values() for event in user_events]
    ratings = (format_rating(e.rating) for e in events if e.rating is not None)
    return {
        "item": Vocab.build((e.item for e in events), min_count=min_item_count),
        "category": Vocab.build((c for e in events for c in e.categories), sort_key=str),
        "rating": Vocab.build((r for r in ratings if r is not None), sort_key=_rating_key),
    }


def encode_events(events: Sequence[Event], vocabs: Mapping[str, Vocab]) -> dict[str, list[Any]]:
    """Per-feature id lists: `item` list[int], `category` list[list[int]] (empty = no category),
    `rating` list[int] (a missing rating encodes as `<unk>`)."""
    return {
        "item": [vocabs["item"].encode(e.item) for e in events],
        "category": [[vocabs["category"].encode(c) for c in e.categories] for e in events],
        "rating": [vocabs["rating"].encode(format_rating(e.rating)) for e in events],
    }
