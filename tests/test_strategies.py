"""Training strategies: which parameters train; LoRA placement; PPlug keeps the LLM frozen."""

from __future__ import annotations

import pytest
import torch
from llm_fixtures import prompts, tiny_userllm, user_tokens
from torch import nn
from torch.testing import assert_close

from models.heads import CategoryHead, NextItemHead, gather_last_hidden, last_token_index
from models.strategies import apply_strategy, has_lora
from models.userllm import UserLLM


def _parts(mode: str = "cross_attention") -> tuple[UserLLM, nn.Module, nn.Module]:
    return tiny_userllm(mode), nn.Linear(4, 4), nn.Linear(4, 32)


def _backbone_params(llm: UserLLM) -> dict[str, nn.Parameter]:
    return {n: p for n, p in llm.named_parameters() if not llm.is_adapter_parameter(n) and "lora_" not in n}


@pytest.mark.parametrize("strategy", ["full", "enc", "lora", "proj"])
def test_strategy_sets_requires_grad(strategy: str) -> None:
    llm, encoder, perceiver = _parts()
    names = apply_strategy(llm=llm, encoder=encoder, perceiver=perceiver, strategy=strategy)
    trainable = {n for n, p in llm.named_parameters() if p.requires_grad}
    assert names == [n for n in names if n.split(".")[0] in {"llm", "encoder", "perceiver"}]
    assert {n.removeprefix("llm.") for n in names if n.startswith("llm.")} == trainable
    adapters = {n for n, _ in llm.named_parameters() if llm.is_adapter_parameter(n)}
    assert adapters and adapters <= trainable
    backbone_trains = any(p.requires_grad for p in _backbone_params(llm).values())
    assert backbone_trains == (strategy == "full")
    assert all(p.requires_grad for p in perceiver.parameters())
    assert all(p.requires_grad == (strategy != "proj") for p in encoder.parameters())
    assert has_lora(llm) == (strategy == "lora")


def test_lora_targets_backbone_self_attention_only_and_starts_as_identity() -> None:
    llm, encoder, perceiver = _parts()
    ids = torch.tensor(prompts([5, 5]))
    ctx = llm.prepare_user_context(user_tokens(2))
    with torch.no_grad():
        before = llm(ids, user_context=ctx).logits
    names = apply_strategy(llm=llm, encoder=encoder, perceiver=perceiver, strategy="lora")
    lora = [n for n in names if "lora_" in n]
    assert len(lora) == 2 * 2 * 2  # 2 layers x (q_proj, v_proj) x (A, B)
    assert all(".self_attn." in n and ".cross_attn." not in n for n in lora)
    with torch.no_grad():  # lora_B starts at zero
        assert_close(llm(ids, user_context=ctx).logits, before, rtol=0, atol=0)
    apply_strategy(llm=llm, encoder=encoder, perceiver=perceiver, strategy="lora")  # idempotent
    assert sum("lora_A" in n for n, _ in llm.named_parameters()) == 4


@pytest.mark.parametrize("strategy", ["enc", "proj"])
def test_pplug_keeps_the_llm_frozen(strategy: str) -> None:
    llm, encoder, _ = _parts("pplug")
    names = apply_strategy(llm=llm, encoder=encoder, perceiver=None, strategy=strategy)
    assert not any(p.requires_grad for p in _backbone_params(llm).values())
    assert llm.pplug is not None and all(p.requires_grad for p in llm.pplug.parameters())
    assert any(n.startswith("llm.pplug.") for n in names)


@pytest.mark.parametrize("strategy", ["full", "lora", "other"])
def test_pplug_refuses_llm_training_and_unknown_strategies(strategy: str) -> None:
    llm, encoder, _ = _parts("pplug")
    with pytest.raises(ValueError):
        apply_strategy(llm=llm, encoder=encoder, perceiver=None, strategy=strategy)


def test_heads_gather_the_last_real_position() -> None:
    hidden = torch.randn(3, 5, 32)
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])  # left, right, none
    assert last_token_index(mask).tolist() == [4, 2, 4]
    assert_close(gather_last_hidden(hidden, mask), hidden[[0, 1, 2], [4, 2, 4]], rtol=0, atol=0)
    assert NextItemHead(dim_model=32, num_items=50)(hidden, mask).shape == (3, 50)
    head = CategoryHead(dim_model=32, num_categories=7)
    assert head(hidden, mask).shape == (3, 7)
    llm, encoder, perceiver = _parts()
    names = apply_strategy(llm=llm, encoder=encoder, perceiver=perceiver, strategy="proj", heads=head)
    assert "heads.proj.weight" in names


def test_lora_disabled_reads_as_the_bare_model_and_restores_training_state() -> None:
    from models.strategies import lora_disabled

    llm, encoder, perceiver = _parts()
    ids = torch.tensor(prompts([5, 5]))
    with torch.no_grad():
        bare = llm(ids).logits
    apply_strategy(llm=llm, encoder=encoder, perceiver=perceiver, strategy="lora")
    with torch.no_grad():
        for name, p in llm.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)  # a trained adapter
        tuned = llm(ids).logits
        with lora_disabled(llm):
            assert_close(llm(ids).logits, bare, rtol=0, atol=0)
        assert_close(llm(ids).logits, tuned, rtol=0, atol=0)
    assert not torch.allclose(tuned, bare)
    grads = {n: p.requires_grad for n, p in llm.named_parameters()}
    with lora_disabled(llm):
        pass
    assert grads == {n: p.requires_grad for n, p in llm.named_parameters()}
