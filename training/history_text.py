"""A user's history rendered as text, for the text-prompt baseline (USER-LLM, arXiv 2402.13598, Sec. 4).

Text-prompt contextualization puts the history into the prompt instead of user embeddings:
"1. Toy Story (1995) (Animation, Children's, Comedy): 4/5", oldest first; with the encoder's review-length
feature, the same bucket as text (", review of 6-10 words"), so both ways see the same information.
`fit_history` keeps the newest events that fit a token budget (whole lines, the oldest dropped first),
for any instructions of `models/prompts.py`, so USER-LLM and text-prompt share the instruction wording.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from models.prompts import instruction, nouns, prompt_ids
from training.corpus import Corpus
from training.data import Event, format_rating
from training.data.vocab import length_bucket

__all__ = ["fit_history", "history_text"]


def history_text(corpus: Corpus, events: Sequence[Event]) -> str:
    """The numbered history block, oldest first, that `instruction(..., history=)` puts before the task:
    "1. Title (Genre, Genre): 4/5" lines (the item id when the title is unknown, no rating part without;
    ", review of N-M words" when the corpus has the `length` vocabulary and the event a text)."""
    noun, lines = nouns(corpus.dataset.name)[0], []
    if not events:
        return f"This user has no {noun} history yet."
    for i, event in enumerate(events, 1):
        item = corpus.dataset.items.get(event.item)
        title = (corpus.catalogue.get(event.item) or {}).get("title") or (item and item.title) or event.item
        categories, rating = ", ".join(event.categories), format_rating(event.rating)
        rated = f": {rating.removesuffix('.0')}/5" if rating else ""
        length = length_bucket(event.text) if "length" in corpus.vocabs else None
        wrote = f", review of {length}" if length else ""
        lines.append(f"{i}. {title}" + (f" ({categories})" if categories else "") + rated + wrote)
    verb = "rated" if any(e.rating is not None for e in events) else "chose"
    return "\n".join([f"{noun.capitalize()}s this user {verb}, oldest first:", *lines])


def fit_history(
    tokenizer: Any, corpus: Corpus, history: Sequence[Event], tasks: Sequence[tuple[str, Mapping[str, Any]]],
    *, max_events: int, max_prompt_tokens: int,
) -> tuple[list[list[int]], int]:  # fmt: skip
    """Chat-prompt ids of each (task key, instruction kwargs) with the history text, and how many events
    they show: the newest `max_events`, minus the oldest until every prompt has <= `max_prompt_tokens`
    tokens (0 events if even the empty history does not fit)."""
    events = list(history)[-max_events:]

    @functools.cache
    def prompts(k: int) -> tuple[list[int], ...]:  # showing the newest k events
        text = history_text(corpus, events[len(events) - k :])
        return tuple(prompt_ids(tokenizer, instruction(key, history=text, **kwargs)) for key, kwargs in tasks)

    lo, hi = 0, len(events)  # binary search for the most events that fit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if max(map(len, prompts(mid))) <= max_prompt_tokens else (lo, mid - 1)
    return list(prompts(lo)), lo
