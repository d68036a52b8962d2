"""The user side of USER-LLM: user encoder -> Perceiver -> `user_tokens`.

USER-LLM (arXiv 2402.13598) Sec. 3: a pretrained autoregressive user encoder turns a user's event
window into embeddings; a Perceiver compresses them into a fixed number of user tokens (16) that
the LLM reads through cross-attention. `use_perceiver=False` is the paper's ablation that feeds all
(up to `window`) encoder outputs instead.

This is the part the encoder worker runs: it has no LLM, so a worker stays small.

Shapes: B users, T events, Tp cached events, L user tokens, D encoder width, Du user-token width.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from models.perceiver import PerceiverConfig, PerceiverResampler
from models.user_encoder import EncoderState, UserEncoder, UserEncoderConfig


@dataclass(frozen=True)
class UserTowerConfig:
    """User encoder + Perceiver."""

    encoder: UserEncoderConfig = field(default_factory=UserEncoderConfig)  # the causal event encoder
    perceiver: PerceiverConfig = field(default_factory=PerceiverConfig)  # the 16-token compressor
    use_perceiver: bool = True  # False: user_tokens = all encoder outputs (ablation "50 tokens")
    append_last_event: bool = False  # user_tokens += [encoder output at the last event] (the sequence
    # model's own user state: next-event heads read it; UserLLMConfig.head_user_skip uses it)

    def __post_init__(self) -> None:
        if isinstance(self.encoder, Mapping):
            object.__setattr__(self, "encoder", UserEncoderConfig(**self.encoder))
        if isinstance(self.perceiver, Mapping):
            object.__setattr__(self, "perceiver", PerceiverConfig(**self.perceiver))
        if (
            self.append_last_event
            and self.use_perceiver
            and self.perceiver.dim_latent != self.encoder.d_model
        ):
            raise ValueError("append_last_event needs perceiver.dim_latent == encoder.d_model")

    @property
    def dim_user(self) -> int:
        """Du, the width of `user_tokens`."""
        return self.perceiver.dim_latent if self.use_perceiver else self.encoder.d_model

    @property
    def num_user_tokens(self) -> int:
        """L when the Perceiver is used, else the encoder window (tokens are then masked); + 1 with
        `append_last_event`."""
        base = self.perceiver.num_latents if self.use_perceiver else self.encoder.window
        return base + int(self.append_last_event)

    @classmethod
    def tiny(cls, **overrides: Any) -> UserTowerConfig:
        return cls(encoder=UserEncoderConfig.tiny(), perceiver=PerceiverConfig.tiny(), **overrides)


@dataclass(frozen=True)
class UserTokens:
    user_tokens: Tensor  # (B, L, Du)
    user_mask: Tensor  # (B, L) bool, True = token to attend to (all True with the Perceiver)
    past: EncoderState  # encoder state over every event encoded so far


class UserTower(nn.Module):
    """Events -> `user_tokens`, optionally continuing from a cached encoder state."""

    def __init__(self, config: UserTowerConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = UserEncoder(config.encoder)
        self.perceiver = (
            PerceiverResampler(config.perceiver, dim_input=config.encoder.d_model)
            if config.use_perceiver
            else None
        )

    def compress(self, past: EncoderState) -> tuple[Tensor, Tensor]:
        """Encoder outputs of every cached event -> (user_tokens (B, L, Du), user_mask (B, L))."""
        if self.perceiver is None:
            tokens, mask = past.hidden, past.key_mask
        else:
            tokens = self.perceiver(past.hidden, past.key_mask)  # (B, L, Du)
            mask = past.key_mask.new_ones(tokens.shape[:2])
        if self.config.append_last_event:
            slots = torch.arange(past.key_mask.shape[1], device=past.key_mask.device)  # (Tp,)
            last = (past.key_mask * slots).argmax(dim=1)  # (B,) newest real event (cached events first)
            last_hidden = past.hidden[torch.arange(len(last), device=last.device), last]  # (B, D)
            tokens = torch.cat([tokens, last_hidden[:, None]], dim=1)  # (B, L + 1, Du)
            mask = torch.cat([mask, past.key_mask.any(dim=1, keepdim=True)], dim=1)  # (B, L + 1)
        return tokens, mask

    def forward(
        self, features: Mapping[str, Tensor], mask: Tensor, past: EncoderState | None = None
    ) -> UserTokens:
        """Encode events (after `past` when given) and compress the whole history.

        Args:
            features: name -> (B, T) or (B, T, K) long ids (models/features.py).
            mask: (B, T) bool, True = real event.
            past: cached state of the same users, or None.

        Returns:
            UserTokens with user_tokens (B, L, Du), user_mask (B, L) and the new encoder state.
        """
        out = self.encoder(features, mask, past)
        tokens, token_mask = self.compress(out.past)
        return UserTokens(tokens, token_mask, out.past)
