"""Raw events -> the integer features the user encoder reads, using the checkpoint's vocabularies.

The checkpoint carries `vocab.json` ({"item", "category", "rating"}, and "length" when its encoder
reads the review-length bucket of each event's text; `models.vocab.Vocab` dicts) and
`catalogue.json` (item id -> title, categories). Categories of an event come from the catalogue:
clients only send item ids. Unknown items encode as `<unk>` (id 1) and are counted, never dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from models.vocab import Vocab, format_rating, length_bucket


@dataclass(frozen=True)
class FeatureCodec:
    """Vocabularies + catalogue of one checkpoint."""

    items: Vocab
    categories: Vocab
    ratings: Vocab
    catalogue: dict[str, dict[str, Any]]
    lengths: Vocab | None = None  # review-length buckets, when the encoder reads them

    @classmethod
    def from_extras(cls, vocab: Mapping[str, Any], catalogue: Mapping[str, Any]) -> FeatureCodec:
        return cls(
            items=Vocab.from_dict(vocab["item"]),
            categories=Vocab.from_dict(vocab["category"]),
            ratings=Vocab.from_dict(vocab["rating"]),
            catalogue={str(k): dict(v) for k, v in catalogue.items()},
            lengths=Vocab.from_dict(vocab["length"]) if "length" in vocab else None,
        )

    def known(self, item_id: str) -> bool:
        return item_id in self.items

    def title(self, item_id: str) -> str:
        entry = self.catalogue.get(item_id) or {}
        return str(entry.get("title") or item_id)

    def encode(self, events: Sequence[tuple[str, float | None, str | None]]) -> dict[str, list[Any]]:
        """(item id, rating, text) in time order -> {"item", "category", "rating"} id lists, and "length"
        (the text's review-length bucket; no text = `<unk>`) when the checkpoint has that feature."""
        out: dict[str, list[Any]] = {"item": [], "category": [], "rating": []}
        if self.lengths is not None:
            out["length"] = [self.lengths.encode(length_bucket(text)) for _, _, text in events]
        for item_id, rating, _ in events:
            out["item"].append(self.items.encode(item_id))
            cats = (self.catalogue.get(item_id) or {}).get("categories") or []
            out["category"].append([self.categories.encode(str(c)) for c in cats])
            out["rating"].append(self.ratings.encode(format_rating(rating)))
        return out
