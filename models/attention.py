"""Masked multi-head attention shared by the user encoder, the Perceiver and the LLM side.

One production path, `attention`, wraps `F.scaled_dot_product_attention` (SDPA) with boolean
masks; `reference_attention` is the readable einsum + softmax version used only by tests
(STYLE item 6, test f). References: nanoGPT `CausalSelfAttention` (SDPA with a readable
fallback); lucidrains flamingo-pytorch / perceiver-pytorch (einsum reference).

Mask conventions (True = attend, everywhere):
  - `key_mask` (B, Sk): padding mask over keys.
  - `causal`: query i may see key j iff j <= i + (Sk - Sq), i.e. the causal diagonal is aligned
    to the *bottom right*. With Sq == Sk this is the usual triangle; with a key/value cache
    (Sk = past + Sq) the new queries see the whole past plus themselves. SDPA's own
    `is_causal` aligns top-left, which is wrong for cached decoding, so we build the mask.
  - `attn_mask`: any extra bool mask broadcastable to (B, H, Sq, Sk).
  - A query row whose keys are all masked returns zeros, not NaN.
  - Grouped-query attention: k/v may carry fewer heads (Hk dividing H); they are repeated.

Shapes: B batch, H query heads, Hk key/value heads, Sq queries, Sk keys, Dh head dim.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["attention", "build_attention_mask", "reference_attention"]


# --- helpers ---


def build_attention_mask(
    *,
    batch: int,
    q_len: int,
    k_len: int,
    device: torch.device,
    key_mask: Tensor | None = None,
    causal: bool = False,
    attn_mask: Tensor | None = None,
) -> Tensor | None:
    """Combine the mask options into one bool mask (B or 1, 1 or H, Sq, Sk), or None if unmasked."""
    mask: Tensor | None = None
    if causal:
        i = torch.arange(q_len, device=device)[:, None]  # (Sq, 1)
        j = torch.arange(k_len, device=device)[None, :]  # (1, Sk)
        mask = (j <= i + (k_len - q_len))[None, None]  # (1, 1, Sq, Sk)
    if key_mask is not None:
        if key_mask.dtype != torch.bool or key_mask.shape != (batch, k_len):
            expected = f"bool ({batch}, {k_len})"
            raise ValueError(f"key_mask must be {expected}, got {key_mask.dtype} {tuple(key_mask.shape)}")
        km = key_mask[:, None, None, :]  # (B, 1, 1, Sk)
        mask = km if mask is None else mask & km
    if attn_mask is not None:
        if attn_mask.dtype != torch.bool:
            raise ValueError("attn_mask must be a bool tensor (True = attend)")
        mask = attn_mask if mask is None else mask & attn_mask
    return mask


def _repeat_kv(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    heads, kv_heads = q.shape[1], k.shape[1]
    if kv_heads == heads:
        return k, v
    if heads % kv_heads != 0:
        raise ValueError(f"query heads {heads} not divisible by key/value heads {kv_heads}")
    rep = heads // kv_heads
    return k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)  # (B, H, Sk, Dh)


# --- production path ---


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    key_mask: Tensor | None = None,
    causal: bool = False,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
) -> Tensor:
    """Scaled dot-product attention with boolean masks (True = attend).

    Args:
        q: (B, H, Sq, Dh) queries.
        k: (B, Hk, Sk, Dh) keys; Hk divides H.
        v: (B, Hk, Sk, Dh) values.
        key_mask: (B, Sk) bool, False marks padding keys.
        causal: bottom-right aligned causal mask (see module docstring).
        attn_mask: optional extra bool mask broadcastable to (B, H, Sq, Sk).
        dropout_p: attention dropout; pass 0.0 at eval time.

    Returns:
        (B, H, Sq, Dh); rows with no visible key are zeros.
    """
    batch, _, q_len, _ = q.shape
    k_len = k.shape[2]
    k, v = _repeat_kv(q, k, v)
    mask = build_attention_mask(
        batch=batch,
        q_len=q_len,
        k_len=k_len,
        device=q.device,
        key_mask=key_mask,
        causal=causal,
        attn_mask=attn_mask,
    )
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    has_key = mask.any(dim=-1, keepdim=True)  # (B|1, H|1, Sq, 1)
    # Let empty rows attend everywhere (finite softmax), then zero them: no NaN in values or grads.
    safe_mask = mask | ~has_key  # (B|1, H|1, Sq, Sk)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=safe_mask, dropout_p=dropout_p)  # (B, H, Sq, Dh)
    return out * has_key.to(out.dtype)


# --- test-only reference ---


def reference_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    key_mask: Tensor | None = None,
    causal: bool = False,
    attn_mask: Tensor | None = None,
) -> Tensor:
    """Einsum + softmax attention with the same semantics as `attention` (tests only, no dropout)."""
    batch, _, q_len, dim_head = q.shape
    k, v = _repeat_kv(q, k, v)
    mask = build_attention_mask(
        batch=batch,
        q_len=q_len,
        k_len=k.shape[2],
        device=q.device,
        key_mask=key_mask,
        causal=causal,
        attn_mask=attn_mask,
    )
    sim = torch.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(dim_head)  # (B, H, Sq, Sk)
    if mask is not None:
        sim = sim.masked_fill(~mask, float("-inf"))
    attn = sim.softmax(dim=-1).nan_to_num(0.0)  # all-masked rows -> zeros
    return torch.einsum("bhij,bhjd->bhid", attn, v)  # (B, H, Sq, Dh)
