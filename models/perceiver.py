"""Perceiver resampler: compress a user's encoder outputs into a fixed number of `user_tokens`.

USER-LLM (Ning, Liu et al., 2024, arXiv 2402.13598): a Perceiver with 16 learnable
latent queries compresses the user encoder outputs (50 events -> 16 user tokens) before the
LLM cross-attends to them. Based on lucidrains flamingo-pytorch `PerceiverResampler` /
perceiver-pytorch (Jaegle et al., 2021; Alayrac et al., 2022), with SDPA and a boolean key
padding mask instead of einsum + softmax: padding events never influence the output.

Per layer: latents cross-attend to [events; latents] (keys include the latents when
`latents_attend_to_self`, Flamingo's way of adding latent self-attention), then a feed-forward;
both residual, pre-norm. A final LayerNorm gives the user tokens.

Shapes: B batch, T events, Din input (encoder) dim, L latents (16), Du latent dim, H heads, Dh head dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from models.attention import attention

__all__ = ["PerceiverAttention", "PerceiverConfig", "PerceiverResampler"]


@dataclass(frozen=True)
class PerceiverConfig:
    """Perceiver resampler producing `num_latents` user tokens of width `dim_latent`."""

    num_latents: int = 16  # L, number of user tokens (paper: 16)
    dim_latent: int = 128  # Du, width of the latents / user tokens
    depth: int = 2  # number of (attention, feed-forward) layers
    heads: int = 4  # attention heads H
    dim_head: int = 32  # per-head width Dh
    ff_mult: int = 4  # feed-forward hidden width = ff_mult * Du
    latents_attend_to_self: bool = True  # keys/values = [events; latents] (Flamingo) vs events only
    recency_positions: int = 0  # > 0: add a learned embedding of each event's age (0 = the newest,
    # capped at recency_positions - 1) to the inputs, like Flamingo's media time embeddings; 0 = none

    def __post_init__(self) -> None:
        for name in ("num_latents", "dim_latent", "depth", "heads", "dim_head", "ff_mult"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.recency_positions < 0:
            raise ValueError(f"recency_positions must be >= 0, got {self.recency_positions}")

    @property
    def inner_dim(self) -> int:
        """Attention width H * Dh."""
        return self.heads * self.dim_head

    @classmethod
    def tiny(cls) -> PerceiverConfig:
        return cls(num_latents=16, dim_latent=32, depth=2, heads=4, dim_head=8, ff_mult=2)


# --- layers ---


class PerceiverAttention(nn.Module):
    """Latents attend to the (masked) inputs and, optionally, to themselves."""

    def __init__(self, *, dim: int, heads: int, dim_head: int, attend_to_self: bool = True) -> None:
        super().__init__()
        self.heads, self.dim_head, self.attend_to_self = heads, dim_head, attend_to_self
        inner = heads * dim_head
        self.norm_context, self.norm_latents = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q_proj = nn.Linear(dim, inner, bias=False)
        self.k_proj = nn.Linear(dim, inner, bias=False)
        self.v_proj = nn.Linear(dim, inner, bias=False)
        self.o_proj = nn.Linear(inner, dim, bias=False)

    def forward(self, x: Tensor, latents: Tensor, mask: Tensor) -> Tensor:
        """x (B, T, Du), latents (B, L, Du), mask (B, T) bool -> (B, L, Du) update."""
        b, n_lat, _ = latents.shape
        x, latents = self.norm_context(x), self.norm_latents(latents)
        context, key_mask = x, mask  # (B, T, Du), (B, T)
        if self.attend_to_self:
            context = torch.cat([x, latents], dim=1)  # (B, T + L, Du)
            key_mask = torch.cat([mask, mask.new_ones(b, n_lat)], dim=1)  # (B, T + L)

        def heads(t: Tensor) -> Tensor:
            return t.view(b, t.shape[1], self.heads, self.dim_head).transpose(1, 2)  # (B, H, S, Dh)

        q = heads(self.q_proj(latents))  # (B, H, L, Dh)
        k, v = heads(self.k_proj(context)), heads(self.v_proj(context))  # (B, H, T (+ L), Dh)
        out = attention(q, k, v, key_mask=key_mask)  # (B, H, L, Dh); zeros if a user has no keys
        return self.o_proj(out.transpose(1, 2).reshape(b, n_lat, -1))  # (B, L, Du)


class FeedForward(nn.Module):
    def __init__(self, *, dim: int, mult: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, dim * mult, bias=False), nn.GELU(), nn.Linear(dim * mult, dim, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(self.norm(x))  # (B, L, Du)


# --- resampler ---


class PerceiverResampler(nn.Module):
    """Learnable latents compress encoder outputs into `user_tokens` (B, L, Du)."""

    def __init__(self, config: PerceiverConfig, *, dim_input: int | None = None) -> None:
        super().__init__()
        self.config = config
        dim = config.dim_latent
        dim_input = dim if dim_input is None else dim_input
        self.proj_in: nn.Module = nn.Identity() if dim_input == dim else nn.Linear(dim_input, dim)
        self.latents = nn.Parameter(torch.randn(config.num_latents, dim))  # (L, Du)
        self.recency_emb: nn.Embedding | None = None
        if config.recency_positions:
            self.recency_emb = nn.Embedding(config.recency_positions, dim)  # (P, Du)
            nn.init.normal_(self.recency_emb.weight, std=0.1)
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    PerceiverAttention(
                        dim=dim,
                        heads=config.heads,
                        dim_head=config.dim_head,
                        attend_to_self=config.latents_attend_to_self,
                    ),
                    FeedForward(dim=dim, mult=config.ff_mult),
                ]
            )
            for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Compress a batch of event sequences.

        Args:
            x: (B, T, Din) user encoder outputs.
            mask: (B, T) bool, True = real event; None = all real. Padding events change nothing.

        Returns:
            user_tokens: (B, L, Du).
        """
        b, t, _ = x.shape
        if mask is None:
            mask = torch.ones(b, t, dtype=torch.bool, device=x.device)
        if mask.dtype != torch.bool or mask.shape != (b, t):
            raise ValueError(f"mask must be bool ({b}, {t}), got {mask.dtype} {tuple(mask.shape)}")
        x = self.proj_in(x)  # (B, T, Du)
        if self.recency_emb is not None:
            newer = mask.flip(1).long().cumsum(1).flip(1) - 1  # (B, T) real events after t (holes allowed)
            age = newer.clamp(0, self.config.recency_positions - 1)
            x = x + self.recency_emb(age) * mask[..., None].to(x.dtype)  # (B, T, Du)
        latents = self.latents.unsqueeze(0).expand(b, -1, -1)  # (B, L, Du)
        for attn, ff in self.layers:  # type: ignore[misc]
            latents = latents + attn(x, latents, mask)
            latents = latents + ff(latents)
        return self.norm(latents)  # (B, L, Du)
