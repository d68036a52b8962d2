"""UserLLM: config, bare-backbone equivalence, zero gates, KV cache == recompute, batch == singles.

Tolerances: comparisons that run the very same kernels on the same shapes are exact (rtol=0, atol=0).
KV-cache decoding vs full recompute and batched vs single rows cannot be bit-exact on CPU: even one
`nn.Linear` gives different last bits for a row computed alone vs inside a larger matrix (BLAS picks
other blockings / summation orders by shape), and SDPA reduces over a different number of keys. We use
the tightest tolerance that holds (1e-5 on logits of magnitude ~1) and require identical greedy tokens.
"""

from __future__ import annotations

import pytest
import torch
from llm_fixtures import PAD, prompts, set_gates, tiny_userllm, user_tokens
from torch.testing import assert_close

from models.backbone import tiny_llama
from models.generation import left_pad
from models.userllm import CrossAttnDecoderLayer, LLMAdapterConfig, UserContext, UserLLM

TOL = {"rtol": 1e-5, "atol": 1e-5}
MODES = ("cross_attention", "soft_prompt")


def test_config_checks_and_layer_placement() -> None:
    assert LLMAdapterConfig().layer_ids(30) == (3, 7, 11, 15, 19, 23, 27)
    assert LLMAdapterConfig(cross_attn_layers=(0, 29)).layer_ids(30) == (0, 29)
    assert LLMAdapterConfig(mode="soft_prompt").layer_ids(30) == ()
    assert LLMAdapterConfig.tiny().layer_ids(2) == (0, 1)
    for bad in ({"mode": "prefix"}, {"heads": 0}, {"cross_attn_layers": (3, 1)}, {"soft_prompt_hidden": -1}):
        with pytest.raises(ValueError):
            LLMAdapterConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        LLMAdapterConfig(cross_attn_layers=(5,)).layer_ids(4)
    with pytest.raises(AttributeError):
        LLMAdapterConfig().mode = "pplug"  # type: ignore[misc]


def test_wrapping_and_shapes() -> None:
    llm = tiny_userllm(num_layers=4)
    assert all(isinstance(layer, CrossAttnDecoderLayer) for layer in llm.backbone.model.layers)
    ids = torch.tensor(prompts([6, 6]))
    ctx = llm.prepare_user_context(user_tokens(2))
    assert len(ctx.kv) == 4 and ctx.kv[0][0].shape == (2, 2, 16, 8)
    out = llm(ids, user_context=ctx)
    assert out.logits.shape == (2, 6, 99) and out.hidden_states.shape == (2, 6, 32)
    assert llm(ids, user_context=ctx, logits_to_keep=1).logits.shape == (2, 1, 99)


@pytest.mark.parametrize("mode", [*MODES, "pplug"])
def test_no_context_is_the_bare_backbone_exactly(mode: str) -> None:
    torch.manual_seed(0)
    bare = tiny_llama()
    ids = torch.tensor(prompts([7, 7]))
    expected = bare(ids).logits
    out = tiny_userllm(mode, gates=0.9)(ids)
    assert_close(out.logits, expected, rtol=0, atol=0)


def test_zero_gates_with_context_equal_the_bare_backbone_exactly() -> None:
    torch.manual_seed(0)
    expected = tiny_llama()(torch.tensor(prompts([7, 7]))).logits
    llm = tiny_userllm(gates=0.0)
    out = llm(torch.tensor(prompts([7, 7])), user_context=llm.prepare_user_context(user_tokens(2)))
    assert_close(out.logits, expected, rtol=0, atol=0)


@pytest.mark.parametrize("mode", MODES)
def test_user_tokens_change_the_output(mode: str) -> None:
    llm = tiny_userllm(mode, gates=0.5)
    ids = torch.tensor(prompts([7, 7]))
    bare = llm(ids).logits
    out = llm(ids, user_context=llm.prepare_user_context(user_tokens(2))).logits
    assert (out - bare).abs().amax(dim=(1, 2)).min() > 1e-3
    other = llm(ids, user_context=llm.prepare_user_context(user_tokens(2, seed=9))).logits
    assert (out - other).abs().max() > 1e-3


