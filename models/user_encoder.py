"""Autoregressive user encoder: a causal Transformer over a user's events, with incremental state.

USER-LLM (Ning, Liu et al., 2024, arXiv 2402.13598): fused event embeddings go through
a causal Transformer (paper: 6 layers, d=128, 4 heads, windows of 50 events), pretrained to
predict every feature of the next event (mean of the per-feature cross-entropies).
Block layout follows nanoGPT `model.py` (pre-norm; models/encoder_block.py).

Incremental encoding: `forward` returns an `EncoderState` (per-layer keys/values, the final
outputs, the key mask and the per-user event count). Passing it back with new events encodes
only the new events and equals a full recompute while the user's events fit in `window`; past
that, `forward` raises ValueError and the caller recomputes over the last `window` events.
Positions come from the mask (count of real events before), so padding never shifts them; they enter
as a learned absolute embedding (the paper's) or as rotary attention (`positions="rotary"`,
models/rotary.py, relative). `tie_item_head` scores next items through the item input embeddings
(models/tied_head.py) and `init_std` gives the GPT-2 / SASRec+ initialisation: the variants of the
recipe `ml-100k-rotary-tied` (training/recipes.py). With N(0, 0.02) weights the early-fusion projection
makes each event vector a product of two small matrices (about 0.02 x 0.02 x sqrt(E) per dimension);
`fusion_init="orthogonal"` starts it semi-orthogonal times sqrt(D) instead, so with those N(0, 0.02)
embeddings the event vectors enter at the scale of SASRec's item embedding times sqrt(D) (Vaswani et
al.'s embedding scale). `seen_bias` adds a learned score to the next-item logits of the items the
prediction's history holds (models/seen_bias.py); `last_item_logits` is the next-item scorer that
applies it.

Shapes: B users, T new events, Tp cached events, D d_model, H heads, Dh head dim, V feature vocab.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.encoder_block import Block
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
from models.rotary import rotary_cos_sin
from models.seen_bias import SeenItemBias, prefix_histories
from models.tied_head import TiedItemHead

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
    tie_item_head: bool = False  # next-item logits through the item input embedding (models/tied_head.py)
    tied_head_init: Literal["std", "orthogonal"] = "std"  # the tied head's projection: initialised like
    # the other weights, or (semi-)orthogonal so its scores start at the scale of SASRec's plain dot product
    fusion_init: Literal["std", "orthogonal"] = "std"  # the early-fusion projection: initialised like the
    # other weights, or (semi-)orthogonal x sqrt(D): with init_std 0.02, event vectors start at SASRec's
    # scale (e_i sqrt(D))
    positions: Literal["learned", "rotary"] = "learned"  # event positions: a learned absolute embedding
    # added to the event vectors (the paper's), or rotary in attention (relative: recency; models/rotary.py)
    init_std: float = 0.0  # > 0: Linear and Embedding weights ~ N(0, init_std), biases 0 (GPT-2 / SASRec+
    # init, 0.02); 0 = PyTorch's default initialisation
    seen_bias: bool = False  # a learned score added to the next-item logits of items already in the
    # history (models/seen_bias.py)
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
        if self.positions not in ("learned", "rotary"):
            raise ValueError(f"positions must be 'learned' or 'rotary', got {self.positions!r}")
        if self.positions == "rotary" and self.head_dim % 2:
            raise ValueError(f"rotary positions need an even head dim, got {self.head_dim}")
        if self.init_std < 0:
            raise ValueError(f"init_std must be >= 0, got {self.init_std}")
        if self.tied_head_init not in ("std", "orthogonal"):
            raise ValueError(f"tied_head_init must be 'std' or 'orthogonal', got {self.tied_head_init!r}")
        if self.tied_head_init == "orthogonal" and not self.tie_item_head:
            raise ValueError("tied_head_init='orthogonal' needs tie_item_head=True")
        if self.fusion_init not in ("std", "orthogonal"):
            raise ValueError(f"fusion_init must be 'std' or 'orthogonal', got {self.fusion_init!r}")
        if self.fusion_init == "orthogonal" and self.fusion != "early":
            raise ValueError("fusion_init='orthogonal' needs fusion='early'")
        if (self.tie_item_head or self.seen_bias) and not any(f.name == "item" for f in self.features):
            raise ValueError("tie_item_head and seen_bias need an 'item' feature")

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


# --- encoder ---


class UserEncoder(nn.Module):
    """Causal Transformer over events, with next-event heads for self-supervised pretraining."""

    def __init__(self, config: UserEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = EventEmbedding(config.embedding)
        self.pos_emb = nn.Embedding(config.window, config.d_model) if config.positions == "learned" else None
        self.drop = nn.Dropout(config.dropout)
        c = config
        block = dict(dim=c.d_model, heads=c.n_heads, mlp_ratio=c.mlp_ratio, dropout=c.dropout)
        self.blocks = nn.ModuleList(Block(**block) for _ in range(c.n_layers))
        self.norm = nn.LayerNorm(config.d_model)
        self.heads = nn.ModuleDict({f.name: nn.Linear(config.d_model, f.vocab_size) for f in config.features})
        if config.tie_item_head:
            self.heads["item"] = TiedItemHead(self.embed.embeddings["item"].embed, config.d_model)
        self.seen_bias = SeenItemBias() if config.seen_bias else None
        if config.init_std > 0:
            self.apply(self._init_weights)
        if config.tied_head_init == "orthogonal":
            nn.init.orthogonal_(self.heads["item"].proj.weight)
        if config.fusion_init == "orthogonal":  # event vectors at the scale of SASRec's e_i * sqrt(D)
            nn.init.orthogonal_(self.embed.proj.weight, gain=config.d_model**0.5)

    def _init_weights(self, module: nn.Module) -> None:
        """GPT-2 style (also SASRec+'s): N(0, init_std) weights, zero biases and padding rows."""
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=self.config.init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()

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
        x = self.embed(features)  # (B, T, D)
        rope = None
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions)
        else:
            rope = rotary_cos_sin(positions, self.config.head_dim, x.dtype)  # (B, 1, T, Dh) each
        x = self.drop(x)
        key_mask = mask if past is None else torch.cat([past.key_mask, mask], dim=1)  # (B, Tp + T)
        # Without a cache and with right padding, causality alone keeps every padding key away from
        # every real event: attention then runs unmasked, on SDPA's fused causal kernel (pretraining's
        # case; the outputs at padding differ and are zeroed below).
        right_padded = past is None and not bool((mask[:, 1:] & ~mask[:, :-1]).any())
        attend = None if right_padded else key_mask
        keys, values = [], []
        for i, block in enumerate(self.blocks):
            past_kv = (past.keys[i], past.values[i]) if past is not None else (None, None)
            x, k, v = block(x, attend, *past_kv, rope)
            keys.append(k)
            values.append(v)
        hidden = self.norm(x) * mask[..., None].to(x.dtype)  # (B, T, D)
        all_hidden = hidden if past is None else torch.cat([past.hidden, hidden], dim=1)  # (B, Tp + T, D)
        state = EncoderState(tuple(keys), tuple(values), all_hidden, key_mask, n_total)
        return EncoderOutput(hidden=hidden, past=state)

    def next_event_logits(self, hidden: Tensor) -> dict[str, Tensor]:
        """hidden (B, T, D) -> name -> (B, T, V) logits for the features of event t + 1, without the seen
        bias (it needs the history: `last_item_logits`, `item_logits`)."""
        return {name: head(hidden) for name, head in self.heads.items()}

    def item_logits(self, hidden: Tensor, history: Tensor) -> Tensor:
        """hidden (N, D) and the item ids each prediction has read (N, T), 0 = padding -> (N, V) next-item
        logits, with the seen bias when the encoder has one."""
        logits = self.heads["item"](hidden)
        return logits if self.seen_bias is None else self.seen_bias(logits, history)

    def last_item_logits(
        self, features: Mapping[str, Tensor], mask: Tensor, history: Tensor | None = None
    ) -> Tensor:
        """Next-item logits (B, V) after each row's newest real event (right padding): the scorer of the
        sequence-only baseline and of the distillation teacher. `history` (B, T') are the item ids the
        seen bias marks (0 = padding), by default the encoded events; a caller that has the user's whole
        history passes it, so items older than the window count as seen too."""
        hidden = self(features, mask).hidden  # (B, T, D)
        last = hidden[torch.arange(mask.shape[0], device=mask.device), mask.sum(dim=1) - 1]  # (B, D)
        return self.item_logits(last, features["item"] * mask if history is None else history.to(mask.device))

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
        valid = mask[:, :-1] & mask[:, 1:]  # (B, T - 1): event t and its successor are real
        hidden = self(features, mask).hidden[:, :-1][valid]  # (N, D): only predicted events hit the heads
        losses = {}
        for f in self.config.features:
            target = features[f.name][:, 1:][valid]  # (N,) or (N, K)
            if f.name == "item" and self.seen_bias is not None:
                logits = self.item_logits(hidden, prefix_histories(features["item"] * mask, valid))
            else:
                logits = self.heads[f.name](hidden)
            logp = logits.float().log_softmax(dim=-1)  # (N, V)
            if f.multi_valued:
                soft = torch.zeros_like(logp).scatter_(-1, target, 1.0)  # (N, V)
                soft[..., 0] = 0.0
                count = soft.sum(dim=-1)  # (N,)
                ok = count > 0
                per_event = -(soft * logp).sum(dim=-1) / count.clamp(min=1)
            else:
                ok = target != 0
                per_event = F.nll_loss(logp, target, reduction="none")  # (N,)
            predicted = ok.sum()
            losses[f.name] = ((per_event * ok).sum() / predicted.clamp(min=1), predicted)
        return losses

    def pretrain_loss(
        self, features: Mapping[str, Tensor], mask: Tensor, *, side_weight: float = 1.0
    ) -> Tensor:
        """Weighted mean over features of the next-event cross-entropies (a scalar); see `feature_weights`."""
        losses = self.pretrain_losses(features, mask)
        weights = self.feature_weights(side_weight).to(mask.device)
        return (torch.stack(list(losses.values())) * weights).sum()

    def feature_weights(self, side_weight: float = 1.0) -> Tensor:
        """(F,) weights of the per-feature losses, in `config.features` order, summing to 1: the item
        loss weighs 1 and every side feature (category, rating, ...) `side_weight`. 1 = the paper's plain
        mean; 0 = the item loss alone (SASRec-style next-item training)."""
        if side_weight < 0:
            raise ValueError(f"side_weight must be >= 0, got {side_weight}")
        raw = torch.tensor([1.0 if f.name == "item" else side_weight for f in self.config.features])
        if float(raw.sum()) == 0:
            raise ValueError("side_weight 0 leaves no loss: the encoder has no item feature")
        return raw / raw.sum()
