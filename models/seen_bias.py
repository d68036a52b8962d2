"""A learned score for items the user already has in the history (repeat-aware next-item scores).

Next-item logits over the whole catalogue rank items the history contains as well as new ones. Where
people do not consume an item twice (MovieLens: one rating per film) a full ranking should put them
last; where they do (re-purchases, replays) it should not. Instead of a fixed rule the encoder learns
one scalar b, added to the logit of every item that occurs in the events the prediction reads:

    logits'[i] = logits[i] + b * [i in history]

Trained with the next-item cross-entropy, b goes negative when repeats are rare (every seen item in
the softmax's denominator pushes it down, a repeated target pulls it up), like the repetition-aware
scores of RepeatNet (Ren et al., AAAI 2019), reduced to its simplest form. b starts at 0: the scores
equal the plain head's until training moves it. b = STEP_SCALE * p for a parameter p: Adam moves every
parameter by about the learning rate a step, too slow for one scalar that must reach the logits' scale
(several units); the scale gives it STEP_SCALE times the step (0.05 a step at lr 1e-3).

Shapes: N predictions, T history events, V item vocabulary (0 = padding, never marked as seen).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["STEP_SCALE", "SeenItemBias", "prefix_histories"]

STEP_SCALE = 50.0


def prefix_histories(items: Tensor, predicted: Tensor) -> Tensor:
    """The history each next-event prediction reads: items (B, T) and predicted (B, T - 1) bool (event
    t predicts t + 1) -> (N, T) ids, row n = the items at positions <= t of the n-th prediction, 0 after."""
    steps = items.shape[1]
    upto = torch.ones(steps - 1, steps, dtype=torch.bool, device=items.device).tril()  # (T - 1, T)
    expanded = items[:, None, :].expand(-1, steps - 1, -1)  # (B, T - 1, T)
    return expanded.masked_fill(~upto, 0)[predicted]  # (N, T)


class SeenItemBias(nn.Module):
    """logits (N, V), history (N, T) -> logits + b * seen(history); b is one learned scalar."""

    def __init__(self) -> None:
        super().__init__()
        self.raw = nn.Parameter(torch.zeros(()))

    @property
    def bias(self) -> Tensor:
        """b, the score added to a seen item's logit."""
        return self.raw * STEP_SCALE

    def forward(self, logits: Tensor, history: Tensor) -> Tensor:
        """Adds b once at every distinct id of each history row (0 = padding, never): the ids are sorted
        and repeats set to 0, then b is scatter-added, so only (N, T) values move, not an (N, V) mask."""
        ids = history.clamp(0, logits.shape[-1] - 1).sort(dim=1).values  # (N, T)
        repeat = torch.zeros_like(ids, dtype=torch.bool)
        repeat[:, 1:] = ids[:, 1:] == ids[:, :-1]
        ids = ids.masked_fill(repeat, 0)
        bump = (ids != 0).to(logits.dtype) * self.bias.to(logits.dtype)  # (N, T)
        return logits.scatter_add(1, ids, bump)
