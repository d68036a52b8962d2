"""Prompt embeddings of a contextualized request: what an engine that reads `prompt_embeds` instead of
token ids (vLLM, `enable_prompt_embeds=True`) is given in soft-prompt and PPlug modes.

`UserLLM.forward` prepends a (P, Dl) prefix to the token embeddings (the projected user tokens, or
PPlug's [instruction, personal] pair) and masks the slots a user lacks (a cold-start user's tokens,
PPlug's personal slot without history); positions are `cumsum(mask) - 1`, so a masked slot takes no
position. The same sequence for an engine without masks is the real prefix slots followed by the
prompt's token embeddings, at positions 0 .. P' + S - 1: `prompt_embeds` builds it for one request.
The bare backbone fed `inputs_embeds=prompt_embeds(...)` gives the logits `UserLLM.forward` gives with
the context (tests/test_prompt_embeds.py). Cross-attention mode has no prefix (its user tokens enter
through keys/values inside the layers), so it has no prompt embeddings.

Based on: vLLM's prompt-embeds inputs (`EmbedsPrompt`, docs "Prompt Embedding Inputs"), which replace
the removed prompt-adapter (soft prompt) support; Lester et al. 2021 (prompt tuning).

Shapes: P prefix slots, P' real prefix slots, S prompt tokens, Dl LLM hidden dim.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from models.userllm import UserContext, UserLLM

__all__ = ["PREFIX_MODES", "context_prompt_embeds", "prompt_embeds"]

PREFIX_MODES = ("soft_prompt", "pplug")  # the modes whose user context is a prefix of embeddings


def prompt_embeds(
    llm: UserLLM, prompt: Sequence[int], prefix: Tensor | None, prefix_mask: Tensor | None
) -> Tensor:
    """One request's input embeddings: the real prefix slots, then the prompt's token embeddings.

    Args:
        llm: the contextualized LLM (its backbone's input embeddings are used).
        prompt: S token ids.
        prefix: (P, Dl) one row of `UserContext.prefix`; None = no prefix (the bare backbone).
        prefix_mask: (P,) bool, True = real slot; None = all real.

    Returns:
        (P' + S, Dl) in the backbone's dtype, on its device.
    """
    if llm.config.mode not in PREFIX_MODES:
        raise ValueError(f"mode {llm.config.mode!r} has no prefix: prompt embeddings serve {PREFIX_MODES}")
    embed = llm.backbone.model.embed_tokens  # the lookup `UserLLM.forward` uses
    ids = torch.as_tensor(list(prompt), dtype=torch.long, device=embed.weight.device)  # (S,)
    text = embed(ids)  # (S, Dl)
    if prefix is None:
        return text
    kept = prefix if prefix_mask is None else prefix[prefix_mask.to(prefix.device)]  # (P', Dl)
    return torch.cat([kept.to(device=text.device, dtype=text.dtype), text])  # (P' + S, Dl)


def context_prompt_embeds(
    llm: UserLLM, prompts: Sequence[Sequence[int]], context: UserContext | None
) -> list[Tensor]:
    """`prompt_embeds` of every row of a batch: B prompts and a context of B rows (or None)."""
    if context is None or context.prefix is None:
        return [prompt_embeds(llm, p, None, None) for p in prompts]
    if context.prefix.shape[0] != len(prompts):
        raise ValueError(f"{len(prompts)} prompts, but the context has {context.prefix.shape[0]} rows")
    masks = context.prefix_mask
    return [
        prompt_embeds(llm, p, context.prefix[i], None if masks is None else masks[i])
        for i, p in enumerate(prompts)
    ]
