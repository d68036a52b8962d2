"""Generation: KV cache == recompute, batch == singles, K/V once per call, EOS, sampling, streaming,
cancellation.

KV-cache vs recompute logits use the tightest tolerance that holds on CPU (see test_userllm.py: BLAS
results depend on the matrix shape); greedy tokens must be identical.
"""

from __future__ import annotations

import pytest
import torch
from llm_fixtures import PAD, prompts, tiny_userllm, user_tokens
from torch.testing import assert_close

from models.cross_attention import GatedCrossAttentionBlock
from models.generation import SamplingParams, generate, left_pad, sample_next, stream_generate
from models.userllm import UserLLM

MODES = ("cross_attention", "soft_prompt")
NO_EOS = -1  # an id never produced: rows run to max_new_tokens


@torch.no_grad()
def _greedy_by_recompute(
    llm: UserLLM, seq: list[int], tokens: torch.Tensor, steps: int
) -> tuple[list[int], list]:
    """Reference: re-run the whole sequence for every new token (no cache)."""
    ctx = llm.prepare_user_context(tokens)
    seq, new, logits = list(seq), [], []
    for _ in range(steps):
        last = llm(torch.tensor([seq]), user_context=ctx).logits[0, -1]
        logits.append(last)
        new.append(int(last.argmax()))
        seq.append(new[-1])
    return new, logits


