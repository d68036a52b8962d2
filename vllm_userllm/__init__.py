"""A vLLM general plugin (entry point group `vllm.general_plugins`, pyproject.toml): registers USER-LLM's
gated cross-attention decoder as an encoder-decoder model whose "encoder" output is the user's 16
precomputed user tokens. vLLM calls `register` in every process it starts. Experimental: docs/vllm.md
says how far it runs on vLLM's CPU backend.

Based on: vLLM's plugin system (docs/design/plugin_system.md) and the out-of-tree BART plugin
(vllm-project/bart-plugin: `ModelRegistry.register_model` in an entry point)."""

from __future__ import annotations

ARCHITECTURE = "UserLLMCrossAttentionForCausalLM"


def register() -> None:
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, f"vllm_userllm.cross_attention:{ARCHITECTURE}")
