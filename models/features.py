"""Collate encoded user event sequences into padded tensors for the user encoder.

USER-LLM (Ning, Liu et al., 2024, arXiv 2402.13598): every event carries ID-based
features (item id, categories/genres, rating, ...). Ids are already encoded: 0 is padding,
1 is "unknown", real values start at 2.

Padding side: RIGHT padding, real events first (`mask[b, :n_b]` is True). The causal encoder
then gives event t the position t for every user, and "the last real event" is `n_b - 1`. (The
encoder derives positions from the mask, so left-padded input would also encode correctly.)
Truncation keeps the LAST `max_len` events, the most recent history.

Shapes: B users, T events (<= max_len), K categories per event (multi-valued features).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import torch
from torch import Tensor

__all__ = ["PAD_ID", "UNKNOWN_ID", "collate_events"]

PAD_ID = 0  # padding id in every feature vocabulary
UNKNOWN_ID = 1  # out-of-vocabulary id in every feature vocabulary

EventSequence = Mapping[str, Sequence[int] | Sequence[Sequence[int]]]


# --- helpers ---


def _length(seq: EventSequence) -> int:
    lengths = {name: len(values) for name, values in seq.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"all features of a sequence must have one length per event, got {lengths}")
    return next(iter(lengths.values()), 0)


# --- collate ---


def collate_events(
    seqs: Sequence[EventSequence],
    max_len: int = 50,
    max_categories: int | None = None,
    *,
    multi_valued: Collection[str] = ("category",),
) -> tuple[dict[str, Tensor], Tensor]:
    """Pad a batch of encoded event sequences (right padding, keep the last `max_len` events).

    Args:
        seqs: one mapping per user, e.g. {"item": [5, 9], "category": [[2, 3], [4]], "rating": [6, 5]};
            every feature has one entry per event (oldest first).
        max_len: events kept per user (the most recent ones); the encoder window.
        max_categories: values kept per event for multi-valued features (the first ones);
            None = the largest count in the batch (at least 1).
        multi_valued: names of the features whose per-event value is a list of ids.

    Returns:
        features: name -> (B, T) long, or (B, T, K) long for multi-valued features, 0 = padding.
        mask: (B, T) bool, True = real event. T = the longest kept sequence (at least 1).
    """
    if not seqs:
        raise ValueError("collate_events needs at least one sequence")
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    if max_categories is not None and max_categories < 1:
        raise ValueError(f"max_categories must be >= 1, got {max_categories}")
    names = list(seqs[0].keys())
    for seq in seqs:
        if set(seq.keys()) != set(names):
            raise ValueError(f"all sequences need the same features {names}, got {list(seq.keys())}")

    kept = [min(_length(seq), max_len) for seq in seqs]
    batch, length = len(seqs), max(1, max(kept))
    mask = torch.zeros(batch, length, dtype=torch.bool)  # (B, T)
    for b, n in enumerate(kept):
        mask[b, :n] = True

    features: dict[str, Tensor] = {}
    for name in names:
        tails = [list(seq[name])[len(seq[name]) - n :] for seq, n in zip(seqs, kept, strict=True)]
        if name in multi_valued:
            widest = max((len(v) for tail in tails for v in tail), default=1)  # type: ignore[arg-type]
            k = max_categories if max_categories is not None else max(1, widest)
            out = torch.zeros(batch, length, k, dtype=torch.long)  # (B, T, K)
            for b, tail in enumerate(tails):
                for t, values in enumerate(tail):
                    ids = list(values)[:k]  # type: ignore[arg-type]
                    out[b, t, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        else:
            out = torch.zeros(batch, length, dtype=torch.long)  # (B, T)
            for b, tail in enumerate(tails):
                if tail:
                    out[b, : len(tail)] = torch.tensor(tail, dtype=torch.long)
        if (out < 0).any():
            raise ValueError(f"feature {name!r} has negative ids")
        features[name] = out
    return features, mask
