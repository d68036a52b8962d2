"""Reusing the user-independent lower layers (models/lower_layers.py) equals running the whole LLM,
and the factorised / centred heads and the Perceiver's recency embedding behave as documented."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from llm_fixtures import prompts, set_gates, user_tokens
from torch.testing import assert_close

from models.backbone import tiny_llama
from models.features import collate_events
from models.generation import left_pad
from models.heads import NextItemHead
from models.lower_layers import forward_from_lower, lower_states, split_layer
from models.perceiver import PerceiverConfig, PerceiverResampler
from models.personalized import PersonalizedLM, UserLLMConfig
from models.userllm import LLMAdapterConfig, UserLLM


def _llm(layers: tuple[int, ...] = (2, 3), mode: str = "cross_attention") -> UserLLM:
    torch.manual_seed(0)
    config = dataclasses.replace(LLMAdapterConfig.tiny(mode), cross_attn_layers=layers)
    llm = UserLLM(config, tiny_llama(num_layers=4)).eval()
    set_gates(llm, 0.6)
    return llm


def test_split_layer_is_the_first_block_or_zero() -> None:
    assert split_layer(_llm((2, 3))) == 2
    assert split_layer(_llm((0, 3))) == 0
    assert split_layer(_llm((), "soft_prompt")) == 0


def test_lower_states_then_the_rest_equal_the_whole_llm_exactly() -> None:
    llm = _llm()
    ids, mask = left_pad(prompts([6, 3, 6]), pad_token_id=0)
    ctx = llm.prepare_user_context(user_tokens(3))
    expected = llm(ids, mask, user_context=ctx).hidden_states
    got = forward_from_lower(llm, lower_states(llm, ids, mask), mask, ctx)
    assert_close(got[mask], expected[mask], rtol=0, atol=0)
    bare = llm(ids, mask).hidden_states  # no user: the bare backbone
    assert_close(
        forward_from_lower(llm, lower_states(llm, ids, mask), mask, None)[mask], bare[mask], rtol=0, atol=0
    )


def test_one_prompt_state_serves_a_batch_of_users() -> None:
    llm = _llm()
    ids = torch.tensor(prompts([7]))
    ctx = llm.prepare_user_context(user_tokens(4))
    expected = llm(ids.expand(4, -1), user_context=ctx).hidden_states
    got = forward_from_lower(llm, lower_states(llm, ids).expand(4, -1, -1), None, ctx)
    # the lower layers ran on 1 row instead of 4: CPU matmul kernels may block (and so round) a 7-row and a
    # 28-row product differently, by about 1e-6; same-shape reuse is exact (the test above)
    assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (got[0] - got[1]).abs().max() > 1e-4  # the users still differ


def test_soft_prompt_context_is_refused() -> None:
    llm = _llm((), "soft_prompt")
    ids = torch.tensor(prompts([5]))
    with pytest.raises(ValueError, match="soft_prompt"):
        forward_from_lower(llm, lower_states(llm, ids), None, llm.prepare_user_context(user_tokens(1)))


def test_personalized_score_with_and_without_lower_states() -> None:
    torch.manual_seed(0)
    config = UserLLMConfig.tiny(head_dim=12, head_center=True)
    config = dataclasses.replace(config, llm=dataclasses.replace(config.llm, cross_attn_layers=(1,)))
    model = PersonalizedLM(config, tiny_llama(num_layers=2)).eval()
    set_gates(model.llm, 0.5)
    with torch.no_grad():
        model.item_head.center.normal_()  # type: ignore[union-attr]
    events = [{"item": [2, 3, 4], "category": [[2], [3], [2]], "rating": [2, 3, 4]}]
    features, mask = collate_events(events * 2, max_len=16)
    ids = torch.tensor([[5, 6, 7, 8]] * 2)
    am = torch.ones_like(ids, dtype=torch.bool)
    ctx = model.user_context(features, mask)
    items, cats = model.score(ids, am, ctx)
    lower = lower_states(model.llm, ids[:1], am[:1]).expand(2, -1, -1)
    items2, cats2 = model.score(ids, am, ctx, lower)
    assert items.shape == (2, 20) and cats.shape == (2, 6)
    assert_close(items2, items, rtol=1e-5, atol=1e-5)  # 1-row vs 2-row lower layers: rounding only
    assert_close(cats2, cats, rtol=1e-5, atol=1e-5)


def test_factorised_centred_head_scores_the_bias_at_its_center() -> None:
    head = NextItemHead(dim_model=8, num_items=5, dim_embed=3, center=True)
    assert head.in_proj is not None and head.proj.weight.shape == (5, 3) and head.center is not None
    with torch.no_grad():
        head.center.copy_(torch.arange(8.0))
        head.proj.bias.copy_(torch.arange(5.0))
    hidden = head.center.expand(2, 4, -1).clone()  # (B, S, Dl): every row sits at the center
    mask = torch.ones(2, 4, dtype=torch.bool)
    assert_close(head(hidden, mask), torch.arange(5.0).expand(2, -1))
    hidden[1, -1] += 1.0
    assert (head(hidden, mask)[1] - torch.arange(5.0)).abs().max() > 0
    assert "center" in head.state_dict()  # saved with the checkpoint
    assert "center" not in NextItemHead(dim_model=8, num_items=5).state_dict()


def test_perceiver_recency_sees_order_and_ignores_padding() -> None:
    torch.manual_seed(0)
    config = dataclasses.replace(PerceiverConfig.tiny(), recency_positions=8)
    model = PerceiverResampler(config, dim_input=32).eval()
    plain = PerceiverResampler(PerceiverConfig.tiny(), dim_input=32).eval()
    x = torch.randn(1, 5, 32)
    mask = torch.ones(1, 5, dtype=torch.bool)
    reordered = x[:, [4, 3, 2, 1, 0]]
    assert_close(plain(x, mask), plain(reordered, mask), rtol=0, atol=1e-5)  # a set without recency
    assert (model(x, mask) - model(reordered, mask)).abs().max() > 1e-3  # a sequence with it
    holes = torch.cat([x[:, :3], torch.randn(1, 2, 32), x[:, 3:]], dim=1)  # padding in the middle
    hole_mask = torch.tensor([[True, True, True, False, False, True, True]])
    assert_close(model(holes, hole_mask), model(x, mask), rtol=0, atol=1e-5)
