"""models/prompt_embeds.py: the bare backbone fed a request's prompt embeddings (positions 0..n-1, no
mask) computes the logits `UserLLM.forward` computes with the user context, in soft-prompt and PPlug
modes, masked prefix slots included. This is what the vLLM engine relies on (it sees only embeddings).

Tolerance 1e-5: the two sides run the same layers on sequences of another length (left padding and
masked prefix slots), so BLAS may block the matrices differently (see tests/test_userllm.py)."""

from __future__ import annotations

import pytest
import torch
from llm_fixtures import PAD, prompts, tiny_userllm, user_tokens
from torch.testing import assert_close

from models.generation import left_pad
from models.prompt_embeds import context_prompt_embeds, prompt_embeds
from models.userllm import UserContext, UserLLM

TOL = {"rtol": 1e-5, "atol": 1e-5}


def _context(llm: UserLLM, batch: int) -> UserContext:
    if llm.config.mode == "soft_prompt":
        mask = torch.ones(batch, 16, dtype=torch.bool)
        mask[0] = False  # a cold-start row: no user tokens at all
        return llm.prepare_user_context(user_tokens(batch), mask)
    g = torch.Generator().manual_seed(3)
    history = torch.randn(batch, 5, llm.config.dim_text, generator=g)
    history_mask = torch.ones(batch, 5, dtype=torch.bool)
    history_mask[0] = False  # no history: the personal slot is masked, the instruction slot stays
    return llm.prepare_pplug_context(
        torch.randn(batch, llm.config.dim_text, generator=g), history, history_mask
    )


@pytest.mark.parametrize("mode", ["soft_prompt", "pplug"])
def test_backbone_on_prompt_embeds_equals_the_contextualized_forward(mode: str) -> None:
    llm = tiny_userllm(mode)
    texts = prompts([7, 4, 9])
    context = _context(llm, len(texts))
    ids, mask = left_pad(texts, pad_token_id=PAD)
    with torch.no_grad():
        want = llm(ids, mask, user_context=context).logits  # (B, S, V)
        embeds = context_prompt_embeds(llm, texts, context)
        for i, (text, row) in enumerate(zip(texts, embeds, strict=True)):
            kept = int(context.prefix_mask[i].sum()) if context.prefix_mask is not None else 0
            assert row.shape == (kept + len(text), llm.dim_model)
            got = llm.backbone(inputs_embeds=row[None]).logits[0, kept:]  # (S, V) text positions
            assert_close(got, want[i, -len(text) :], **TOL)


def test_the_user_changes_the_embeddings_and_the_bare_prompt_is_its_token_embeddings() -> None:
    llm = tiny_userllm("soft_prompt")
    text = prompts([6])[0]
    with torch.no_grad():
        a, b = (llm.prepare_user_context(user_tokens(1, seed=s)) for s in (1, 2))
        assert a.prefix is not None and b.prefix is not None
        ea, eb = prompt_embeds(llm, text, a.prefix[0], None), prompt_embeds(llm, text, b.prefix[0], None)
        assert ea.shape == (16 + 6, llm.dim_model)
        assert not torch.equal(ea[:16], eb[:16]) and torch.equal(ea[16:], eb[16:])
        bare = prompt_embeds(llm, text, None, None)
        assert torch.equal(bare, llm.backbone.get_input_embeddings()(torch.tensor(text)))


def test_cross_attention_has_no_prompt_embeds() -> None:
    llm = tiny_userllm("cross_attention")
    with pytest.raises(ValueError, match="no prefix"):
        prompt_embeds(llm, [3, 4], None, None)
    soft = tiny_userllm("soft_prompt")
    with pytest.raises(ValueError, match="rows"):
        context_prompt_embeds(soft, [[3]], soft.prepare_user_context(user_tokens(2)))
