"""SDPA path == einsum reference (STYLE item 6, test f), mask semantics, no NaN on empty rows."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from models.attention import attention, reference_attention

B, H, SQ, SK, DH = 3, 4, 5, 7, 8


def _qkv(sq: int = SQ, sk: int = SK, kv_heads: int = H) -> tuple[torch.Tensor, ...]:
    return torch.randn(B, H, sq, DH), torch.randn(B, kv_heads, sk, DH), torch.randn(B, kv_heads, sk, DH)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("use_key_mask", [False, True])
def test_sdpa_matches_reference(causal: bool, use_key_mask: bool) -> None:
    q, k, v = _qkv()
    key_mask = torch.rand(B, SK) > 0.3 if use_key_mask else None
    if key_mask is not None:
        key_mask[:, -1] = True  # at least one visible key per row (also under the causal mask)
    out = attention(q, k, v, key_mask=key_mask, causal=causal)
    assert out.shape == (B, H, SQ, DH)
    assert_close(out, reference_attention(q, k, v, key_mask=key_mask, causal=causal))


def test_fully_masked_rows_are_zero_and_finite() -> None:
    q, k, v = _qkv()
    q.requires_grad_(True)
    key_mask = torch.ones(B, SK, dtype=torch.bool)
    key_mask[1] = False  # user 1 has no keys at all
    out = attention(q, k, v, key_mask=key_mask)
    assert torch.isfinite(out).all()
    assert_close(out[1], torch.zeros_like(out[1]), rtol=0, atol=0)
    assert_close(out, reference_attention(q, k, v, key_mask=key_mask))
    out.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_causal_is_bottom_right_aligned_for_cached_keys() -> None:
    """Queries for the last SQ positions of a length-SK sequence == those rows of the full computation."""
    qf, k, v = _qkv(sq=SK)
    full = attention(qf, k, v, causal=True)
    tail = attention(qf[:, :, -SQ:], k, v, causal=True)
    assert_close(tail, full[:, :, -SQ:])


def test_grouped_query_attention_matches_reference() -> None:
    q, k, v = _qkv(kv_heads=2)
    out = attention(q, k, v, causal=True)
    assert_close(out, reference_attention(q, k, v, causal=True))
    assert_close(out, attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), causal=True))


def test_extra_attn_mask_and_bad_key_mask() -> None:
    q, k, v = _qkv()
    extra = torch.rand(B, 1, SQ, SK) > 0.5
    assert_close(attention(q, k, v, attn_mask=extra), reference_attention(q, k, v, attn_mask=extra))
    with pytest.raises(ValueError):
        attention(q, k, v, key_mask=torch.ones(B, SK))  # float, not bool
