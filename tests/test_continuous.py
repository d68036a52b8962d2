"""Continuous batching (models/continuous.py): a request decodes the same tokens whenever it joins a
running batch and whoever leaves it, as it would alone; cancelled rows leave without another token;
the cache drops the columns only finished rows used."""

from __future__ import annotations

import pytest
import torch
from llm_fixtures import PAD, prompts, tiny_userllm, user_tokens

from models.continuous import DecodeBatch
from models.generation import SamplingParams, generate, left_pad

MODES = ("cross_attention", "soft_prompt")
NO_EOS = -1

# (prompt length, params, step of the running batch at which the request joins)
REQUESTS = [
    (5, SamplingParams(max_new_tokens=10), 0),
    (9, SamplingParams(max_new_tokens=6), 3),
    (3, SamplingParams(max_new_tokens=8, temperature=0.8, top_p=0.9, seed=7, repetition_penalty=1.3), 5),
    (7, SamplingParams(max_new_tokens=4, repetition_penalty=1.5), 5),
]


def _alone(llm, prompt, tokens, params) -> list[int]:
    return generate(
        llm, torch.tensor([prompt]), torch.ones(1, len(prompt)), user_tokens=tokens, params=params,
        eos_token_id=NO_EOS, pad_token_id=PAD,
    )[0]  # fmt: skip


@pytest.mark.parametrize("mode", MODES)
def test_a_request_decodes_the_same_tokens_wherever_it_joins(mode: str) -> None:
    llm = tiny_userllm(mode, gates=0.5)
    texts = prompts([n for n, _, _ in REQUESTS])
    users = user_tokens(len(REQUESTS))
    expected = [_alone(llm, texts[i], users[i : i + 1], p) for i, (_, p, _) in enumerate(REQUESTS)]

    batch = DecodeBatch(llm, pad_token_id=PAD, eos_token_id=NO_EOS)
    got: dict[int, list[int]] = {i: [] for i in range(len(REQUESTS))}
    finished: set[int] = set()
    sizes = []
    step = 0
    while len(finished) < len(REQUESTS):
        joining = [i for i, (_, _, at) in enumerate(REQUESTS) if at == step]
        if joining:
            ids, mask = left_pad([texts[i] for i in joining], pad_token_id=PAD)
            context = llm.prepare_user_context(users[joining])
            batch.join(joining, ids, mask, [REQUESTS[i][1] for i in joining], context)
        sizes.append(len(batch))
        for e in batch.step():
            if e.token is not None:
                got[e.key].append(e.token)
            if e.finished:
                finished.add(e.key)
        step += 1
    assert [got[i] for i in range(len(REQUESTS))] == expected
    # rows in the batch before each step: joined at their step, gone right after their last token
    assert sizes == [1, 1, 1, 2, 2, 4, 4, 4, 4, 2, 1, 1, 1]
    assert len(batch) == 0 and batch.cache is None


def test_a_cancelled_row_leaves_without_a_token_and_its_columns_go() -> None:
    llm = tiny_userllm("cross_attention", gates=0.5)
    long, short = prompts([12, 3])
    users = user_tokens(2)
    params = SamplingParams(max_new_tokens=6)
    batch = DecodeBatch(llm, pad_token_id=PAD, eos_token_id=NO_EOS)
    ids, mask = left_pad([long, short], pad_token_id=PAD)
    batch.join(["long", "short"], ids, mask, [params, params], llm.prepare_user_context(users))
    first = batch.step()
    assert [e.key for e in first] == ["long", "short"] and batch.mask.shape == (2, 13)
    second = batch.step(cancelled={"long"})
    assert [e.key for e in second] == ["short"]
    assert batch.mask.shape == (1, 5) and bool(batch.mask.all())  # the long prompt's columns are gone
    assert batch.cache.layers[0].keys.shape[2] == 5
    rest = [e.token for e in second] + [e.token for _ in range(4) for e in batch.step()]
    assert rest == _alone(llm, short, users[1:2], params)[1:]


def test_rows_without_a_user_context_cannot_join_rows_with_one() -> None:
    llm = tiny_userllm("cross_attention", gates=0.5)
    (prompt,) = prompts([4])
    batch = DecodeBatch(llm, pad_token_id=PAD, eos_token_id=NO_EOS)
    ids, mask = left_pad([prompt], pad_token_id=PAD)
    batch.join(["a"], ids, mask, [SamplingParams()], llm.prepare_user_context(user_tokens(1)))
    with pytest.raises(ValueError, match="user context"):
        batch.join(["b"], ids, mask, [SamplingParams()], None)
