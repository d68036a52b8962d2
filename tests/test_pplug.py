"""PPlug: aggregation weights, prefix, frozen-LLM generation path, and the real MiniLM encoder."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from llm_fixtures import PAD, prompts, tiny_userllm
from torch.testing import assert_close

from models.generation import SamplingParams, generate, left_pad
from models.pplug import PPlugAggregator, SentenceEncoder, find_minilm_dir

B, N, DT, DL = 3, 6, 24, 32


def _history() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = F.normalize(torch.randn(B, DT), dim=-1)
    h = F.normalize(torch.randn(B, N, DT), dim=-1)
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[1, 2:] = False
    mask[2] = False  # a user without history
    return x, h, mask


def test_weights_sum_to_one_and_respect_the_mask() -> None:
    x, h, mask = _history()
    w = PPlugAggregator.weights(x, h, mask)
    assert_close(w[:2].sum(-1), torch.ones(2), rtol=0, atol=1e-6)
    assert (w[~mask] == 0).all() and (w[2] == 0).all()
    expected = torch.softmax(torch.einsum("d,nd->n", x[1], h[1, :2]), dim=-1)  # x . h_i over real items
    assert_close(w[1, :2], expected)
    # padding content never matters
    h2 = h.clone()
    h2[~mask] = 100.0
    assert_close(PPlugAggregator.weights(x, h2, mask), w, rtol=0, atol=0)


def test_prefix_shapes_and_mask() -> None:
    agg = PPlugAggregator(dim_text=DT, dim_model=DL)
    x, h, mask = _history()
    prefix, prefix_mask = agg(x, h, mask)
    assert prefix.shape == (B, 2, DL)
    assert prefix_mask.tolist() == [[True, True], [True, True], [True, False]]
    assert_close(prefix[:, 0], agg.instruction.expand(B, -1), rtol=0, atol=0)
    # the personal embedding is input-aware: another input, other weights, other embedding
    other, _ = agg(-x, h, mask)
    assert (other[0, 1] - prefix[0, 1]).abs().max() > 1e-6


def test_pplug_mode_prefix_with_kv_cache_generation() -> None:
    llm = tiny_userllm("pplug")
    x, h, mask = _history()
    ctx = llm.prepare_pplug_context(x, h, mask)
    assert ctx.prefix is not None and ctx.prefix.shape == (B, 2, DL)
    seqs = prompts([3, 5, 4])
    ids, amask = left_pad(seqs, pad_token_id=PAD)
    out = llm(ids, amask, user_context=ctx, use_cache=True)
    assert out.logits.shape == (B, 5, 99) and out.past_key_values.get_seq_length() == 2 + 5
    got = generate(
        llm, ids, amask, user_context=ctx, params=SamplingParams(max_new_tokens=4), eos_token_id=-1
    )
    for i, seq in enumerate(seqs):  # batch == singles, and each matches greedy recompute
        single_ctx = ctx.select(torch.tensor([i]))
        seq_now = list(seq)
        for _ in range(4):
            seq_now.append(int(llm(torch.tensor([seq_now]), user_context=single_ctx).logits[0, -1].argmax()))
        assert got[i] == seq_now[len(seq) :]


# --- the real sentence encoder ---


@pytest.fixture(scope="module")
def minilm() -> SentenceEncoder:
    return SentenceEncoder()  # local_files_only=True: loads from the package folder, never the hub


def test_minilm_gives_unit_vectors_and_ranks_similar_sentences_higher(minilm: SentenceEncoder) -> None:
    assert find_minilm_dir().is_dir() and minilm.dim == 384
    texts = [
        "A gripping space adventure with stunning visual effects.",
        "This science-fiction film about astronauts looks amazing.",
        "My grandmother's recipe for apple pie uses cinnamon.",
    ]
    with torch.no_grad():
        emb = minilm.encode(texts)
    assert emb.shape == (3, 384)
    assert_close(emb.norm(dim=-1), torch.ones(3), rtol=0, atol=1e-5)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.2 and sim[0, 1] > sim[1, 2] + 0.2
    with torch.no_grad():  # padding in a batch does not change an embedding
        assert_close(minilm.encode(texts[:1])[0], emb[0], rtol=1e-4, atol=1e-5)
