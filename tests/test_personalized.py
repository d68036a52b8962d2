"""The composite USER-LLM model: cold-start users, checkpoint round trip, token cache round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.backbone import tiny_llama
from models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from models.features import collate_events
from models.personalized import PersonalizedLM, UserLLMConfig
from models.strategies import apply_strategy


def _events(n: int, offset: int = 0) -> dict[str, list]:
    return {
        "item": [2 + (i + offset) % 15 for i in range(n)],
        "category": [[2 + i % 3] for i in range(n)],
        "rating": [2 + i % 4 for i in range(n)],
    }


def _model(mode: str = "cross_attention", strategy: str = "enc", seed: int = 0) -> PersonalizedLM:
    torch.manual_seed(seed)
    model = PersonalizedLM(UserLLMConfig.tiny(mode, strategy=strategy), tiny_llama())
    with torch.no_grad():  # open the gates so user tokens matter
        for block in model.llm.cross_attn_blocks():
            block.attn_gate.fill_(0.5)
            block.ff_gate.fill_(0.5)
    return model.eval()


def _inputs(batch: list[dict[str, list]]):
    features, mask = collate_events(batch, max_len=16)
    ids = torch.tensor([[5, 6, 7, 8]] * len(batch))
    return features, mask, ids, torch.ones_like(ids, dtype=torch.bool)


@pytest.mark.parametrize("mode", ["cross_attention", "soft_prompt"])
def test_user_history_changes_scores_and_cold_start_equals_bare_backbone(mode) -> None:
    model = _model(mode)
    features, mask, ids, am = _inputs([_events(5), _events(9, 3), _events(0)])
    items, cats = model.score(ids, am, model.user_context(features, mask))
    assert items.shape == (3, 20) and cats.shape == (3, 6)
    assert not torch.allclose(items[0], items[1])
    bare_items, _ = model.score(ids[2:], am[2:], None)
    torch.testing.assert_close(items[2:], bare_items, rtol=0, atol=1e-6)


@pytest.mark.parametrize("strategy", ["enc", "lora", "proj"])
def test_checkpoint_round_trip_gives_identical_outputs(tmp_path, strategy) -> None:
    model = _model(strategy=strategy, seed=1)
    apply_strategy(
        llm=model.llm, encoder=model.tower.encoder, perceiver=model.tower.perceiver, strategy=strategy
    )
    save_checkpoint(
        tmp_path / "ck",
        model.checkpoint_state(),
        config=model.config.to_dict(),
        kind="userllm",
        trainable_only=True,
    )
    ck = load_checkpoint(tmp_path / "ck")
    torch.manual_seed(1)  # the same frozen backbone: tiny_llama() is built right after seeding, as in _model
    fresh = PersonalizedLM(UserLLMConfig(**ck.config), tiny_llama())
    fresh.load_checkpoint_state(ck)
    fresh.eval()
    features, mask, ids, am = _inputs([_events(7), _events(3, 2)])
    want = model.score(ids, am, model.user_context(features, mask))
    got = fresh.score(ids, am, fresh.user_context(features, mask))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_loading_a_checkpoint_missing_the_adapters_fails(tmp_path) -> None:
    model = _model()
    state = {k: v for k, v in model.checkpoint_state().items() if ".cross_attn." not in k}
    save_checkpoint(
        tmp_path / "ck", state, config=model.config.to_dict(), kind="userllm", trainable_only=True
    )
    with pytest.raises(CheckpointError, match="missing keys"):
        _model().load_checkpoint_state(load_checkpoint(tmp_path / "ck"))


def test_user_tokens_survive_the_fp16_cache_round_trip() -> None:
    """STYLE 14(c): user_tokens -> fp16 bytes -> tensor gives the same LLM scores (fp16 tolerance)."""
    model = _model()
    features, mask, ids, am = _inputs([_events(8)])
    out = model.tower(features, mask)
    blob = out.user_tokens[0].detach().to(torch.float16).numpy().tobytes()
    back = torch.from_numpy(np.frombuffer(blob, dtype=np.float16).reshape(out.user_tokens.shape[1:]).copy())
    torch.testing.assert_close(back.float(), out.user_tokens[0], rtol=1e-3, atol=1e-3)
    fresh_scores, _ = model.score(ids, am, model.user_context(features, mask))
    cached = model.context_from_tokens(back.float()[None], torch.ones(1, back.shape[0], dtype=torch.bool))
    cached_scores, _ = model.score(ids, am, cached)
    torch.testing.assert_close(cached_scores, fresh_scores, rtol=1e-2, atol=1e-2)


def test_half_precision_backbone_scores() -> None:
    """Heads follow the backbone's dtype (a bfloat16 backbone used to crash in score)."""
    torch.manual_seed(0)
    model = PersonalizedLM(UserLLMConfig.tiny(), tiny_llama().to(torch.bfloat16)).eval()
    features, mask, ids, am = _inputs([_events(4)])
    items, cats = model.score(ids, am, model.user_context(features, mask))
    assert items.dtype == torch.bfloat16 and torch.isfinite(items.float()).all() and cats.shape == (1, 6)


