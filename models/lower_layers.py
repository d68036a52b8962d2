"""The user-independent lower layers of a cross-attention USER-LLM, computed once per prompt.

With gated cross-attention (USER-LLM, arXiv 2402.13598, Sec. 3.2; Flamingo's xattn-dense) the user
tokens enter the LLM only at the inserted blocks. Every decoder layer *below the first block* sees the
text alone, so for a fixed instruction (the next-item and genre prompts) its hidden states are the same
for every user: they can be computed once and reused for each request and each training step while
those layers are frozen. `split_layer` tells where that part ends, `lower_states` computes the states
entering it, and `forward_from_lower` runs the remaining layers with the users' context. With the
blocks placed in the top layers only, most of the backbone then runs once per prompt instead of once
per user. This is the same idea as prefix caching in vLLM, applied up to a layer instead of a position.

`prefix_kv` + `lower_states_after` do the same for texts that share a prefix (a language task's
chat-formatted instruction): the prefix runs through the lower layers once, each continuation only over
its own tokens, attending to the prefix's cached keys and values.

Whole sequences without a KV cache of the upper part (scoring, training); soft-prompt / PPlug prefixes
change the input embeddings, so their split layer is 0 (nothing to reuse).

Shapes: B batch, S text tokens, Dl LLM hidden dim.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache
from transformers.masking_utils import create_causal_mask

from models.userllm import UserContext, UserLLM

__all__ = ["forward_from_lower", "lower_states", "lower_states_after", "prefix_kv", "split_layer"]


def split_layer(llm: UserLLM) -> int:
    """Index of the first decoder layer that reads user context (0 when the input embeddings do)."""
    if llm.config.mode != "cross_attention" or not llm.cross_attn_layers:
        return 0
    return llm.cross_attn_layers[0]


def _run(
    llm: UserLLM, hidden: Tensor, mask: Tensor, layers: Any, user_context: UserContext | None,
    cache: DynamicCache | None = None,
) -> Tensor:  # fmt: skip
    """hidden (B, S, Dl) through `layers`, positions = cumsum(mask) - 1 like `UserLLM`; `mask` (B, S_past + S)
    covers the tokens already in `cache` (filled by the layers when given) and the new ones."""
    decoder = llm.backbone.model
    s = hidden.shape[1]
    position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)[:, -s:]  # (B, S)
    causal = create_causal_mask(
        config=decoder.config, inputs_embeds=hidden, attention_mask=mask, past_key_values=cache,
        position_ids=position_ids,
    )  # fmt: skip
    rotary = decoder.rotary_emb(hidden, position_ids=position_ids)
    routed: dict[str, Any] = {"user_context": user_context} if user_context is not None else {}
    if cache is not None:
        routed |= {"past_key_values": cache, "use_cache": True}
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


# --- a shared prefix computed once (e.g. the chat-formatted instruction of a language task) ---


@torch.no_grad()
def prefix_kv(llm: UserLLM, prefix_ids: Tensor) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
    """The lower layers on a (1, P) prefix: its (1, P, Dl) states and each lower layer's (k, v).

    The (k, v) pairs, each (1, Hk, P, Dh), let `lower_states_after` run only the tokens that follow.
    """
    decoder = llm.backbone.model
    cache = DynamicCache()
    hidden = decoder.embed_tokens(prefix_ids)  # (1, P, Dl)
    mask = torch.ones_like(prefix_ids, dtype=torch.bool)
    hidden = _run(llm, hidden, mask, decoder.layers[: split_layer(llm)], None, cache=cache)
    kv = [(layer.keys, layer.values) for layer in cache.layers[: split_layer(llm)]]
    return hidden, kv


def lower_states_after(
    llm: UserLLM, kv: list[tuple[Tensor, Tensor]], input_ids: Tensor, attention_mask: Tensor
) -> Tensor:
    """Lower states of right-padded continuations of a shared prefix whose `prefix_kv` is given.

    Args:
        kv: from `prefix_kv` (prefix length P).
        input_ids: (B, T) tokens after the prefix, right-padded.
        attention_mask: (B, T), True = real token.

    Returns:
        (B, T, Dl): equal to `lower_states` of prefix + continuation at the continuation's positions.
    """
    decoder = llm.backbone.model
    b = input_ids.shape[0]
    cache = DynamicCache()
    for i, (k, v) in enumerate(kv):
        cache.update(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1), i)  # (B, Hk, P, Dh)
    prefix_len = kv[0][0].shape[2]
    mask = torch.cat([attention_mask.new_ones(b, prefix_len), attention_mask], dim=1).bool()  # (B, P + T)
    hidden = decoder.embed_tokens(input_ids)  # (B, T, Dl)
    return _run(llm, hidden, mask, decoder.layers[: split_layer(llm)], None, cache=cache)


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
