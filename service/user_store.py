"""Per-user records in Redis: history, incremental encoder state, user_tokens; compare-and-set writes.

Several workers may hold events of the same user (a consumer group spreads a shard's entries over
its consumers, and XAUTOCLAIM hands a dead worker's entries to others), so an update is optimistic:
read the user's record and its revision, compute, then write with a Lua script that applies only
if the revision is unchanged (else the worker re-reads and recomputes). Events are keyed (client
`event_id`, else the stream entry id) and stored in a sorted set, so re-applying an event after a
crash between write and XACK changes nothing: every event is applied exactly once.

Integrity: user tokens and encoder state are stored with their shape, dtype, `model_version` and a
checksum over all of them (`checksum`); a stored value that does not verify raises `CorruptRecord`
on read (serving recomputes the user from history) and a stored event that does not decode is
reported in `UserRecord.corrupt` (the worker moves it to the dead-letter stream), never served.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import redis.asyncio as aioredis

from models.vocab import item_sort_key
from service.keys import Keys

# KEYS: hist, evt, emb, state, seen, items, forgotten. ARGV[1]: expected revision ("" = no record yet),
# ARGV[2]: JSON {add: [[key, score, packed]], drop: [key], emb: {...}, state: {...} | null,
# seen: {...}, new_items: [[item, time]], items_keep: int, history_keep: int, n_new: int, oldest_ms: int,
# state_ttl_ms: int (> 0: the state expires after that long without an update)};
# bytes fields come as ARGV[3] (tokens), ARGV[4] (state kv). A user forgotten (DELETE) after the oldest
# added event was queued is not written. Past `history_keep` events (0: no cap) the oldest by time are
# removed (events tied in time go in the order of their keys).
_CAS_SCRIPT = """
local rev = redis.call('HGET', KEYS[3], 'rev')
if (rev or '') ~= ARGV[1] then return 0 end
local u = cjson.decode(ARGV[2])
local forgotten = redis.call('GET', KEYS[7])
if forgotten and u.oldest_ms > 0 and tonumber(forgotten) >= u.oldest_ms then return 0 end
for _, e in ipairs(u.add) do
  redis.call('ZADD', KEYS[1], e[2], e[1])
  redis.call('HSET', KEYS[2], e[1], e[3])
end
for _, k in ipairs(u.drop) do
  redis.call('ZREM', KEYS[1], k)
  redis.call('HDEL', KEYS[2], k)
end
local over = u.history_keep > 0 and redis.call('ZCARD', KEYS[1]) - u.history_keep or 0
if over > 0 then
  local old = redis.call('ZRANGE', KEYS[1], 0, over - 1)
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, over - 1)
  for i = 1, #old, 1000 do redis.call('HDEL', KEYS[2], unpack(old, i, math.min(i + 999, #old))) end
end
local fields = {}
for k, v in pairs(u.emb) do table.insert(fields, k); table.insert(fields, tostring(v)) end
redis.call('HSET', KEYS[3], 'user_tokens', ARGV[3], 'rev', tostring((tonumber(rev) or 0) + 1), unpack(fields))
if u.state == cjson.null then
  redis.call('DEL', KEYS[4])
else
  redis.call('HSET', KEYS[4], 'kv', ARGV[4], 'shape', u.state.shape, 'keys', u.state.keys,
             'model_version', u.state.model_version, 'checksum', u.state.checksum)
  if u.state_ttl_ms > 0 then redis.call('PEXPIRE', KEYS[4], u.state_ttl_ms)
  else redis.call('PERSIST', KEYS[4]) end
end
if u.n_new > 0 then
  redis.call('HINCRBY', KEYS[5], 'n_events', u.n_new)
  redis.call('HINCRBY', KEYS[5], 'unknown_items', u.n_unknown)
  redis.call('HSET', KEYS[5], 'last_event_time', tostring(u.last_time))
end
for _, it in ipairs(u.new_items) do redis.call('ZADD', KEYS[6], 'GT', it[2], it[1]) end
if u.items_keep > 0 and #u.new_items > 0 then
  redis.call('ZREMRANGEBYRANK', KEYS[6], 0, -u.items_keep - 1)
