"""PerceiverResampler: shapes, padding invariance, batch == singles, SDPA == einsum reference."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.testing import assert_close

from models.attention import reference_attention
from models.perceiver import PerceiverConfig, PerceiverResampler
from models.user_encoder import UserEncoder, UserEncoderConfig


def _resampler(**overrides: object) -> PerceiverResampler:
    config = dataclasses.replace(PerceiverConfig.tiny(), **overrides)
    return PerceiverResampler(config, dim_input=24).eval()


@pytest.mark.parametrize("attend_to_self", [True, False])
def test_shapes(attend_to_self: bool) -> None:
    model = _resampler(latents_attend_to_self=attend_to_self)
    user_tokens = model(torch.randn(3, 7, 24), torch.ones(3, 7, dtype=torch.bool))
    assert user_tokens.shape == (3, 16, 32)
    assert_close(model(torch.randn(2, 5, 24)).shape, torch.Size([2, 16, 32]))  # mask=None: all real


@pytest.mark.parametrize("attend_to_self", [True, False])
def test_padding_changes_nothing(attend_to_self: bool) -> None:
    model = _resampler(latents_attend_to_self=attend_to_self)
    x = torch.randn(1, 6, 24)
    base = model(x, torch.ones(1, 6, dtype=torch.bool))
    padded_x = torch.cat([x, torch.randn(1, 4, 24)], dim=1)  # append 4 padding events
    padded_mask = torch.cat([torch.ones(1, 6, dtype=torch.bool), torch.zeros(1, 4, dtype=torch.bool)], dim=1)
    out = model(padded_x, padded_mask)
    assert_close(out, base, rtol=0, atol=1e-6)
    padded_x[:, 6:] = 100 * torch.randn(1, 4, 24)  # change the padded values: still identical
    assert_close(model(padded_x, padded_mask), out, rtol=0, atol=0)


def test_batch_equals_single_calls() -> None:
    model = _resampler()
    lengths = [7, 2, 5]
    x = torch.randn(3, 7, 24)
    mask = torch.arange(7)[None] < torch.tensor(lengths)[:, None]  # (B, T) right padding
    batch = model(x, mask)
    for b, n in enumerate(lengths):
        assert_close(batch[b : b + 1], model(x[b : b + 1, :n]), rtol=0, atol=1e-5)


def test_user_with_no_events_is_finite() -> None:
    for attend_to_self in (True, False):
        model = _resampler(latents_attend_to_self=attend_to_self)
        out = model(torch.randn(2, 3, 24), torch.zeros(2, 3, dtype=torch.bool))
        assert torch.isfinite(out).all()


def test_sdpa_path_matches_einsum_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _resampler()
    x, mask = torch.randn(2, 6, 24), torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    fast = model(x, mask)
    monkeypatch.setattr("models.perceiver.attention", reference_attention)
    assert_close(model(x, mask), fast)


def test_encoder_to_user_tokens_end_to_end() -> None:
    enc_config = UserEncoderConfig.tiny()
    encoder = UserEncoder(enc_config).eval()
    perceiver = PerceiverResampler(PerceiverConfig.tiny(), dim_input=enc_config.d_model).eval()
    feats = {"item": torch.randint(2, 99, (2, 5)), "category": torch.randint(0, 12, (2, 5, 2))}
    feats["rating"] = torch.randint(2, 8, (2, 5))
    mask = torch.tensor([[True] * 5, [True] * 2 + [False] * 3])
    out = encoder(feats, mask)
    user_tokens = perceiver(out.past.hidden, out.past.key_mask)
    assert user_tokens.shape == (2, 16, 32)
    single = encoder({k: v[1:, :2] for k, v in feats.items()}, mask[1:, :2])
    assert_close(user_tokens[1:], perceiver(single.past.hidden, single.past.key_mask), rtol=0, atol=1e-5)


def test_config_invariants() -> None:
    for field in ("num_latents", "dim_latent", "depth", "heads", "dim_head", "ff_mult"):
        with pytest.raises(ValueError):
            dataclasses.replace(PerceiverConfig.tiny(), **{field: 0})
    config = PerceiverConfig()
    assert config.num_latents == 16 and config.inner_dim == config.heads * config.dim_head
