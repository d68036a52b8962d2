"""Soft-prompt projector: user tokens -> LLM input-embedding space, prepended to the text embeddings.

References: USER-LLM (arXiv 2402.13598) section 3.2, "soft-prompt" contextualization; Lester et al.
2021 (prompt tuning); LLaVA's linear / 2-layer MLP projector.

Shapes: B batch, L user tokens, Du user-token dim, Dl LLM hidden dim.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["SoftPromptProjector"]


class SoftPromptProjector(nn.Module):
    """Linear Du -> Dl (hidden == 0), or LayerNorm-free MLP Du -> hidden -> Dl with GELU."""

    def __init__(self, *, dim_user: int, dim_model: int, hidden: int = 0) -> None:
        super().__init__()
        if dim_user <= 0 or dim_model <= 0 or hidden < 0:
            raise ValueError("dim_user and dim_model must be positive, hidden >= 0")
        if hidden == 0:
            self.mlp: nn.Module = nn.Linear(dim_user, dim_model)
        else:
            self.mlp = nn.Sequential(nn.Linear(dim_user, hidden), nn.GELU(), nn.Linear(hidden, dim_model))

    def forward(self, user_tokens: Tensor) -> Tensor:
        """Project user tokens into the LLM's input-embedding space.

        Args:
            user_tokens: (B, L, Du).

        Returns:
            (B, L, Dl) prefix embeddings.
        """
        return self.mlp(user_tokens)
