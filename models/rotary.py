"""Rotary position embedding (RoPE) for the user encoder's self-attention.

Su et al., "RoFormer" (2021): queries and keys are rotated by an angle proportional to their
position, so their dot product depends only on the positions' difference. For a recommender this
means attention sees how far back an event is from the one being encoded (recency), whatever the
length of the user's history, unlike learned absolute positions where the newest event sits at a
different index for every history length. Keys are rotated once, by their own absolute position, so
the encoder's key/value cache stays valid when new events append (models/user_encoder.py).

The pairing of dimensions (first half with second half) follows the Llama / transformers
`rotate_half` convention.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["apply_rotary", "rotary_cos_sin"]


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def rotary_cos_sin(
    positions: Tensor, dim: int, dtype: torch.dtype, base: float = 10_000.0
) -> tuple[Tensor, Tensor]:
    """positions (B, T) long -> cos, sin (B, 1, T, dim), computed once per forward for every layer."""
    if dim % 2:
        raise ValueError(f"rotary embedding needs an even head dim, got {dim}")
    inv_freq = base ** (-torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim)
    angles = positions.to(torch.float32)[..., None] * inv_freq  # (B, T, dim/2)
    angles = torch.cat([angles, angles], dim=-1)[:, None]  # (B, 1, T, dim)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x (B, H, T, Dh) rotated by the angles of `rotary_cos_sin` (B, 1, T, Dh)."""
    return x * cos + _rotate_half(x) * sin