def test_head_user_skip_reads_the_user_tokens_and_leaves_cold_start_alone() -> None:
    torch.manual_seed(0)
    from models.user_tower import UserTowerConfig

    config = UserLLMConfig.tiny(head_user_skip=True, tower=UserTowerConfig.tiny(append_last_event=True))
    model = PersonalizedLM(config, tiny_llama()).eval()
    assert model.item_head.user_proj is not None  # gates stay closed: only the skip can personalize
    features, mask, ids, am = _inputs([_events(5), _events(9, 3), _events(0)])
    context = model.user_context(features, mask)
    items, _ = model.score(ids, am, context)
    assert not torch.allclose(items[0], items[1])  # zero gates, yet different users score differently
    bare_items, _ = model.score(ids[2:], am[2:], None)
    torch.testing.assert_close(items[2:], bare_items, rtol=0, atol=1e-6)
    no_skip = PersonalizedLM(UserLLMConfig.tiny(), tiny_llama()).eval()
    plain, _ = no_skip.score(ids, am, no_skip.user_context(features, mask))
    torch.testing.assert_close(plain[0], plain[1], rtol=0, atol=1e-6)  # zero gates, no skip: no user signal


def test_skip_started_from_the_encoder_scores_as_the_encoder_seen_bias_included() -> None:
    """USER-LLM with the skip initialised from its encoder (and the LLM path at zero, as `build_model`
    starts it) ranks exactly as the sequence-only encoder, the encoder's seen bias included."""
    from models.perceiver import PerceiverConfig
    from models.user_encoder import UserEncoderConfig
    from models.user_tower import UserTowerConfig
    from training.userllm_setup import init_skip_from_encoder

    torch.manual_seed(0)
    encoder = UserEncoderConfig.tiny(seen_bias=True, tie_item_head=True)
    tower = UserTowerConfig(encoder=encoder, perceiver=PerceiverConfig.tiny(), append_last_event=True)
    config = UserLLMConfig.tiny(head_user_skip=True, tower=tower, num_items=99, num_categories=12)
    model = PersonalizedLM(config, tiny_llama()).eval()
    with torch.no_grad():
        model.tower.encoder.seen_bias.raw.fill_(-0.1)  # b = -5
        model.item_head.proj.weight.zero_()
    init_skip_from_encoder(model)
    features, mask, ids, am = _inputs([_events(5), _events(9, 3)])
    seen = features["item"] * mask
    items, _ = model.score(ids, am, model.user_context(features, mask), seen=seen)
    expected = model.tower.encoder.last_item_logits(features, mask, seen)
    torch.testing.assert_close(items, expected, rtol=1e-5, atol=1e-5)
    unmarked, _ = model.score(ids, am, model.user_context(features, mask))  # no history given: no bias
    moved = (items - unmarked).abs() > 1e-4
    assert moved[0, 2:7].all() and moved[0].sum() == 5 and not moved[:, 17:].any()


def test_last_event_token_is_the_encoders_newest_output_incrementally_too() -> None:
    from models.user_tower import UserTower, UserTowerConfig

    tower = UserTower(UserTowerConfig.tiny(append_last_event=True)).eval()
    features, mask = collate_events([_events(6), _events(3, 1), _events(0)], max_len=16)
    out = tower(features, mask)
    assert out.user_tokens.shape == (3, 17, 32) and out.user_mask[:, -1].tolist() == [True, True, False]
    torch.testing.assert_close(out.user_tokens[0, -1], out.past.hidden[0, 5], rtol=0, atol=0)
    first_f, first_m = collate_events([_events(4), _events(2, 1)], max_len=16)
    rest_f, rest_m = collate_events(
        [{k: v[4:] for k, v in _events(6).items()}, {k: v[2:] for k, v in _events(3, 1).items()}], max_len=16
    )
    step = tower(rest_f, rest_m, tower(first_f, first_m).past)
    torch.testing.assert_close(step.user_tokens, out.user_tokens[:2], rtol=1e-5, atol=1e-5)
