"""TorchEngine scoring: each task is scored on its own instruction (the one its head was trained on),
and reusing the prompts' lower-layer states gives the same scores as running the whole LLM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from llm_fixtures import real_backbone_dir  # noqa: F401
from service_fixtures import build_tiny_stack

from models.seen_bias import SeenItemBias
from service.engine import ScoreJob, TorchEngine, UserInput


@pytest.fixture(scope="module")
def engine(tmp_path_factory, real_backbone_dir) -> TorchEngine:  # noqa: F811
    backbone, ckpt = build_tiny_stack(
        tmp_path_factory.mktemp("engine"), real_backbone_dir, cross_attn_layers=(1,)
    )
    return TorchEngine.load(ckpt, backbone, device="cpu")


def _full_scores(
    engine: TorchEngine, prompt: list[int], tokens: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([prompt])
    mask = torch.ones_like(ids, dtype=torch.bool)
    context = engine._context([UserInput(tokens)])
    with torch.inference_mode():
        return engine.model.score(ids, mask, context)  # the whole LLM, no reused states


def test_genre_and_next_item_use_their_own_prompts(engine: TorchEngine) -> None:
    rng = np.random.default_rng(0)
    shape = (engine.model.config.tower.num_user_tokens, engine.model.config.tower.dim_user)
    users = [UserInput(rng.standard_normal(shape).astype(np.float16)) for _ in range(3)]
    jobs = [ScoreJob(users[0], k=5), ScoreJob(users[1], k=1, task="genre"), ScoreJob(users[2], k=5)]
    results = engine.score_batch(jobs)
    assert len(results) == 3
    for job, result in zip(jobs, results, strict=True):
        prompt = engine.genre_prompt if job.task == "genre" else engine.score_prompt
        items, cats = _full_scores(engine, prompt, job.user.user_tokens)  # type: ignore[arg-type]
        best_item = int(items[0, 2:].argmax()) + 2
        assert result.items[0][0] == best_item
        torch.testing.assert_close(result.items[0][1], float(items[0, best_item]), rtol=1e-5, atol=1e-5)
        probs = cats[0].float().clone()
        probs[:2] = -torch.inf
        torch.testing.assert_close(
            result.categories[0][1], float(probs.softmax(-1).max()), rtol=1e-5, atol=1e-5
        )
    genre_on_item_prompt = _full_scores(engine, engine.score_prompt, users[1].user_tokens)[1]  # type: ignore[arg-type]
    genre_on_genre_prompt = _full_scores(engine, engine.genre_prompt, users[1].user_tokens)[1]  # type: ignore[arg-type]
    assert (genre_on_item_prompt - genre_on_genre_prompt).abs().max() > 1e-4  # the prompt matters


def test_seen_items_get_the_encoders_learned_score_when_not_excluded(engine: TorchEngine) -> None:
    """With a seen bias in the checkpoint's encoder, the history's items are scored b lower (b < 0),
    as the encoder scored them in training; without one, `seen` changes nothing."""
    rng = np.random.default_rng(1)
    shape = engine.user_token_shape
    user = UserInput(rng.standard_normal(shape).astype(np.float16))
    vocab = len(engine.codec.items.tokens)
    plain = engine.score_batch([ScoreJob(user, k=vocab)])[0].items
    best, second = plain[0][0], plain[1][0]
    assert engine.seen_bias is None
    assert engine.score_batch([ScoreJob(user, k=vocab, seen={best})])[0].items == plain
    encoder = engine.model.tower.encoder
    try:
        encoder.seen_bias = SeenItemBias()
        with torch.no_grad():
            encoder.seen_bias.raw.fill_(-0.1)  # b = -5
        assert engine.seen_bias == pytest.approx(-5.0)
        scored = dict(engine.score_batch([ScoreJob(user, k=vocab, seen={best})])[0].items)
        assert scored[best] == pytest.approx(dict(plain)[best] - 5.0, abs=1e-4)
        assert scored[second] == pytest.approx(dict(plain)[second], abs=1e-6)
        excluded = engine.score_batch([ScoreJob(user, k=vocab, exclude={best}, seen={best})])[0].items
        assert best not in dict(excluded)
    finally:
        encoder.seen_bias = None


@pytest.fixture(scope="module")
def demo_engine(tmp_path_factory, real_backbone_dir) -> TorchEngine:  # noqa: F811
    backbone, ckpt = build_tiny_stack(
        tmp_path_factory.mktemp("demo-engine"), real_backbone_dir, cross_attn_layers=(1,), demo_shape=True
    )
    return TorchEngine.load(ckpt, backbone, device="cpu")


def test_the_demo_shape_serves_the_heads_skip_from_the_newest_event_token(demo_engine: TorchEngine) -> None:
    """The demo recipe's heads also read the 17th user token (the encoder's state at the newest event,
    `head_user_skip`): the served next-item scores equal the model's over the whole LLM, and they are
    the LLM's scores plus the skip's read-out of that token."""
    rng = np.random.default_rng(2)
    shape = demo_engine.user_token_shape
    assert shape[0] == demo_engine.model.config.tower.num_user_tokens == 17
    tokens = rng.standard_normal(shape).astype(np.float16)
    vocab = len(demo_engine.codec.items.tokens)
    served = dict(demo_engine.score_batch([ScoreJob(UserInput(tokens), k=vocab)])[0].items)
    items, _ = _full_scores(demo_engine, demo_engine.score_prompt, tokens)
    ids = sorted(served)
    torch.testing.assert_close(
        torch.tensor([served[i] for i in ids]), items[0, ids].float(), rtol=1e-5, atol=1e-5
    )
    head = demo_engine.model.item_head
    assert head.user_proj is not None
    with torch.no_grad():
        skip = head.user_proj(torch.from_numpy(tokens[-1].astype(np.float32)))  # (I,)
    saved = head.user_proj.weight.detach().clone()
    try:
        with torch.no_grad():
            head.user_proj.weight.zero_()
        without = dict(demo_engine.score_batch([ScoreJob(UserInput(tokens), k=vocab)])[0].items)
    finally:
        with torch.no_grad():
            head.user_proj.weight.copy_(saved)
    assert float(skip.abs().max()) > 1e-3  # the read-out is not a no-op here
    torch.testing.assert_close(
        torch.tensor([served[i] - without[i] for i in ids]), skip[ids], rtol=1e-4, atol=1e-4
    )
