"""service/vllm_engine.py without vLLM: which checkpoints it refuses, and the prompts it sends (mixed
mode: the prefix slots as embeddings, the prompt's tokens as ids; encoder-decoder for cross-attention).
The engine itself runs in the opt-in suite (tests_vllm/, `make test-vllm`). This module runs where vllm
is not installed: the engine's module imports it only when the engine starts."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from models.personalized import UserLLMConfig
from models.userllm import LLMAdapterConfig
from service.vllm_engine import VllmEngine, check_servable


def test_only_checkpoints_with_a_frozen_backbone_are_servable() -> None:
    config = UserLLMConfig.tiny("soft_prompt")
    check_servable(config)  # strategy "enc"
    check_servable(replace(config, llm=LLMAdapterConfig.tiny("pplug"), strategy="proj"))
    for strategy in ("lora", "full"):
        with pytest.raises(ValueError, match="frozen backbone"):
            check_servable(replace(config, strategy=strategy))
    check_servable(UserLLMConfig.tiny("cross_attention"))  # through the vllm_userllm plugin


def test_the_request_marks_prefix_slots_as_embeddings_and_keeps_the_prompt_ids() -> None:
    assert VllmEngine.request([5, 6], None) == {"prompt_token_ids": [5, 6]}
    embeds = torch.zeros(3 + 2, 8)
    request = VllmEngine.request([5, 6], embeds)
    assert request["prompt_embeds"] is embeds
    assert request["prompt_token_ids"] == [0, 0, 0, 5, 6]
    assert request["prompt_is_token_ids"] == [False, False, False, True, True]
    with pytest.raises(ValueError, match="embeddings"):
        VllmEngine.request([5, 6, 7], torch.zeros(2, 8))
    users = torch.ones(16, 4)
    encoder_decoder = VllmEngine.request([5, 6], None, users)  # cross-attention: the plugin's request
    assert encoder_decoder["encoder_prompt"]["multi_modal_data"]["user"] is users
    assert encoder_decoder["decoder_prompt"] == {"prompt_token_ids": [5, 6]}
