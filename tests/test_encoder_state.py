"""Batched packing of encoder states (what the worker stores) round-trips and keeps encoding exact."""

from __future__ import annotations

import torch

from models.encoder_state import EncoderState, pack_states, pad_packed, past_to_tensor, unpack_states
from models.features import collate_events
from models.user_encoder import UserEncoder, UserEncoderConfig


def _seq(n: int, offset: int) -> dict[str, list]:
    return {
        "item": [2 + (i + offset) % 9 for i in range(n)],
        "category": [[2 + i % 3] for i in range(n)],
        "rating": [2 + i % 4 for i in range(n)],
    }


def test_pack_slice_pad_unpack_round_trip_and_incremental_equality() -> None:
    model = UserEncoder(UserEncoderConfig.tiny()).eval()
    lengths = [3, 7, 1]
    features, mask = collate_events([_seq(n, i) for i, n in enumerate(lengths)], max_len=16)
    out = model(features, mask)
    packed = pack_states(out.past)  # (B, 2L + 1, Tp, D)
    per_user = [packed[b][:, out.past.key_mask[b]] for b in range(len(lengths))]
    for b, single in enumerate(out.past.split()):  # same bytes as the one-user packing
        torch.testing.assert_close(per_user[b], past_to_tensor(single), rtol=0, atol=0)
    batch, key_mask = pad_packed(per_user)
    state = unpack_states(batch, key_mask, n_heads=4)
    assert state.n_events.tolist() == lengths
    new_f, new_m = collate_events([_seq(2, 5), _seq(1, 6), _seq(3, 7)], max_len=16)
    got = model(new_f, new_m, state)
    full_f, full_m = collate_events(
        [
            {k: _seq(n, i)[k] + _seq(m, 5 + i)[k] for k in ("item", "category", "rating")}
            for i, (n, m) in enumerate(zip(lengths, [2, 1, 3], strict=True))
        ],
        max_len=16,
    )
    full = model(full_f, full_m)
    for b, (n, m) in enumerate(zip(lengths, [2, 1, 3], strict=True)):
        torch.testing.assert_close(got.hidden[b, :m], full.hidden[b, n : n + m], rtol=1e-5, atol=1e-5)
    assert isinstance(state, EncoderState)


def test_pack_in_half_precision() -> None:
    model = UserEncoder(UserEncoderConfig.tiny()).eval()
    features, mask = collate_events([_seq(4, 0)], max_len=16)
    past = model(features, mask).past
    half = pack_states(past, torch.float16)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), pack_states(past), rtol=1e-3, atol=1e-3)
