"""An exponential moving average of the trained parameters (EMA weights), validated and saved in place
of the raw weights.

W_ema <- decay * W_ema + (1 - decay) * W after every optimiser step, starting from the initial weights.
Validation and the best checkpoint use W_ema: `swapped()` puts the averages into the model and the raw
weights back on exit, so the trainers' validate and save functions run unchanged and the checkpoint
format is the same. The averages ride in the trainer state, so `--resume` continues them.

The update is torch's own (`torch.optim.swa_utils.get_ema_multi_avg_fn`, a foreach lerp); the class
keeps it beside the live model instead of in a deep copy (`AveragedModel`), because the trainers
validate and save through closures over the model. Followed: the PyTorch docs "Stochastic Weight
Averaging" (swa_utils, "Taking care of batch normalization" does not apply: no batch norm here).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import get_ema_multi_avg_fn

__all__ = ["WeightAverage"]


class WeightAverage:
    """EMA copies of `params` (the parameters the optimiser steps), updated by `update()`."""

    def __init__(self, params: Sequence[nn.Parameter], decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.params = list(params)
        self.decay = decay
        self.averages = [p.detach().clone() for p in self.params]
        self._update = get_ema_multi_avg_fn(decay)

    @torch.no_grad()
    def update(self) -> None:
        """Fold the current parameter values into the averages (after an optimiser step)."""
        self._update(self.averages, [p.detach() for p in self.params], None)

    @contextmanager
    def swapped(self) -> Iterator[None]:
        """Inside the block the parameters hold the averages; on exit, the raw weights again."""
        raw = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, a in zip(self.params, self.averages, strict=True):
                p.copy_(a)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, r in zip(self.params, raw, strict=True):
                    p.copy_(r)

    def state_dict(self) -> dict[str, object]:
        return {"decay": self.decay, "averages": [a.cpu() for a in self.averages]}

    def load_state_dict(self, state: dict[str, object]) -> None:
        averages: list[Tensor] = state["averages"]  # type: ignore[assignment]
        if len(averages) != len(self.params) or any(
            a.shape != p.shape for a, p in zip(averages, self.params, strict=True)
        ):
            raise ValueError("the trainer state's EMA weights do not match the model's parameters")
        self.averages = [a.to(p.device, p.dtype) for a, p in zip(averages, self.params, strict=True)]
