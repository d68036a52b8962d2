"""A next-item output head tied to the item input embedding table (SASRec-style weight sharing).

SASRec (Kang & McAuley, 2018) and SASRec+ (Klenitskiy & Vasilev, RecSys 2023) score item i as
<h, e_i>, the input embedding of i: every occurrence of an item in a history also trains its output
vector, which helps most on small data. Our event embedding is narrower than the encoder
(`item_dim` < d_model, fused with the other features), so the head first maps the state into the
embedding space: logits = (h W^T) E^T + b, W (item_dim, D), E the item table (V, item_dim).

W's initialisation matters: drawn N(0, 0.02) like the other weights (`init_std`), the scores are a
product of two small matrices and start about sqrt(D) x 0.02 times smaller than SASRec's <h, e_i>, and
the next-item loss falls more slowly (on ml-latest-small, 200-event histories: 7.66 after 100 steps
against 7.24, SASRec+ 7.23; docs/results.md "Encoders"). `UserEncoderConfig.tied_head_init` =
"orthogonal" starts W (semi-)orthogonal instead, so (h W^T) keeps the state's scale and the head starts
as SASRec's does.

`weight` is that product, shape (V, D), so code that reads or copies a plain `nn.Linear(D, V)` head
(the USER-LLM heads start from the encoder's) works on a tied head unchanged.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["TiedItemHead"]


class TiedItemHead(nn.Module):
    """h (..., D) -> logits (..., V) through the shared item embedding table."""

    def __init__(self, table: nn.Embedding, dim_model: int) -> None:
        super().__init__()
        self.table = [table]  # a list: the table is owned (and saved) by the event embedding, not here
        self.proj = nn.Linear(dim_model, table.embedding_dim, bias=False)
        self.bias = nn.Parameter(table.weight.new_zeros(table.num_embeddings))

    @property
    def weight(self) -> Tensor:
        """(V, D): the equivalent untied head's weight."""
        return self.table[0].weight @ self.proj.weight

    def forward(self, hidden: Tensor) -> Tensor:
        return F.linear(self.proj(hidden), self.table[0].weight, self.bias)  # (..., V)