@pytest.mark.parametrize("mode", MODES)
def test_rows_without_user_tokens_behave_like_the_bare_backbone(mode: str) -> None:
    llm = tiny_userllm(mode, gates=0.5)
    ids = torch.tensor(prompts([7, 7]))
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[0] = False
    out = llm(ids, user_context=llm.prepare_user_context(user_tokens(2), mask)).logits
    bare = llm(ids).logits
    if mode == "cross_attention":  # the block adds exactly zero
        assert_close(out[0], bare[0], rtol=0, atol=0)
    else:  # soft prompt: 16 masked prefix keys change SDPA's reduction length, not the maths
        assert_close(out[0], bare[0], **TOL)
    assert (out[1] - bare[1]).abs().max() > 1e-3


@pytest.mark.parametrize("mode", MODES)
def test_kv_cache_steps_equal_full_recompute(mode: str) -> None:
    llm = tiny_userllm(mode, gates=0.5)
    ids = torch.tensor(prompts([9, 9]))
    ctx = llm.prepare_user_context(user_tokens(2))
    full = llm(ids, user_context=ctx).logits  # (B, S, V)
    out = llm(ids[:, :4], torch.ones(2, 4), user_context=ctx, use_cache=True)
    steps = [out.logits]
    for t in range(4, 9):
        out = llm(
            ids[:, t : t + 1],
            torch.ones(2, t + 1),
            user_context=ctx,
            past_key_values=out.past_key_values,
            use_cache=True,
        )
        steps.append(out.logits)
    assert out.past_key_values.get_seq_length() == 9 + (16 if mode == "soft_prompt" else 0)
    assert_close(torch.cat(steps, dim=1), full, **TOL)
    assert torch.equal(torch.cat(steps, dim=1).argmax(-1), full.argmax(-1))


@pytest.mark.parametrize("mode", MODES)
def test_left_padded_batch_equals_single_calls(mode: str) -> None:
    llm = tiny_userllm(mode, gates=0.5)
    seqs = prompts([3, 8, 5])
    ids, mask = left_pad(seqs, pad_token_id=PAD)
    umask = torch.ones(3, 16, dtype=torch.bool)
    umask[2, 5:] = False  # a user with only 5 tokens
    tokens = user_tokens(3)
    batched = llm(ids, mask, user_context=llm.prepare_user_context(tokens, umask)).logits
    for i, seq in enumerate(seqs):
        ctx = llm.prepare_user_context(tokens[i : i + 1, : int(umask[i].sum())])
        single = llm(torch.tensor([seq]), user_context=ctx).logits[0]
        assert_close(batched[i, -len(seq) :], single, **TOL)


def test_context_select_and_no_state_on_modules() -> None:
    llm = tiny_userllm(gates=0.5)
    ctx = llm.prepare_user_context(user_tokens(3), torch.rand(3, 16) > 0.2)
    sub = ctx.select(torch.tensor([2, 0]))
    assert isinstance(sub, UserContext) and sub.kv[0][0].shape[0] == 2
    assert torch.equal(sub.kv_mask, ctx.kv_mask[[2, 0]])  # type: ignore[index]
    before = {k: v.clone() for k, v in llm.state_dict().items()}
    llm(torch.tensor(prompts([4, 4, 4])), user_context=ctx)
    after = llm.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_adapters_follow_backbone_dtype_and_are_named() -> None:
    torch.manual_seed(0)
    llm = UserLLM(LLMAdapterConfig.tiny("soft_prompt"), tiny_llama().to(torch.bfloat16))
    assert llm.soft_prompt is not None and llm.soft_prompt.mlp.weight.dtype == torch.bfloat16
    llm = tiny_userllm()
    names = [n for n, _ in llm.named_parameters() if llm.is_adapter_parameter(n)]
    assert names and all(".cross_attn." in n for n in names)
    set_gates(llm, 0.0)
    with pytest.raises(ValueError):
        llm.prepare_pplug_context(torch.randn(1, 24), torch.randn(1, 3, 24))
