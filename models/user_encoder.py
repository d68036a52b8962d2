"""Autoregressive user encoder: a causal Transformer over a user's events, with incremental state.

USER-LLM (Ning, Liu et al., 2024, arXiv 2402.13598): fused event embeddings go through
a causal Transformer (paper: 6 layers, d=128, 4 heads, windows of 50 events), pretrained to
predict every feature of the next event (mean of the per-feature cross-entropies).
Block layout follows nanoGPT `model.py` (pre-norm, learned absolute positions).

Incremental encoding: `forward` returns an `EncoderState` (per-layer keys/values, the final
outputs, the key mask and the per-user event count). Passing it back with new events encodes
only the new events and equals a full recompute while the user's events fit in `window`; past
that, `forward` raises ValueError and the caller recomputes over the last `window` events.
Positions come from the mask (count of real events before), so padding never shifts them.

Shapes: B users, T new events, Tp cached events, D d_model, H heads, Dh head dim, V feature vocab.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.attention import attention
from models.encoder_state import EncoderOutput, EncoderState, past_from_tensor, past_to_tensor
from models.event_embedding import (
    EventEmbedding,
    EventEmbeddingConfig,
    FeatureConfig,
    Fusion,
    coerce_features,
    default_features,
    tiny_features,
)

__all__ = [
    "EncoderOutput",
    "EncoderState",
    "UserEncoder",
    "UserEncoderConfig",
    "past_from_tensor",
    "past_to_tensor",
]


@dataclass(frozen=True)
class UserEncoderConfig:
    """Autoregressive user encoder (defaults: the paper's)."""

    features: tuple[FeatureConfig, ...] = field(default_factory=default_features)  # event features
    fusion: Fusion = "early"  # event feature fusion, see models/event_embedding.py
    d_model: int = 128  # width D
    n_layers: int = 6  # Transformer blocks
    n_heads: int = 4  # attention heads H
    window: int = 50  # max events per user (learned positions)
    mlp_ratio: int = 4  # MLP hidden width = mlp_ratio * D
    dropout: float = 0.1  # embedding, attention and residual dropout

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", coerce_features(self.features))
        if self.d_model % self.n_heads != 0:
            raise ValueError(f"d_model {self.d_model} must be divisible by n_heads {self.n_heads}")
        if min(self.n_layers, self.n_heads, self.window, self.mlp_ratio) < 1:
            raise ValueError("n_layers, n_heads, window and mlp_ratio must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        _ = self.embedding  # validates features and fusion

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def embedding(self) -> EventEmbeddingConfig:
        return EventEmbeddingConfig(features=self.features, d_model=self.d_model, fusion=self.fusion)

    @classmethod
    def tiny(cls, **overrides: Any) -> UserEncoderConfig:
        base = dict(features=tiny_features(), d_model=32, n_layers=2, n_heads=4, window=16, dropout=0.0)
        return cls(**(base | overrides))


# --- blocks ---


class SelfAttention(nn.Module):
    def __init__(self, *, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(dim, dim) for _ in range(3))
        self.o_proj = nn.Linear(dim, dim)

    def forward(
        self, x: Tensor, key_mask: Tensor, past_k: Tensor | None, past_v: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, T, D), key_mask (B, Tp + T) -> out (B, T, D), k and v (B, H, Tp + T, Dh)."""
        b, t, d = x.shape
        q, k, v = (
            p(x).view(b, t, self.heads, d // self.heads).transpose(1, 2)
            for p in (self.q_proj, self.k_proj, self.v_proj)
        )  # (B, H, T, Dh)
        if past_k is not None and past_v is not None:
            k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)  # (B, H, Tp + T, Dh)
        p = self.dropout if self.training else 0.0
        out = attention(q, k, v, key_mask=key_mask, causal=True, dropout_p=p)  # (B, H, T, Dh)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, d)), k, v  # (B, T, D)


class Block(nn.Module):
    def __init__(self, config: UserEncoderConfig) -> None:
        super().__init__()
        d = config.d_model
        self.attn_norm, self.mlp_norm = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = SelfAttention(dim=d, heads=config.n_heads, dropout=config.dropout)
        h = config.mlp_ratio * d
        self.mlp = nn.Sequential(nn.Linear(d, h), nn.GELU(), nn.Linear(h, d))
        self.drop = nn.Dropout(config.dropout)

    def forward(
        self, x: Tensor, key_mask: Tensor, past_k: Tensor | None, past_v: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        a, k, v = self.attn(self.attn_norm(x), key_mask, past_k, past_v)
        x = x + self.drop(a)
        return x + self.drop(self.mlp(self.mlp_norm(x))), k, v  # (B, T, D)


# --- encoder ---


class UserEncoder(nn.Module):
    """Causal Transformer over events, with next-event heads for self-supervised pretraining."""

    def __init__(self, config: UserEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = EventEmbedding(config.embedding)
        self.pos_emb = nn.Embedding(config.window, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(config.d_model)
        self.heads = nn.ModuleDict({f.name: nn.Linear(config.d_model, f.vocab_size) for f in config.features})

    def forward(
        self, features: Mapping[str, Tensor], mask: Tensor, past: EncoderState | None = None
    ) -> EncoderOutput:
        """Encode new events, optionally after a user's cached state.

        Args:
            features: name -> (B, T) or (B, T, K) long ids, 0 = padding (see models/features.py).
            mask: (B, T) bool, True = real event (right padding by convention).
            past: state returned by an earlier call for the same B users, or None.

        Returns:
            EncoderOutput: hidden (B, T, D) for the new events (zeros at padding) and past, the
            state over cached + new events (`past.hidden`, `past.key_mask` feed the Perceiver).

        Raises:
            ValueError: a user's total real events would exceed `config.window`.
        """
        if mask.dtype != torch.bool or mask.dim() != 2:
            raise ValueError(f"mask must be bool (B, T), got {mask.dtype} {tuple(mask.shape)}")
        zeros = mask.new_zeros(mask.shape[0], dtype=torch.long)
        n_past = zeros if past is None else past.n_events  # (B,)
        n_total = n_past + mask.sum(dim=1)  # (B,)
        if int(n_total.max()) > self.config.window:
            raise ValueError(
                f"{int(n_total.max())} events exceed the encoder window {self.config.window}; "
                "recompute from scratch over the last `window` events"
            )
        seen = n_past[:, None] + mask.long().cumsum(dim=1)  # (B, T) real events up to and including t
        positions = (seen - 1).clamp(0, self.config.window - 1)  # (B, T)
        x = self.drop(self.embed(features) + self.pos_emb(positions))  # (B, T, D)
        key_mask = mask if past is None else torch.cat([past.key_mask, mask], dim=1)  # (B, Tp + T)
        keys, values = [], []
        for i, block in enumerate(self.blocks):
            past_kv = (past.keys[i], past.values[i]) if past is not None else (None, None)
            x, k, v = block(x, key_mask, *past_kv)
            keys.append(k)
            values.append(v)
        hidden = self.norm(x) * mask[..., None].to(x.dtype)  # (B, T, D)
        all_hidden = hidden if past is None else torch.cat([past.hidden, hidden], dim=1)  # (B, Tp + T, D)
        state = EncoderState(tuple(keys), tuple(values), all_hidden, key_mask, n_total)
        return EncoderOutput(hidden=hidden, past=state)

    def next_event_logits(self, hidden: Tensor) -> dict[str, Tensor]:
        """hidden (B, T, D) -> name -> (B, T, V) logits for the features of event t + 1."""
        return {name: head(hidden) for name, head in self.heads.items()}

    def pretrain_losses(self, features: Mapping[str, Tensor], mask: Tensor) -> dict[str, Tensor]:
        """Per-feature next-event cross-entropy (predict event t + 1 from hidden t), padding ignored.

        Multi-valued targets are soft labels, uniform over the event's distinct non-padding ids.
        """
        return {name: loss for name, (loss, _) in self.pretrain_loss_terms(features, mask).items()}

    def pretrain_loss_terms(
        self, features: Mapping[str, Tensor], mask: Tensor
    ) -> dict[str, tuple[Tensor, Tensor]]:
        """Per feature: (mean next-event cross-entropy, number of predicted events it averages).

        The counts let a data-parallel trainer weight each process's part of a batch by the events
        it predicts; a feature with no target in the batch has loss 0.
        """
        hidden = self(features, mask).hidden[:, :-1]  # (B, T - 1, D)
        valid = mask[:, :-1] & mask[:, 1:]  # (B, T - 1)
        losses = {}
        for f in self.config.features:
            target = features[f.name][:, 1:]  # (B, T - 1) or (B, T - 1, K)
            logp = self.heads[f.name](hidden).float().log_softmax(dim=-1)  # (B, T - 1, V)
            if f.multi_valued:
                soft = torch.zeros_like(logp).scatter_(-1, target, 1.0)  # (B, T - 1, V)
                soft[..., 0] = 0.0
                count = soft.sum(dim=-1)  # (B, T - 1)
                ok = valid & (count > 0)
                per_event = -(soft * logp).sum(dim=-1) / count.clamp(min=1)
            else:
                ok = valid & (target != 0)
                per_event = F.nll_loss(logp.transpose(1, 2), target, reduction="none")  # (B, T - 1)
            predicted = ok.sum()
            losses[f.name] = ((per_event * ok).sum() / predicted.clamp(min=1), predicted)
        return losses

    def pretrain_loss(self, features: Mapping[str, Tensor], mask: Tensor) -> Tensor:
        """Mean over features of the next-event cross-entropies (a scalar)."""
        return torch.stack(list(self.pretrain_losses(features, mask).values())).mean()
