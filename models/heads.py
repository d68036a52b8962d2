"""Task heads on the LLM's last hidden state: next-item scores and favourite-category scores.

References: USER-LLM (arXiv 2402.13598) section 4 tasks (next-item prediction, favourite genre /
category); HF `LlamaForSequenceClassification` (score from the last non-pad token).

Shapes: B batch, S text tokens, Dl LLM hidden dim, I catalogue items, C categories.
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


class NextItemHead(nn.Module):
    """Scores over the whole item catalogue from the last real position's hidden state."""

    def __init__(self, *, dim_model: int, num_items: int) -> None:
        super().__init__()
        if dim_model <= 0 or num_items <= 0:
            raise ValueError("dim_model and num_items must be positive")
        self.proj = nn.Linear(dim_model, num_items)

    def forward(self, hidden_states: Tensor, attention_mask: Tensor) -> Tensor:
        """Args: hidden_states (B, S, Dl), attention_mask (B, S). Returns: (B, I) item logits."""
        return self.proj(gather_last_hidden(hidden_states, attention_mask))


class CategoryHead(nn.Module):
    """Favourite-category logits from the last real position's hidden state."""

    def __init__(self, *, dim_model: int, num_categories: int) -> None:
        super().__init__()
        if dim_model <= 0 or num_categories <= 0:
            raise ValueError("dim_model and num_categories must be positive")
        self.proj = nn.Linear(dim_model, num_categories)

    def forward(self, hidden_states: Tensor, attention_mask: Tensor) -> Tensor:
        """Args: hidden_states (B, S, Dl), attention_mask (B, S). Returns: (B, C) category logits."""
        return self.proj(gather_last_hidden(hidden_states, attention_mask))
