"""Real inputs for the benchmarks: the vendored MovieLens ml-latest-small (movies, users' ratings).

Builds what a checkpoint would carry (vocabularies in `Vocab.to_dict` form and the catalogue), the
encoder's real-sized `FeatureConfig`s, and users' time-ordered histories as the `StoredEvent`s the
worker reads from Redis. Read with the csv module only: benchmarks must not depend on `training/`.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from benchmarks.harness import DATA_DIR
from models.event_embedding import FeatureConfig
from models.vocab import format_rating as rating_token
from models.vocab import item_sort_key
from service.codec import FeatureCodec
from service.user_store import StoredEvent

NO_GENRE = frozenset({"(no genres listed)", ""})


@dataclass(frozen=True)
class MovieLens:
    vocab: dict[str, dict[str, Any]]  # "item" / "category" / "rating" -> {"pad", "unk", "tokens"}
    catalogue: dict[str, dict[str, Any]]  # movie id -> {"title", "categories"}
    histories: dict[str, list[StoredEvent]]  # user id -> rating events, oldest first

    @property
    def codec(self) -> FeatureCodec:
        return FeatureCodec.from_extras(self.vocab, self.catalogue)

    def vocab_size(self, name: str) -> int:
        return len(self.vocab[name]["tokens"]) + 2  # + <pad>, <unk>

    def features(self) -> tuple[FeatureConfig, ...]:
        """The encoder's features with the data's real vocabulary sizes (default embedding widths)."""
        return (
            FeatureConfig(name="item", vocab_size=self.vocab_size("item"), dim=64),
            FeatureConfig(name="category", vocab_size=self.vocab_size("category"), multi_valued=True, dim=32),
            FeatureConfig(name="rating", vocab_size=self.vocab_size("rating"), dim=16),
        )

    def users_with(self, min_events: int) -> list[str]:
        """User ids with at least `min_events` ratings, in numeric order (deterministic)."""
        return sorted((u for u, h in self.histories.items() if len(h) >= min_events), key=int)


def _vocab(tokens: list[str]) -> dict[str, Any]:
    return {"pad": "<pad>", "unk": "<unk>", "tokens": tokens}


@cache
def load(path: Path = DATA_DIR) -> MovieLens:
    catalogue: dict[str, dict[str, Any]] = {}
    with (path / "movies.csv").open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            genres = [g for g in row["genres"].split("|") if g not in NO_GENRE]
            catalogue[row["movieId"]] = {"title": row["title"], "categories": genres}
    by_user: dict[str, list[StoredEvent]] = defaultdict(list)
    with (path / "ratings.csv").open(newline="", encoding="utf-8") as f:
        for i, row in enumerate(csv.DictReader(f)):
            by_user[row["userId"]].append(
                StoredEvent(
                    f"ml-{i}", row["movieId"], float(row["timestamp"]), "rating", float(row["rating"]), None
                )
            )
    histories = {u: sorted(events, key=lambda e: e.order) for u, events in by_user.items()}
    ratings = sorted({rating_token(e.rating) or "" for h in histories.values() for e in h}, key=float)
    vocab = {
        "item": _vocab(sorted(catalogue, key=item_sort_key)),
        "category": _vocab(sorted({g for m in catalogue.values() for g in m["categories"]})),
        "rating": _vocab(ratings),
    }
    return MovieLens(vocab, catalogue, histories)


def render_history(data: MovieLens, events: list[StoredEvent]) -> str:
    """The text-prompt baseline's rendering: "Toy Story (1995), rated 4.0; Heat (1995), rated 3.5"."""
    return "; ".join(f"{data.catalogue[e.item_id]['title']}, rated {e.rating:.1f}" for e in events)