end
return 1
"""


class CorruptRecord(ValueError):
    """A stored value that does not decode or does not verify against its checksum."""


def checksum(data: bytes, *meta: str) -> str:
    """BLAKE2b-64 over the bytes and their metadata (shape, dtype, model_version, ...)."""
    h = hashlib.blake2b(digest_size=8)
    for part in meta:
        h.update(part.encode())
        h.update(b"\0")
    h.update(data)
    return h.hexdigest()


def verified_array(
    data: bytes | None, shape: bytes | None, stored_sum: bytes | None, *meta: str
) -> np.ndarray:
    """fp16 array from stored bytes + JSON shape after checking size and checksum; else CorruptRecord."""
    if data is None or shape is None:
        raise CorruptRecord("bytes or shape missing")
    try:
        dims = tuple(int(d) for d in json.loads(shape))
    except (ValueError, TypeError) as exc:
        raise CorruptRecord(f"unreadable shape {shape[:40]!r}") from exc
    if any(d < 0 for d in dims) or math.prod(dims) * 2 != len(data):
        raise CorruptRecord(f"{len(data)} bytes do not hold a float16 array of shape {dims}")
    expected = checksum(data, shape.decode(errors="replace"), "float16", *meta)
    if stored_sum is None or stored_sum.decode(errors="replace") != expected:
        raise CorruptRecord("checksum mismatch")
    return np.frombuffer(bytearray(data), dtype=np.float16).reshape(dims)


@dataclass(frozen=True)
class StoredEvent:
    key: str
    item_id: str
    timestamp: float
    event_type: str
    rating: float | None
    text: str | None

    @property
    def order(self) -> tuple[float, tuple[int, int, str], str]:
        """Time order with the data sets' tie-break (item id ascending), then the event key."""
        return (self.timestamp, item_sort_key(self.item_id), self.key)

    @classmethod
    def unpack(cls, key: str, packed: bytes | str) -> StoredEvent:
        """Decode a stored event; CorruptRecord when it is not what `pack` writes."""
        try:
            item, ts, etype, rating, text = json.loads(packed)
        except (ValueError, TypeError) as exc:  # bad JSON or UTF-8, not a 5-list
            raise CorruptRecord(f"not a packed event: {exc}") from exc
        number = (int, float)
        if (
            not isinstance(item, str | int)
            or isinstance(ts, bool)
            or not isinstance(ts, number)
            or not math.isfinite(ts)
            or not isinstance(etype, str)
            or not (rating is None or (isinstance(rating, number) and not isinstance(rating, bool)))
            or not (text is None or isinstance(text, str))
        ):
            raise CorruptRecord("a packed event field has the wrong type")
        return cls(key, str(item), float(ts), etype, rating, text)

    def pack(self) -> str:
        return json.dumps(
            [self.item_id, self.timestamp, self.event_type, self.rating, self.text], separators=(",", ":")
        )


@dataclass
class UserRecord:
    """What a worker reads of one user before updating it: the newest events only (enough for the
    encoder window), not the whole history."""

    user_id: str
    rev: str  # "" when the user has no embedding record yet
    events: list[StoredEvent]  # the newest stored events (see `read_users`), time-ordered
    state: dict[bytes, bytes] | None  # raw `state` hash or None
    emb_model_version: str | None
    corrupt: list[tuple[str, bytes, str]] = field(default_factory=list)  # (key, raw, reason) not decoded
    forgotten_ms: int | None = None  # time of the user's last DELETE (within FORGET_TTL_S), if any
    n_stored: int = 0  # events in the user's whole stored history
    stored: set[str] = field(default_factory=set)  # of the keys asked about, those already stored


