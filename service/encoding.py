"""User-side runtime of the worker (and of the generator's recompute path): history -> user_tokens.

Loads only the user tower (encoder + Perceiver) of the USER-LLM checkpoint, so a worker needs no
LLM. Incremental where the model allows: when the new events come right after the cached ones and
the cached run plus the new events fit in the encoder window, only the new events are encoded
against the cached key/value state (exactly what a full pass over the same events gives); otherwise
(no state, another model_version, an out-of-order event, a full window) the user is recomputed.

The window slides in chunks (`slide`): a recompute of a user with more than `window` events covers
only the newest `window - slide` of them, so the next `slide` events are incremental again and a
long history costs one recompute per `slide + 1` updates instead of one per update. The user tokens then
cover between `window - slide` and `window` of the newest events (docs/serving.md has the measured
quality effect); `slide=0` always recomputes over the last `window` events.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.checkpoint import load_checkpoint, load_state_strict
from models.encoder_state import EncoderState, pack_states, pad_packed, unpack_states
from models.features import collate_events
from models.user_tower import UserTower, UserTowerConfig
from service.codec import FeatureCodec
from service.user_store import CorruptRecord, StoredEvent, verified_array

TOWER_PREFIX = "tower."


@dataclass(frozen=True)
class Encoded:
    user_tokens: np.ndarray  # (L, Du) float16
    state: np.ndarray | None  # packed encoder state (2 n_layers + 1, T, D) float16
    state_keys: list[str]  # event keys the state covers, in order
    n_events: int  # events behind the tokens
    mode: str  # "incremental" | "full"


class UserTowerRuntime:
    """Encoder + Perceiver of one checkpoint, on CPU or CUDA, in eval mode."""

    def __init__(
        self,
        tower: UserTower,
        codec: FeatureCodec,
        model_version: str,
        device: str = "cpu",
        *,
        slide: int = 0,
    ) -> None:
        self.tower = tower.eval().to(device)
        self.codec = codec
        self.model_version = model_version
        self.device = device
        self.window = tower.config.encoder.window
        self.n_heads = tower.config.encoder.n_heads
        if not 0 <= slide < self.window:
            raise ValueError(f"slide must be in [0, window={self.window}), got {slide}")
        self.slide = slide  # room a recompute of a long history leaves for incremental events

    @classmethod
    def from_checkpoint(
        cls, directory: str | Path, device: str = "cpu", *, slide: int = 0
    ) -> UserTowerRuntime:
        ck = load_checkpoint(directory)
        tower = UserTower(UserTowerConfig(**ck.config["tower"]))
        state = {k[len(TOWER_PREFIX) :]: v for k, v in ck.state_dict.items() if k.startswith(TOWER_PREFIX)}
        load_state_strict(tower, state)
        codec = FeatureCodec.from_extras(ck.extras["vocab"], ck.extras["catalogue"])
        return cls(tower, codec, ck.model_version, device, slide=slide)

    def _features(
        self, seqs: Sequence[Sequence[StoredEvent]]
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        encoded = [self.codec.encode([(e.item_id, e.rating, e.text) for e in seq]) for seq in seqs]
        features, mask = collate_events(encoded, max_len=self.window)
        return {k: v.to(self.device) for k, v in features.items()}, mask.to(self.device)

    def _finish(
        self, tokens: torch.Tensor, past: EncoderState, keys_per_user: list[list[str]], mode: str
    ) -> list[Encoded]:
        """One fp16 conversion for the whole batch, then a cheap per-user slice of the real events."""
        packed = pack_states(past, torch.float16).cpu()  # (B, 2L + 1, Tp, D)
        key_mask = past.key_mask.cpu()
        tokens16 = tokens.to("cpu", torch.float16).numpy()
        return [
            Encoded(tokens16[b], packed[b][:, key_mask[b]].numpy(), keys, len(keys), mode)
            for b, keys in enumerate(keys_per_user)
        ]

    def span(self, n_events: int) -> int:
        """Events a recompute covers for a history of `n_events`: all of them while they fit in the
        window, else the newest `window - slide`."""
        return n_events if n_events <= self.window else self.window - self.slide

    @torch.inference_mode()
    def encode_full(self, histories: Sequence[Sequence[StoredEvent]]) -> list[Encoded]:
        """Recompute from the newest `span(len(history))` events of each (time-ordered) history."""
        windows = [list(h)[len(h) - self.span(len(h)) :] for h in histories]
        features, mask = self._features(windows)
        out = self.tower(features, mask)
        return self._finish(out.user_tokens, out.past, [[e.key for e in w] for w in windows], "full")

    @torch.inference_mode()
    def encode_incremental(
        self,
        states: Sequence[np.ndarray],
        state_keys: Sequence[list[str]],
        new_events: Sequence[Sequence[StoredEvent]],
    ) -> list[Encoded]:
        """Encode only `new_events` after each user's cached state (caller checked it fits)."""
        packed, key_mask = pad_packed([torch.from_numpy(s) for s in states])  # (B, 2L + 1, Tp, D) fp16
        past = unpack_states(
            packed.to(self.device, torch.float32), key_mask.to(self.device), n_heads=self.n_heads
        )
        features, mask = self._features(new_events)
        out = self.tower(features, mask, past)
        keys = [list(k) + [e.key for e in new] for k, new in zip(state_keys, new_events, strict=True)]
        return self._finish(out.user_tokens, out.past, keys, "incremental")

    def can_extend(
        self, state_keys: list[str], history: Sequence[StoredEvent], n_new: int, n_stored: int
    ) -> bool:
        """The cached state covers the newest stored events (a run that ends right before the `n_new`
        new events at the end of `history`), and the window has room for the new events after it.

        `history` may hold only the newest of the `n_stored` stored events (plus the new ones): the
        run is checked as far as `history` reaches. A state is always written together with the
        history it covers (service/user_store.py), so one that ends at the newest stored event covers
        the newest `len(state_keys)` stored events."""
        n_old = len(history) - n_new
        if not state_keys or n_old < 1 or len(state_keys) > n_stored or len(state_keys) + n_new > self.window:
            return False
        seen = min(n_old, len(state_keys))
        return [e.key for e in history[n_old - seen : n_old]] == state_keys[len(state_keys) - seen :]

    def state_of(self, raw: dict[bytes, bytes] | None) -> tuple[np.ndarray, list[str]] | None:
        """Decode a stored state hash when it belongs to this model_version; CorruptRecord when it does
        not verify (the caller recomputes the user in full)."""
        if not raw or raw.get(b"model_version", b"").decode(errors="replace") != self.model_version:
            return None
        keys_b = raw.get(b"keys", b"")
        kv = verified_array(
            raw.get(b"kv"), raw.get(b"shape"), raw.get(b"checksum"), self.model_version,
            keys_b.decode(errors="replace"),
        )  # fmt: skip
        try:
            keys = json.loads(keys_b)
        except ValueError as exc:
            raise CorruptRecord("unreadable state keys") from exc
        enc = self.tower.config.encoder
        if (
            kv.shape[::2] != (2 * enc.n_layers + 1, enc.d_model)
            or not isinstance(keys, list)
            or (len(keys) != kv.shape[1])
        ):
            raise CorruptRecord(f"state of shape {kv.shape} does not cover its {len(keys)} event keys")
        return kv, [str(k) for k in keys]
