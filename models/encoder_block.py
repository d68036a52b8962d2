"""The user encoder's Transformer block: pre-norm causal self-attention and MLP, with a key/value cache.

Layout of nanoGPT `model.py` (pre-norm, GELU MLP); attention runs on SDPA's causal kernel when no key
needs masking (no cache, right padding), else through models/attention.py with the key mask. Rotary
positions (models/rotary.py) rotate queries and keys; keys are cached rotated.

Shapes: B users, T new events, Tp cached events, D width, H heads, Dh head dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.attention import attention
from models.rotary import apply_rotary

__all__ = ["Block", "SelfAttention"]


class SelfAttention(nn.Module):
    """Causal multi-head self-attention over new events, after the cached keys and values."""

    def __init__(self, *, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(dim, dim) for _ in range(3))
        self.o_proj = nn.Linear(dim, dim)

    def forward(
        self, x: Tensor, key_mask: Tensor | None, past_k: Tensor | None, past_v: Tensor | None,
        rope: tuple[Tensor, Tensor] | None,
    ) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
        """x (B, T, D), key_mask (B, Tp + T) or None (no padding key is visible to a real event), rope
        the new events' rotary (cos, sin) or None -> out (B, T, D), k and v (B, H, Tp + T, Dh); keys are
        cached already rotated."""
        b, t, d = x.shape
        q, k, v = (
            p(x).view(b, t, self.heads, d // self.heads).transpose(1, 2)
            for p in (self.q_proj, self.k_proj, self.v_proj)
        )  # (B, H, T, Dh)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if past_k is not None and past_v is not None:
            k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)  # (B, H, Tp + T, Dh)
        p = self.dropout if self.training else 0.0
        if key_mask is None:  # no cache, right padding: causality alone hides the padding (see forward)
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)  # (B, H, T, Dh)
        else:
            out = attention(q, k, v, key_mask=key_mask, causal=True, dropout_p=p)  # (B, H, T, Dh)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, d)), k, v  # (B, T, D)


class Block(nn.Module):
    """Pre-norm Transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, *, dim: int, heads: int, mlp_ratio: int, dropout: float) -> None:
        super().__init__()
        self.attn_norm, self.mlp_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = SelfAttention(dim=dim, heads=heads, dropout=dropout)
        hidden = mlp_ratio * dim
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop = nn.Dropout(dropout)

    def forward(
        self, x: Tensor, key_mask: Tensor | None, past_k: Tensor | None, past_v: Tensor | None,
        rope: tuple[Tensor, Tensor] | None,
    ) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
        a, k, v = self.attn(self.attn_norm(x), key_mask, past_k, past_v, rope)
        x = x + self.drop(a)
        return x + self.drop(self.mlp(self.mlp_norm(x))), k, v  # (B, T, D)