@pytest.mark.parametrize("mode", MODES)
def test_kv_cache_generation_equals_full_recompute(mode: str) -> None:
    llm = tiny_userllm(mode, gates=0.5)
    seq, tokens = prompts([6])[0], user_tokens(1)
    expected, ref_logits = _greedy_by_recompute(llm, seq, tokens, steps=8)
    got = generate(
        llm,
        torch.tensor([seq]),
        torch.ones(1, 6),
        user_tokens=tokens,
        params=SamplingParams(max_new_tokens=8),
        eos_token_id=NO_EOS,
    )
    assert got == [expected]
    # logits of the cached path, step by step
    ctx = llm.prepare_user_context(tokens)
    with torch.no_grad():
        out = llm(torch.tensor([seq]), torch.ones(1, 6), user_context=ctx, use_cache=True)
        cached = [out.logits[0, -1]]
        for i, tok in enumerate(expected[:-1]):
            out = llm(
                torch.tensor([[tok]]),
                torch.ones(1, 7 + i),
                user_context=ctx,
                past_key_values=out.past_key_values,
                use_cache=True,
            )
            cached.append(out.logits[0, -1])
    assert_close(torch.stack(cached), torch.stack(ref_logits), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_batch_of_users_with_left_padding_equals_single_calls(mode: str) -> None:
    llm = tiny_userllm(mode, gates=0.5)
    seqs = prompts([2, 7, 4, 5])
    tokens = user_tokens(4)
    params = [
        SamplingParams(max_new_tokens=6),
        SamplingParams(max_new_tokens=3, repetition_penalty=1.5),  # rows penalise on their own tokens
        SamplingParams(max_new_tokens=6, temperature=0.8, top_p=0.9, seed=11),
        SamplingParams(max_new_tokens=5, temperature=1.2, seed=5),
    ]
    ids, mask = left_pad(seqs, pad_token_id=PAD)
    batched = generate(llm, ids, mask, user_tokens=tokens, params=params, eos_token_id=NO_EOS)
    singles = [
        generate(
            llm,
            torch.tensor([s]),
            torch.ones(1, len(s)),
            user_tokens=tokens[i : i + 1],
            params=params[i],
            eos_token_id=NO_EOS,
        )[0]
        for i, s in enumerate(seqs)
    ]
    assert batched == singles
    assert [len(r) for r in batched] == [6, 3, 6, 5]


def test_cross_attention_kv_is_computed_once_per_generate_call(monkeypatch: pytest.MonkeyPatch) -> None:
    llm = tiny_userllm(gates=0.5)
    calls: list[int] = []
    original = GatedCrossAttentionBlock.context_kv

    def counting(
        self: GatedCrossAttentionBlock, user_tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(id(self))
        return original(self, user_tokens)

    monkeypatch.setattr(GatedCrossAttentionBlock, "context_kv", counting)
    ids, mask = left_pad(prompts([3, 5]), pad_token_id=PAD)
    out = generate(
        llm,
        ids,
        mask,
        user_tokens=user_tokens(2),
        params=SamplingParams(max_new_tokens=7),
        eos_token_id=NO_EOS,
    )
    assert [len(r) for r in out] == [7, 7]
    assert sorted(calls) == sorted(id(b) for b in llm.cross_attn_blocks())  # once per block, not per step


def test_eos_stops_each_row_and_is_not_returned() -> None:
    llm = tiny_userllm(gates=0.5)
    ids, mask = left_pad(prompts([4, 6, 3]), pad_token_id=PAD)
    tokens = user_tokens(3)
    free = generate(
        llm, ids, mask, user_tokens=tokens, params=SamplingParams(max_new_tokens=10), eos_token_id=NO_EOS
    )
    eos = free[0][3]
    stopped = generate(
        llm, ids, mask, user_tokens=tokens, params=SamplingParams(max_new_tokens=10), eos_token_id=eos
    )
    for full, got in zip(free, stopped, strict=True):
        assert got == (full[: full.index(eos)] if eos in full else full)
    assert len(stopped[0]) <= 3


def test_stream_yields_per_step_and_matches_generate() -> None:
    llm = tiny_userllm("soft_prompt", gates=0.5)
    ids, mask = left_pad(prompts([4, 6]), pad_token_id=PAD)
    params = [SamplingParams(max_new_tokens=2), SamplingParams(max_new_tokens=4)]
    steps = list(
        stream_generate(llm, ids, mask, user_tokens=user_tokens(2), params=params, eos_token_id=NO_EOS)
    )
    assert len(steps) == 4 and all(len(s) == 2 for s in steps)
    assert [s[0] for s in steps][2:] == [None, None]
    collected = [[s[i] for s in steps if s[i] is not None] for i in range(2)]
    assert collected == generate(
        llm, ids, mask, user_tokens=user_tokens(2), params=params, eos_token_id=NO_EOS
    )


def test_sampling_is_seeded_per_request() -> None:
    logits = torch.randn(3, 50)
    params = [SamplingParams(temperature=1.0, seed=3)] * 2 + [
        SamplingParams(temperature=1.0, top_p=1e-6, seed=4)
    ]

    def draw() -> list[int]:
        gens = [torch.Generator().manual_seed(p.seed) for p in params]  # type: ignore[arg-type]
        return [int(t) for _ in range(20) for t in sample_next(logits, params, gens)]

    first, second = draw(), draw()
    assert first == second
    assert first[2::3] == [int(logits[2].argmax())] * 20  # top_p -> 0 keeps only the best token
    assert len(set(first[0::3])) > 1  # temperature 1 actually samples
    with pytest.raises(ValueError):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError):
        SamplingParams(temperature=-1.0)


def test_bare_backbone_generation_without_user() -> None:
    llm = tiny_userllm(gates=0.5)
    seq = prompts([5])[0]
    out = generate(
        llm,
        torch.tensor([seq]),
        torch.ones(1, 5),
        params=SamplingParams(max_new_tokens=4),
        eos_token_id=NO_EOS,
    )
    with torch.no_grad():
        ref = llm.backbone.generate(
            torch.tensor([seq]), max_new_tokens=4, do_sample=False, eos_token_id=None, pad_token_id=PAD
        )
    assert out == [ref[0, 5:].tolist()]


def test_repetition_penalty_lowers_seen_tokens_and_matches_the_served_default() -> None:
    from models.generation import SERVED_REPETITION_PENALTY, penalize_repetition
    from service.schemas import GenerateRequest

    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0], [2.0, -1.0, 0.5, 3.0]])
    seen = torch.tensor([[True, True, False, False], [True, True, False, False]])
    out = penalize_repetition(logits, seen, torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(out[0], torch.tensor([1.0, -2.0, 0.5, 3.0]))
    torch.testing.assert_close(out[1], logits[1])  # penalty 1: unchanged
    assert GenerateRequest.model_fields["repetition_penalty"].default == SERVED_REPETITION_PENALTY
    with pytest.raises(ValueError, match="repetition_penalty"):
        SamplingParams(repetition_penalty=0.9)
    llm = tiny_userllm("cross_attention", gates=0.5)  # a strong penalty never repeats a token here
    ids, mask = left_pad(prompts([3]), pad_token_id=PAD)
    plain = generate(llm, ids, mask, user_tokens=user_tokens(1), params=SamplingParams(max_new_tokens=12))
    penalized = generate(
        llm, ids, mask, user_tokens=user_tokens(1),
        params=SamplingParams(max_new_tokens=12, repetition_penalty=1e9),
    )[0]  # fmt: skip
    assert len(set(penalized)) == len(penalized) and not set(penalized) & set(ids[0].tolist())
    assert plain[0] != penalized


def test_a_cancelled_row_stops_at_the_next_step_and_all_cancelled_ends_the_call() -> None:
    llm = tiny_userllm(gates=0.5)
    forwards: list[int] = []
    llm.register_forward_pre_hook(lambda *_: forwards.append(1))
    ids, mask = left_pad(prompts([4, 6]), pad_token_id=PAD)
    params = SamplingParams(max_new_tokens=8)
    full = generate(llm, ids, mask, user_tokens=user_tokens(2), params=params, eos_token_id=NO_EOS)
    stop: set[int] = set()
    steps = []
    forwards.clear()
    for step in stream_generate(
        llm, ids, mask, user_tokens=user_tokens(2), params=params, eos_token_id=NO_EOS,
        cancelled=stop.__contains__,
    ):  # fmt: skip
        steps.append(step)
        if len(steps) == 2:
            stop.add(0)  # row 0's client goes away after two tokens
    assert [s[0] for s in steps] == full[0][:2] + [None] * 6  # no token of row 0 after the cancel
    assert [s[1] for s in steps] == full[1]  # the other row is untouched
    assert len(forwards) == 8  # prefill + 7 steps, as without the cancel (row 1 still needs them)
    forwards.clear()
    steps = []
    for step in stream_generate(
        llm, ids, mask, user_tokens=user_tokens(2), params=params, eos_token_id=NO_EOS,
        cancelled=stop.__contains__,
    ):  # fmt: skip
        steps.append(step)
        stop.add(1)
    assert len(steps) == 1 and len(forwards) == 1  # every row cancelled: no forward after the prefill


def test_a_top_p_below_float32_range_keeps_the_top_token() -> None:
    """top_p = 5e-324 (valid JSON, > 0) rounds to 0 in float32: nothing was kept and multinomial raised
    (found by the fuzz suite through POST /generate)."""
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 0.0]])
    params = [SamplingParams(temperature=0.7, top_p=5e-324), SamplingParams(temperature=0.7, top_p=1e-30)]
    assert sample_next(logits, params, [None, None]).tolist() == [1, 0]
