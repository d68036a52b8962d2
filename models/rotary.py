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

__all__ = ["apply_rotary"]


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rotary(x: Tensor, positions: Tensor, base: float = 10_000.0) -> Tensor:
    """x (B, H, T, Dh) rotated by positions (B, T) long; Dh must be even."""
    dim = x.shape[-1]
    if dim % 2:
        raise ValueError(f"rotary embedding needs an even head dim, got {dim}")
    inv_freq = base ** (-torch.arange(0, dim, 2, device=x.device, dtype=torch.float32) / dim)  # (Dh/2,)
    angles = positions.to(torch.float32)[..., None] * inv_freq  # (B, T, Dh/2)
    angles = torch.cat([angles, angles], dim=-1)[:, None]  # (B, 1, T, Dh)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    return x * cos + _rotate_half(x) * sin
