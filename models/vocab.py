"""Vocabularies: the token <-> id maps a checkpoint carries (`vocab.json`), shared by training and
serving so both encode events the same way.

Every vocabulary reserves id 0 for padding and id 1 for unknown tokens; real tokens follow in a
deterministic order. Item ids sort naturally (numeric ids as integers first), which is also the
tie-break of events with equal timestamps; ratings are canonical one-decimal strings ("4.5"); review
lengths are fixed word-count buckets (`length_bucket`, the optional `length` feature).
Pure Python: no torch, no I/O.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
PAD_ID = 0
UNK_ID = 1


def item_sort_key(item_id: str) -> tuple[int, int, str]:
    """Natural order of ids: numeric ids as integers first, then the others as strings."""
    if item_id.isdigit():
        return (0, int(item_id), "")
    return (1, 0, item_id)


def format_rating(rating: float | None) -> str | None:
    """Canonical rating token: one decimal (`4.0`, `4.5`); None stays None."""
    return None if rating is None else f"{float(rating):.1f}"


LENGTH_EDGES = (2, 5, 10, 20, 40, 80)  # upper bounds (words) of the review-length buckets


def length_bucket(text: str | None) -> str | None:
    """Review-length token of an event's text by whitespace words: "0 words", "1-2 words", ...,
    "41-80 words", "81+ words"; None (no text) stays None. How much a user writes is the strongest
    per-user signal of review text (docs/text.md); the `length` feature carries it."""
    if text is None:
        return None
    words, low = len(text.split()), 1
    if words == 0:
        return "0 words"
    for high in LENGTH_EDGES:
        if words <= high:
            return f"{low}-{high} words"
        low = high + 1
    return f"{low}+ words"


LENGTH_TOKENS: tuple[str, ...] = tuple(
    dict.fromkeys(length_bucket(" ".join(["w"] * n)) or "" for n in range(LENGTH_EDGES[-1] + 2))
)  # every bucket, shortest first: the `length` vocabulary of any data set


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

    @classmethod
    def lengths(cls) -> Vocab:
        """The review-length vocabulary (`length_bucket` tokens, shortest first), the same for every
        data set so that any text encodes."""
        return cls((PAD_TOKEN, UNK_TOKEN, *LENGTH_TOKENS))

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
