"""GatedCrossAttentionBlock: identity at init, shapes, masking, einsum reference."""

from __future__ import annotations

import math

import torch
from torch.testing import assert_close

from models.attention import reference_attention
from models.cross_attention import GatedCrossAttentionBlock

B, S, L, D, DU, H, DH = 3, 5, 16, 32, 24, 4, 8


def _block(gate: float = 0.0) -> GatedCrossAttentionBlock:
    block = GatedCrossAttentionBlock(dim=D, dim_context=DU, heads=H, dim_head=DH, ff_mult=2)
    with torch.no_grad():
        block.attn_gate.fill_(gate)
        block.ff_gate.fill_(gate)
    return block


def test_shapes() -> None:
    block = _block(1.0)
    k, v = block.context_kv(torch.randn(B, L, DU))
    assert k.shape == v.shape == (B, H, L, DH)
    assert block(torch.randn(B, S, D), (k, v)).shape == (B, S, D)


def test_zero_gates_are_the_identity_exactly() -> None:
    block = _block(0.0)
    x = torch.randn(B, S, D)
    out = block(x, block.context_kv(torch.randn(B, L, DU)))
    assert_close(out, x, rtol=0, atol=0)


def test_nonzero_gates_change_the_output() -> None:
    block = _block(0.5)
    x = torch.randn(B, S, D)
    out = block(x, block.context_kv(torch.randn(B, L, DU)))
    assert (out - x).abs().max() > 1e-3


def test_rows_without_user_tokens_are_unchanged_and_padding_is_ignored() -> None:
    block = _block(0.7)
    x, ctx = torch.randn(B, S, D), torch.randn(B, L, DU)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0] = False  # cold-start user
    mask[1, 10:] = False  # six padding tokens
    out = block(x, block.context_kv(ctx), mask)
    assert_close(out[0], x[0], rtol=0, atol=0)
    alone = block(x[1:2], block.context_kv(ctx[1:2, :10]))  # row 1 without its padding
    assert_close(out[1], alone[0], rtol=1e-5, atol=1e-6)
    assert (out[2] - x[2]).abs().max() > 1e-3


def test_matches_einsum_reference() -> None:
    block = _block(0.3)
    x, ctx = torch.randn(B, S, D), torch.randn(B, L, DU)
    mask = torch.rand(B, L) > 0.3
    k, v = block.context_kv(ctx)
    q = block.q_proj(block.norm(x)).view(B, S, H, DH).transpose(1, 2)  # (B, H, S, Dh)
    attn = reference_attention(q, k, v, key_mask=mask).transpose(1, 2).reshape(B, S, H * DH)
    y = x + math.tanh(0.3) * block.o_proj(attn)
    expected = y + math.tanh(0.3) * block.mlp(y)
    assert_close(block(x, (k, v), mask), expected, rtol=1e-5, atol=1e-6)


def test_gradients_reach_the_gates_at_zero_init() -> None:
    block = _block(0.0)
    x, ctx = torch.randn(B, S, D), torch.randn(B, L, DU)
    block(x, block.context_kv(ctx)).pow(2).sum().backward()
    assert block.attn_gate.grad is not None and block.attn_gate.grad.abs().item() > 0
    assert block.ff_gate.grad is not None and block.ff_gate.grad.abs().item() > 0
