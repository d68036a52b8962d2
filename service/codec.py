"""Raw events -> the integer features the user encoder reads, using the checkpoint's vocabularies.

The checkpoint carries `vocab.json` ({"item", "category", "rating"}: pad/unk + tokens) and
`catalogue.json` (item id -> title, categories). Categories of an event come from the catalogue:
clients only send item ids. Unknown items encode as `<unk>` (id 1) and are counted, never dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

PAD_ID = 0
UNK_ID = 1


def item_sort_key(item_id: str) -> tuple[int, int, str]:
    """Natural id order (numeric ids as integers first): the training data's tie-break."""
    return (0, int(item_id), "") if item_id.isdigit() else (1, 0, item_id)


def rating_token(rating: float | None) -> str | None:
    return None if rating is None else f"{float(rating):.1f}"


def _index(vocab: Mapping[str, Any]) -> dict[str, int]:
    return {str(token): i + 2 for i, token in enumerate(vocab["tokens"])}


@dataclass
class FeatureCodec:
    """Vocabularies + catalogue of one checkpoint."""

    items: dict[str, int]
    categories: dict[str, int]
    ratings: dict[str, int]
    catalogue: dict[str, dict[str, Any]]
    item_tokens: list[str] = field(default_factory=list)  # id -> item id (index 0, 1 = pad, unk)
    category_tokens: list[str] = field(default_factory=list)

    @classmethod
    def from_extras(cls, vocab: Mapping[str, Any], catalogue: Mapping[str, Any]) -> FeatureCodec:
        return cls(
            items=_index(vocab["item"]),
            categories=_index(vocab["category"]),
            ratings=_index(vocab["rating"]),
            catalogue={str(k): dict(v) for k, v in catalogue.items()},
            item_tokens=["<pad>", "<unk>", *map(str, vocab["item"]["tokens"])],
            category_tokens=["<pad>", "<unk>", *map(str, vocab["category"]["tokens"])],
        )

    def known(self, item_id: str) -> bool:
        return item_id in self.items

    def title(self, item_id: str) -> str:
        entry = self.catalogue.get(item_id) or {}
        return str(entry.get("title") or item_id)

    def encode(self, events: Sequence[tuple[str, float | None]]) -> dict[str, list[Any]]:
        """(item id, rating) pairs in time order -> {"item", "category", "rating"} id lists."""
        out: dict[str, list[Any]] = {"item": [], "category": [], "rating": []}
        for item_id, rating in events:
            out["item"].append(self.items.get(item_id, UNK_ID))
            cats = (self.catalogue.get(item_id) or {}).get("categories") or []
            out["category"].append([self.categories.get(str(c), UNK_ID) for c in cats])
            token = rating_token(rating)
            out["rating"].append(UNK_ID if token is None else self.ratings.get(token, UNK_ID))
        return out
