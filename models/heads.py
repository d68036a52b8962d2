"""Task heads on the LLM's last hidden state: next-item scores and favourite-category scores.

References: USER-LLM (arXiv 2402.13598) section 4 tasks (next-item prediction, favourite genre /
category); HF `LlamaForSequenceClassification` (score from the last non-pad token).

Shapes: B batch, S text tokens, Dl LLM hidden dim, De output-embedding dim, I catalogue items, C categories.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["CategoryHead", "NextItemHead", "gather_last_hidden", "last_token_index"]


# --- helpers ---


def last_token_index(attention_mask: Tensor) -> Tensor:
    """Index of the last real token of each row; works for left and right padding.

    Args:
        attention_mask: (B, S), 1/True = real token.

    Returns:
        (B,) long. A row without real tokens gets S - 1.
    """
    mask = attention_mask.bool()
    seq_len = mask.shape[1]
    return seq_len - 1 - mask.flip(-1).long().argmax(dim=-1)  # first True from the right


def gather_last_hidden(hidden_states: Tensor, attention_mask: Tensor) -> Tensor:
    """Hidden state at the last real position: (B, S, Dl), (B, S) -> (B, Dl)."""
    index = last_token_index(attention_mask).to(hidden_states.device)  # (B,)
    return hidden_states[torch.arange(hidden_states.shape[0], device=hidden_states.device), index]


# --- heads ---


class _LastTokenHead(nn.Module):
    """Logits from the last real position's hidden state h.

    Options (all off by default, which is a plain `Linear(Dl, N)` on h):
      - `dim_embed` > 0: factorised scores `proj(in_proj(h))`, with `proj` an (N, De) output embedding
        that fine-tuning initialises from the pretrained user encoder's next-event head, so the LLM only
        has to map its state into the encoder's space (the usual tied item embeddings of sequential
        recommenders, e.g. SASRec, rather than a fresh N x Dl matrix learnt from one target per prompt);
      - `center`: h minus a stored reference (the bare backbone's state on the same prompt, set by
        fine-tuning): the head sees only what the user context changed, so a cold-start user scores
        exactly the bias and Adam's steps scale with the user-dependent part of h, not with the
        prompt's large constant channels;
      - `dim_user` > 0: a linear read-out of the user summary added to the logits: a skip connection
        from the user tokens to the scores (not in the USER-LLM paper; see
        `UserLLMConfig.head_user_skip`).
    """

    def __init__(
        self, *, dim_model: int, num_outputs: int, dim_user: int = 0, dim_embed: int = 0, center: bool = False
    ) -> None:
        super().__init__()
        if dim_model <= 0 or num_outputs <= 0 or dim_user < 0 or dim_embed < 0:
            raise ValueError("dim_model and the number of outputs must be positive, dim_user/dim_embed >= 0")
        self.in_proj = nn.Linear(dim_model, dim_embed, bias=False) if dim_embed else None
        self.proj = nn.Linear(dim_embed or dim_model, num_outputs)
        self.user_proj = nn.Linear(dim_user, num_outputs, bias=False) if dim_user else None
        self.center: Tensor | None
        self.register_buffer("center", torch.zeros(dim_model) if center else None)

    def forward(
        self, hidden_states: Tensor, attention_mask: Tensor, user_summary: Tensor | None = None
    ) -> Tensor:
        """Args: hidden_states (B, S, Dl), attention_mask (B, S), user_summary (B, Du) or None (no user:
        no skip term). Returns: (B, N) logits."""
        h = gather_last_hidden(hidden_states, attention_mask)  # (B, Dl)
        if self.center is not None:
            h = h - self.center
        if self.in_proj is not None:
            h = self.in_proj(h)  # (B, De)
        logits = self.proj(h)  # (B, N)
        if self.user_proj is not None and user_summary is not None:
            logits = logits + self.user_proj(user_summary.to(self.user_proj.weight.dtype))
        return logits


class NextItemHead(_LastTokenHead):
    """Scores over the whole item catalogue (I outputs)."""

    def __init__(
        self, *, dim_model: int, num_items: int, dim_user: int = 0, dim_embed: int = 0, center: bool = False
    ) -> None:
        super().__init__(
            dim_model=dim_model, num_outputs=num_items, dim_user=dim_user, dim_embed=dim_embed, center=center
        )


class CategoryHead(_LastTokenHead):
    """Favourite-category logits (C outputs)."""

    def __init__(
        self,
        *,
        dim_model: int,
        num_categories: int,
        dim_user: int = 0,
        dim_embed: int = 0,
        center: bool = False,
    ) -> None:
        super().__init__(
            dim_model=dim_model, num_outputs=num_categories, dim_user=dim_user, dim_embed=dim_embed,
            center=center,
        )  # fmt: skip
