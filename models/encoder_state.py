"""The user encoder's incremental state: per-layer keys/values of the cached events, and its packing
into one tensor so a service can keep it as bytes (Redis) and bring many users back as one batch.

USER-LLM (arXiv 2402.13598) uses a causal user encoder; as with a decoder LLM's KV cache
(nanoGPT / HF `past_key_values`), a new event only needs the cached keys/values of earlier ones.

Shapes: B users, Tp cached events, L encoder layers, H heads, Dh head dim, D = H * Dh.
Packed layout per user: (2L + 1, Tp, D) = k_0, v_0, ..., k_{L-1}, v_{L-1}, hidden (heads merged).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "EncoderOutput",
    "EncoderState",
    "pack_states",
    "pad_packed",
    "past_from_tensor",
    "past_to_tensor",
    "unpack_states",
]


@dataclass(frozen=True)
class EncoderState:
    """Cached encoder state of a batch of users: everything needed to encode their next events."""

    keys: tuple[Tensor, ...]  # per layer (B, H, Tp, Dh)
    values: tuple[Tensor, ...]  # per layer (B, H, Tp, Dh)
    hidden: Tensor  # (B, Tp, D) final outputs of the cached events (Perceiver input)
    key_mask: Tensor  # (B, Tp) bool, True = real cached event
    n_events: Tensor  # (B,) long, real events seen per user

    def split(self) -> list[EncoderState]:
        """One compact (no padding slots) state per user."""
        out = []
        for b in range(self.hidden.shape[0]):
            keep = self.key_mask[b]  # (Tp,)
            out.append(
                EncoderState(
                    keys=tuple(k[b : b + 1, :, keep] for k in self.keys),
                    values=tuple(v[b : b + 1, :, keep] for v in self.values),
                    hidden=self.hidden[b : b + 1, keep],
                    key_mask=self.key_mask[b : b + 1, keep],
                    n_events=self.n_events[b : b + 1],
                )
            )
        return out

    @classmethod
    def stack(cls, states: Sequence[EncoderState]) -> EncoderState:
        """Batch single-or-multi-user states, right-padding the cached events."""
        t_max = max(s.hidden.shape[1] for s in states)

        def pad(x: Tensor, dim: int) -> Tensor:
            shape = list(x.shape)
            shape[dim] = t_max - x.shape[dim]
            return torch.cat([x, x.new_zeros(shape)], dim=dim)

        n_layers = len(states[0].keys)
        return cls(
            keys=tuple(torch.cat([pad(s.keys[i], 2) for s in states]) for i in range(n_layers)),
            values=tuple(torch.cat([pad(s.values[i], 2) for s in states]) for i in range(n_layers)),
            hidden=torch.cat([pad(s.hidden, 1) for s in states]),
            key_mask=torch.cat([pad(s.key_mask, 1) for s in states]),
            n_events=torch.cat([s.n_events for s in states]),
        )


@dataclass(frozen=True)
class EncoderOutput:
    hidden: Tensor  # (B, T, D) outputs of the new events, zeros at padding
    past: EncoderState  # state covering cached + new events


def past_to_tensor(past: EncoderState) -> Tensor:
    """Pack ONE user's state into one tensor (2L + 1, Tp, D): k_0, v_0, ..., k_{L-1}, v_{L-1}, hidden.

    L = n_layers; keys/values are stored head-merged (Tp, H * Dh = D). Store it with e.g.
    `past_to_tensor(s).half().numpy().tobytes()`; the shape follows from (n_layers, Tp, D).
    """
    if past.hidden.shape[0] != 1:
        raise ValueError("past_to_tensor packs one user; call past.split() first")
    (past,) = past.split()  # drop padding slots, so Tp == n_events
    kv = torch.stack([t for pair in zip(past.keys, past.values, strict=True) for t in pair])[
        :, 0
    ]  # (2L, H, Tp, Dh)
    return torch.cat([kv.transpose(1, 2).flatten(2), past.hidden], dim=0)  # (2L + 1, Tp, D)


def past_from_tensor(packed: Tensor, *, n_heads: int) -> EncoderState:
    """Inverse of `past_to_tensor` (B = 1); cast `packed` to the model dtype first (fp16 bytes -> float32)."""
    rows, length, dim = packed.shape
    if rows % 2 != 1 or dim % n_heads != 0:
        raise ValueError(f"not a packed encoder state: shape {tuple(packed.shape)}, n_heads {n_heads}")
    per_head = packed[:-1].unflatten(2, (n_heads, dim // n_heads))  # (2L, Tp, H, Dh)
    kv = per_head.transpose(1, 2).unsqueeze(1)  # (2L, 1, H, Tp, Dh)
    return EncoderState(
        keys=tuple(kv[0::2]),
        values=tuple(kv[1::2]),
        hidden=packed[-1:],
        key_mask=torch.ones(1, length, dtype=torch.bool, device=packed.device),
        n_events=torch.tensor([length], device=packed.device),
    )


# --- batched packing (one tensor op for a whole micro-batch of users) ---


def pack_states(past: EncoderState, dtype: torch.dtype | None = None) -> Tensor:
    """A batch state -> (B, 2L + 1, Tp, D) in `dtype` (default: the state's); slots where
    `past.key_mask` is False are padding. Casting first halves the bytes every later copy moves."""
    dtype = dtype or past.hidden.dtype
    kv = torch.stack([t.to(dtype) for pair in zip(past.keys, past.values, strict=True) for t in pair], dim=1)
    kv = kv.transpose(2, 3).flatten(3)  # (B, 2L, H, Tp, Dh) -> (B, 2L, Tp, D)
    return torch.cat([kv, past.hidden[:, None].to(dtype)], dim=1)  # (B, 2L + 1, Tp, D)


def unpack_states(packed: Tensor, key_mask: Tensor, *, n_heads: int) -> EncoderState:
    """Inverse of `pack_states`: packed (B, 2L + 1, Tp, D) and key_mask (B, Tp) -> EncoderState.

    Real cached events must come first in each row (right padding), as `pad_packed` writes them.
    """
    b, rows, length, dim = packed.shape
    if rows % 2 != 1 or dim % n_heads != 0 or key_mask.shape != (b, length):
        raise ValueError(
            f"not a packed encoder state batch: {tuple(packed.shape)}, mask {tuple(key_mask.shape)}"
        )
    kv = packed[:, :-1].unflatten(3, (n_heads, dim // n_heads)).transpose(2, 3)  # (B, 2L, H, Tp, Dh)
    return EncoderState(
        keys=tuple(kv[:, 0::2].unbind(1)),
        values=tuple(kv[:, 1::2].unbind(1)),
        hidden=packed[:, -1],
        key_mask=key_mask,
        n_events=key_mask.sum(dim=1),
    )


def pad_packed(states: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-user packed states (2L + 1, Tp_b, D) -> right-padded (B, 2L + 1, Tp, D) and key_mask (B, Tp)."""
    rows, _, dim = states[0].shape
    t_max = max(s.shape[1] for s in states)
    out = states[0].new_zeros(len(states), rows, t_max, dim)
    mask = torch.zeros(len(states), t_max, dtype=torch.bool, device=states[0].device)
    for i, s in enumerate(states):
        out[i, :, : s.shape[1]] = s
        mask[i, : s.shape[1]] = True
    return out, mask