def _s(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


# KEYS: hist, evt, emb, state, forgotten. ARGV[1]: how many of the newest events to return; ARGV[2..]:
# event keys to look up. The newest events are those with a score (time) at least that of the n-th
# newest, so events tied in time with it all come back (the caller orders ties by item id). Returns
# {rev + model_version, state hash, forgotten, number of stored events, event keys, packed events,
# packed values of the looked-up keys}.
_READ_SCRIPT = """
local n = tonumber(ARGV[1])
local card = redis.call('ZCARD', KEYS[1])
local keys = {}
if card > n then
  local nth = redis.call('ZRANGE', KEYS[1], -n, -n, 'WITHSCORES')
  keys = redis.call('ZRANGE', KEYS[1], nth[2], '+inf', 'BYSCORE')
elseif card > 0 then
  keys = redis.call('ZRANGE', KEYS[1], 0, -1)
end
local packed, asked = {}, {}
for i = 1, #keys, 1000 do
  for _, v in ipairs(redis.call('HMGET', KEYS[2], unpack(keys, i, math.min(i + 999, #keys)))) do
    table.insert(packed, v)
  end
end
for i = 2, #ARGV, 1000 do
  for _, v in ipairs(redis.call('HMGET', KEYS[2], unpack(ARGV, i, math.min(i + 999, #ARGV)))) do
    table.insert(asked, v and 1 or 0)
  end
end
return {redis.call('HMGET', KEYS[3], 'rev', 'model_version'), redis.call('HGETALL', KEYS[4]),
        redis.call('GET', KEYS[5]), card, keys, packed, asked}
"""


async def read_users(
    redis: aioredis.Redis,
    keys: Keys,
    user_ids: list[str],
    *,
    newest: int,
    asked: dict[str, list[str]] | None = None,
) -> dict[str, UserRecord]:
    """The users' records with their `newest` stored events (more when events tie in time with the
    oldest of them) and, per user, which of the event keys in `asked` are already stored: one
    script call per user, all in one pipeline. Reading a bounded tail instead of the whole history
    keeps a worker's update cost independent of `history_keep`."""
    script = redis.register_script(_READ_SCRIPT)
    asked = asked or {}
    pipe = redis.pipeline(transaction=False)
    for u in user_ids:
        k = keys.user_keys(u)
        await script(
            keys=[k[0], k[1], k[2], k[3], keys.forgotten(u)], args=[newest, *asked.get(u, [])], client=pipe
        )
    replies = await pipe.execute()
    out = {}
    for u, reply in zip(user_ids, replies, strict=True):
        (rev, version), state, forgotten, card, event_keys, packed, found = reply
        events, corrupt = _decode_events(
            {k: v for k, v in zip(event_keys, packed, strict=True) if v is not None}
        )
        out[u] = UserRecord(
            u, _s(rev) or "", events, dict(zip(state[::2], state[1::2], strict=True)) or None, _s(version),
            corrupt, None if forgotten is None else int(forgotten), int(card),
            {k for k, hit in zip(asked.get(u, []), found, strict=True) if hit},
        )  # fmt: skip
    return out


def _decode_events(evt: dict[bytes, bytes]) -> tuple[list[StoredEvent], list[tuple[str, bytes, str]]]:
    events, corrupt = [], []
    for k, v in evt.items():
        key = k.decode(errors="replace")
        try:
            events.append(StoredEvent.unpack(key, v))
        except CorruptRecord as exc:
            corrupt.append((key, v, str(exc)))
    return sorted(events, key=lambda e: e.order), corrupt


@dataclass
class UserUpdate:
    user_id: str
    expected_rev: str
    add: list[StoredEvent]
    drop: list[str]
    user_tokens: np.ndarray  # (L, Du) float16
    model_version: str
    n_events_encoded: int
    last_event_key: str
    state_kv: np.ndarray | None  # packed encoder state (float16) or None
    state_keys: list[str]
    n_unknown: int
    new_items: list[tuple[str, float]]  # (item id, newest event time) of the added events
    oldest_ms: int = 0  # queue time (stream entry id) of the oldest added event; 0: nothing added
    items_keep: int = 10_000  # newest items kept in the user's seen-items set (0: no cap)
    history_keep: int = 0  # newest events kept in the user's history (0: no cap)
    state_ttl_s: int = 0  # the state expires after this long without an update (0: kept)


async def write_updates(redis: aioredis.Redis, keys: Keys, updates: list[UserUpdate]) -> list[bool]:
    """Apply updates with compare-and-set; returns per update whether it was applied."""
    script = redis.register_script(_CAS_SCRIPT)
    pipe = redis.pipeline(transaction=False)
    now = time.time()
    for up in updates:
        u = up.user_id
        tokens = up.user_tokens.astype(np.float16).tobytes()
        tokens_shape = json.dumps(list(up.user_tokens.shape))
        state_kv = b"" if up.state_kv is None else up.state_kv.astype(np.float16).tobytes()
        state_shape = "" if up.state_kv is None else json.dumps(list(up.state_kv.shape))
        state_keys = json.dumps(up.state_keys)
        payload: dict[str, Any] = {
            "add": [[e.key, e.timestamp, e.pack()] for e in up.add],
            "drop": up.drop,
            "emb": {
                "shape": tokens_shape,
                "checksum": checksum(tokens, tokens_shape, "float16", up.model_version),
                "dtype": "float16",
                "model_version": up.model_version,
                "updated_at": repr(now),
                "last_event_id": up.last_event_key,
                "n_events": up.n_events_encoded,
            },
            "state": None
            if up.state_kv is None
            else {
                "shape": state_shape,
                "keys": state_keys,
                "model_version": up.model_version,
                "checksum": checksum(state_kv, state_shape, "float16", up.model_version, state_keys),
            },
            "n_new": len(up.add),
            "n_unknown": up.n_unknown,
            "last_time": max((e.timestamp for e in up.add), default=0.0),
            "new_items": [[item, t] for item, t in up.new_items],
            "items_keep": up.items_keep,
            "history_keep": up.history_keep,
            "state_ttl_ms": up.state_ttl_s * 1000,
            "oldest_ms": up.oldest_ms,
        }
        argv: list[bytes | str] = [
            up.expected_rev,
            json.dumps(payload),
            tokens,
            state_kv,
        ]
        await script(
            keys=[*keys.user_keys(u), keys.forgotten(u)],
            args=argv,
            client=pipe,
        )
    replies = await pipe.execute()
    return [bool(r) for r in replies]


FORGET_TTL_S = 30 * 24 * 3600  # how long queued events older than a deletion keep being dropped


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


async def forget_user(redis: aioredis.Redis, keys: Keys, user_id: str) -> int:
    """Remove a user's history, state, tokens, seen items and de-duplication keys; events of the user
    still queued (accepted before now, by Redis' clock) are dropped by the workers. Returns the number
    of keys removed."""
    pattern = _glob_escape(keys.dedup(user_id, "")) + "*"
    dedup = [k async for k in redis.scan_iter(match=pattern, count=1000)]
    seconds, micros = await redis.time()
    pipe = redis.pipeline(transaction=False)
    pipe.set(keys.forgotten(user_id), str(seconds * 1000 + micros // 1000), ex=FORGET_TTL_S)
    pipe.delete(*keys.user_keys(user_id), *dedup)
    _, removed = await pipe.execute()
    return int(removed)


# --- reads for serving ---


@dataclass(frozen=True)
class CachedTokens:
    user_tokens: np.ndarray  # (L, Du) float16
    model_version: str
    updated_at: float
    n_events: int


async def read_tokens(redis: aioredis.Redis, keys: Keys, user_id: str) -> CachedTokens | None:
    """The user's cached tokens; None when there are none; CorruptRecord when they do not verify."""
    fields = ["user_tokens", "shape", "model_version", "updated_at", "n_events", "checksum"]
    raw = cast(list[bytes | None], await redis.hmget(keys.emb(user_id), fields))
    tokens_b, shape_b, version, updated, n_events, stored_sum = raw
    if tokens_b is None and shape_b is None and version is None:
        return None
    if version is None:
        raise CorruptRecord("model_version missing")
    tokens = verified_array(tokens_b, shape_b, stored_sum, version.decode(errors="replace"))
    try:
        return CachedTokens(tokens, version.decode(), float(updated or 0), int(n_events or 0))
    except ValueError as exc:
        raise CorruptRecord(f"unreadable metadata: {exc}") from exc


async def read_history(redis: aioredis.Redis, keys: Keys, user_id: str) -> list[StoredEvent]:
    """The user's decodable stored events, time-ordered."""
    evt = cast(dict[bytes, bytes], await redis.hgetall(keys.evt(user_id)))
    return _decode_events(evt)[0]


async def read_seen_items(redis: aioredis.Redis, keys: Keys, user_id: str) -> set[str]:
    members = cast(list[bytes], await redis.zrange(keys.items(user_id), 0, -1))
    return {m.decode() for m in members}


async def read_user_info(redis: aioredis.Redis, keys: Keys, user_id: str) -> dict[str, Any]:
    pipe = redis.pipeline(transaction=False)
    pipe.hgetall(keys.seen(user_id))
    pipe.hmget(keys.emb(user_id), ["model_version", "updated_at", "n_events"])
    seen: dict[bytes, bytes]
    emb: list[bytes | None]
    seen, emb = await pipe.execute()
    return {"seen": {k.decode(): v.decode() for k, v in seen.items()}, "emb": [_s(x) for x in emb]}
