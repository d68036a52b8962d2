"""Which training windows each pretraining step reads: every stride window, or one window per user.

- `"windows"` (the paper's setup and the default): the stride windows of every training timeline
  (`training/data/splits.py` `sliding_windows`), each once per epoch in a fresh seeded order. A user
  with 700 events gives 14 windows, one with 20 events gives one: heavy users dominate the loss.
- `"users"`: one window per user per epoch, so every user weighs the same, as in the test, which
  scores every user once. The window ends at an event drawn uniformly from the user's training
  timeline (never before its `window`-th event, so it is full when the timeline is long enough), a new
  draw every epoch: over the epochs every part of a long history is read, with varying offsets.
- `"last"`: one window per user, the newest `window` training events, every epoch: what SASRec+
  trains on (its dataset keeps each user's last 201 events; Klenitskiy & Vasilev, RecSys 2023, code
  `antklen/sasrec-bert4rec-recsys23` `CausalLMDataset`), at our window length.

`recent` > 0 keeps each user's newest `recent` training events only, before any of the above: SASRec+
reads each user's newest 200 (its `max_length`), where stride windows over whole timelines let the
oldest events of the heaviest users fill most of an epoch.

The draws depend only on (seed, step), so a resumed or data-parallel run reads the same windows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch

from training.data import Event, Vocab, encode_events, sliding_windows

__all__ = ["SAMPLINGS", "Sampling", "WindowSampler", "batch_order"]

Sampling = Literal["windows", "users", "last"]
SAMPLINGS: tuple[str, ...] = ("windows", "users", "last")


def batch_order(step: int, num: int, batch_size: int, seed: int) -> list[int]:
    """Indices of `step`: a fresh seeded permutation of `num` per epoch, so resuming replays exactly."""
    per_epoch = max(1, math.ceil(num / batch_size))
    epoch, index = divmod(step, per_epoch)
    perm = torch.randperm(num, generator=torch.Generator().manual_seed(seed + epoch))
    return perm[index * batch_size : (index + 1) * batch_size].tolist()


class WindowSampler:
    """The encoded windows (`encode_events` dicts) of each global training batch."""

    def __init__(
        self, timelines: Mapping[str, Sequence[Event]], vocabs: Mapping[str, Vocab], *, window: int,
        stride: int, sampling: Sampling, batch_size: int, seed: int, recent: int = 0,
    ) -> None:  # fmt: skip
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
        if recent < 0:
            raise ValueError(f"recent must be >= 0, got {recent}")
        if recent:
            timelines = {user: events[-recent:] for user, events in timelines.items()}
        self.sampling, self.window, self.batch_size, self.seed = sampling, window, batch_size, seed
        if sampling == "windows":
            self.items = [
                encode_events(w.events, vocabs)
                for w in sliding_windows(timelines, window=window, stride=stride)
            ]
        else:  # whole timelines, sliced per draw
            self.items = [encode_events(ev, vocabs) for ev in timelines.values() if len(ev) >= 2]
        self.lengths = torch.tensor([len(t["item"]) for t in self.items], dtype=torch.long)

    def __len__(self) -> int:
        """Windows per epoch."""
        return len(self.items)

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(len(self) / self.batch_size))

    def batch(self, step: int) -> list[dict[str, list[Any]]]:
        """The global batch of `step` (before the data-parallel shard)."""
        order = batch_order(step, len(self), self.batch_size, self.seed)
        if self.sampling == "windows":
            return [self.items[i] for i in order]
        ends = self.ends(step // self.steps_per_epoch)
        return [self._slice(i, int(ends[i])) for i in order]

    def ends(self, epoch: int) -> torch.Tensor:
        """(U,) the exclusive end of each user's window in `epoch`."""
        if self.sampling == "last":
            return self.lengths
        low = self.lengths.clamp(max=self.window)  # a full window whenever the timeline allows it
        draw = torch.rand(len(self), generator=torch.Generator().manual_seed(self.seed * 7919 + epoch))
        return low + (draw * (self.lengths - low + 1)).long().clamp(max=self.lengths - low)

    def _slice(self, i: int, end: int) -> dict[str, list[Any]]:
        start = max(0, end - self.window)
        return {name: values[start:end] for name, values in self.items[i].items()}
