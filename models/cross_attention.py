"""Gated cross-attention from text hidden states to user tokens (Flamingo-style, zero-init tanh gates).

References: Alayrac et al. 2022, "Flamingo" (gated xattn-dense); lucidrains flamingo-pytorch
`GatedCrossAttentionBlock`; open_flamingo `src/helpers.py`; USER-LLM (arXiv 2402.13598) section 3.
Differences: keys/values are split out into `context_kv` so a server computes them once per sequence
and reuses them at every decode step; every text position attends to all user tokens (no media
positions); a row whose user has no tokens gets exactly zero contribution (attention AND FFN).

Shapes: B batch, S text tokens, L user tokens, D model dim (Dl), Du user-token dim,
H heads, Dh head dim.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.attention import attention

__all__ = ["GatedCrossAttentionBlock"]


class GatedCrossAttentionBlock(nn.Module):
    """x -> x + tanh(attn_gate) * xattn(norm(x), user_tokens); x -> x + tanh(ff_gate) * mlp(x).

    Both gates start at zero, so a fresh block is the identity.
    """

    def __init__(self, *, dim: int, dim_context: int, heads: int, dim_head: int, ff_mult: int = 4) -> None:
        super().__init__()
        if min(dim, dim_context, heads, dim_head, ff_mult) <= 0:
            raise ValueError("dim, dim_context, heads, dim_head and ff_mult must be positive")
        self.heads = heads
        self.dim_head = dim_head
        inner = heads * dim_head
        self.norm = nn.LayerNorm(dim)
        self.q_proj = nn.Linear(dim, inner, bias=False)
        self.k_proj = nn.Linear(dim_context, inner, bias=False)
        self.v_proj = nn.Linear(dim_context, inner, bias=False)
        self.o_proj = nn.Linear(inner, dim, bias=False)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.mlp = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, dim * ff_mult, bias=False),
            nn.GELU(),
            nn.Linear(dim * ff_mult, dim, bias=False),
        )
        self.ff_gate = nn.Parameter(torch.zeros(1))

    def context_kv(self, user_tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Project the user tokens to keys and values, once per sequence.

        Args:
            user_tokens: (B, L, Du).

        Returns:
            (k, v), each (B, H, L, Dh).
        """
        b, n, _ = user_tokens.shape
        k = self.k_proj(user_tokens).view(b, n, self.heads, self.dim_head).transpose(1, 2)  # (B, H, L, Dh)
        v = self.v_proj(user_tokens).view(b, n, self.heads, self.dim_head).transpose(1, 2)  # (B, H, L, Dh)
        return k, v

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor], kv_mask: Tensor | None = None) -> Tensor:
        """Add the gated cross-attention and gated FFN residuals to the text hidden states.

        Args:
            x: (B, S, D) text hidden states.
            kv: (k, v) from `context_kv`, each (B, H, L, Dh).
            kv_mask: (B, L) bool, True = real user token; None = all real.

        Returns:
            (B, S, D). Rows whose `kv_mask` is all False are returned unchanged.
        """
        b, s, _ = x.shape
        k, v = kv
        q = self.q_proj(self.norm(x)).view(b, s, self.heads, self.dim_head).transpose(1, 2)  # (B, H, S, Dh)
        out = attention(q, k, v, key_mask=kv_mask)  # (B, H, S, Dh); no-token rows are zeros
        out = out.transpose(1, 2).reshape(b, s, self.heads * self.dim_head)  # (B, S, H*Dh)
        x = x + self.attn_gate.tanh() * self.o_proj(out)
        ff = self.ff_gate.tanh() * self.mlp(x)  # (B, S, D)
        if kv_mask is not None:
            has_user = kv_mask.any(dim=-1).to(ff.dtype)[:, None, None]  # (B, 1, 1)
            ff = ff * has_user
        return x + ff
