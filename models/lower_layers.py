"""The user-independent lower layers of a cross-attention USER-LLM, computed once per prompt.

With gated cross-attention (USER-LLM, arXiv 2402.13598, Sec. 3.2; Flamingo's xattn-dense) the user
tokens enter the LLM only at the inserted blocks. Every decoder layer *below the first block* sees the
text alone, so for a fixed instruction (the next-item and genre prompts) its hidden states are the same
for every user: they can be computed once and reused for each request and each training step while
those layers are frozen. `split_layer` tells where that part ends, `lower_states` computes the states
entering it, and `forward_from_lower` runs the remaining layers with the users' context. With the
blocks placed in the top layers only, most of the backbone then runs once per prompt instead of once
per user. This is the same idea as prefix caching in vLLM, applied up to a layer instead of a position.

Only for a whole sequence without a KV cache (scoring); soft-prompt / PPlug prefixes change the input
embeddings, so their split layer is 0 (nothing to reuse).

Shapes: B batch, S text tokens, Dl LLM hidden dim.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from transformers.masking_utils import create_causal_mask

from models.userllm import UserContext, UserLLM

__all__ = ["forward_from_lower", "lower_states", "split_layer"]


def split_layer(llm: UserLLM) -> int:
    """Index of the first decoder layer that reads user context (0 when the input embeddings do)."""
    if llm.config.mode != "cross_attention" or not llm.cross_attn_layers:
        return 0
    return llm.cross_attn_layers[0]


def _run(llm: UserLLM, hidden: Tensor, mask: Tensor, layers: Any, user_context: UserContext | None) -> Tensor:
    """hidden (B, S, Dl) through `layers` (no cache), positions = cumsum(mask) - 1 like `UserLLM`."""
    decoder = llm.backbone.model
    position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, S)
    causal = create_causal_mask(
        config=decoder.config, inputs_embeds=hidden, attention_mask=mask, past_key_values=None,
        position_ids=position_ids,
    )  # fmt: skip
    rotary = decoder.rotary_emb(hidden, position_ids=position_ids)
    routed = {"user_context": user_context} if user_context is not None else {}
    for layer in layers:
        hidden = layer(hidden, attention_mask=causal, position_embeddings=rotary, position_ids=position_ids,
                       **routed)  # fmt: skip
    return hidden


def lower_states(llm: UserLLM, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """Hidden states entering layer `split_layer(llm)`: the user-independent part of the prompt.

    Args:
        input_ids: (B, S) prompt ids (usually B = 1: one fixed instruction).
        attention_mask: (B, S), 1/True = real token; None = all real.

    Returns:
        (B, S, Dl). Reuse it only while the embeddings and lower layers keep their weights.
    """
    mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    hidden = llm.backbone.model.embed_tokens(input_ids)  # (B, S, Dl)
    return _run(llm, hidden, mask, llm.backbone.model.layers[: split_layer(llm)], None)


def forward_from_lower(
    llm: UserLLM, lower: Tensor, attention_mask: Tensor | None, user_context: UserContext | None
) -> Tensor:
    """The rest of the LLM from `lower_states`: equals `llm(ids, mask, user_context=...).hidden_states`.

    Args:
        lower: (B, S, Dl) from `lower_states` (a (1, S, Dl) state may be expanded to B rows).
        attention_mask: (B, S) of the prompt; None = all real.
        user_context: from `prepare_user_context` (cross_attention mode), or None for the bare backbone.

    Returns:
        (B, S, Dl) last-layer hidden states after the final norm.
    """
    if llm.config.mode != "cross_attention" and user_context is not None:
        raise ValueError(f"mode {llm.config.mode!r} conditions the input embeddings: use UserLLM.forward")
    b, s, _ = lower.shape
    mask = (
        torch.ones(b, s, dtype=torch.bool, device=lower.device)
        if attention_mask is None
        else attention_mask.bool()
    )
    hidden = _run(llm, lower, mask, llm.backbone.model.layers[split_layer(llm) :], user_context)
    return llm.backbone.model.norm(hidden)
