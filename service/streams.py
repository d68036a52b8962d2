"""Event ingestion through Redis Streams, sharded by user, consumed by groups of encoder workers.

Producer: `publish()` XADDs each event to its user's shard stream (one pipeline). Client `event_id`s
are de-duplicated with `SET NX EX` before queuing. Consumer helpers wrap XREADGROUP (new and own
pending entries) and XAUTOCLAIM (entries of dead consumers). Requires Redis >= 6.2.

Based on: redis-py streams docs and the Redis Streams introduction (consumer groups, XAUTOCLAIM).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from service.keys import GROUP, Keys
from service.schemas import EventIn

DEDUP_TTL_S = 7 * 24 * 3600


@dataclass(frozen=True)
class StreamEvent:
    """One event as read back from a stream; `key` identifies it for idempotent application."""

    entry_id: str
    stream: str
    user_id: str
    item_id: str
    timestamp: float
    event_type: str
    rating: float | None
    text: str | None
    event_id: str | None
    error: str | None = None  # set when the entry could not be decoded (it goes to the dead-letter stream)
    raw: dict[str, str] | None = None  # the undecodable entry's fields, kept for the dead-letter stream

    @property
    def key(self) -> str:
        return f"c:{self.event_id}" if self.event_id else f"s:{self.entry_id}"

    def packed(self) -> str:
        """Compact JSON stored in the user's event hash."""
        return json.dumps(
            [self.item_id, self.timestamp, self.event_type, self.rating, self.text], separators=(",", ":")
        )


def _fields(event: EventIn) -> dict[Any, Any]:
    return {
        "u": event.user_id,
        "i": event.item_id,
        "t": repr(event.timestamp),
        "y": event.event_type,
        "r": "" if event.rating is None else repr(event.rating),
        "x": event.text or "",
        "e": event.event_id or "",
    }


def _finite(name: str, text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{name} is not a finite number: {text!r}")
    return value


def decode_entry(stream: str, entry_id: bytes | str, fields: dict[bytes, bytes] | None) -> StreamEvent:
    """A stream entry -> StreamEvent; an undecodable (or deleted) entry comes back with `error` set and
    its fields in `raw` (bytes that are not UTF-8 kept as lone surrogates, PEP 383: nothing is lost)."""
    eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    raw = {
        k.decode(errors="surrogateescape"): v.decode(errors="surrogateescape")
        for k, v in (fields or {}).items()
    }
    try:
        if not fields:
            raise ValueError("entry deleted from the stream while pending")
        f = {k.decode(): v.decode("utf-8") for k, v in fields.items()}
        return StreamEvent(
            entry_id=eid,
            stream=stream,
            user_id=f["u"],
            item_id=f["i"],
            timestamp=_finite("timestamp", f["t"]),
            event_type=f["y"],
            rating=_finite("rating", f["r"]) if f["r"] else None,
            text=f["x"] or None,
            event_id=f["e"] or None,
        )
    except (KeyError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        reason = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        return StreamEvent(eid, stream, "", "", 0.0, "", None, None, None, error=reason, raw=raw)


async def publish(
    redis: aioredis.Redis, keys: Keys, events: Sequence[EventIn], *, maxlen: int
) -> tuple[int, int]:
    """Queue events; returns (queued, duplicates). Duplicates: an `event_id` seen in the last week."""
    fresh = list(events)
    duplicates = 0
    with_ids = [e for e in events if e.event_id]
    if with_ids:
        pipe = redis.pipeline(transaction=False)
        for e in with_ids:
            pipe.set(keys.dedup(str(e.event_id)), b"1", nx=True, ex=DEDUP_TTL_S)
        claimed = dict(zip([id(e) for e in with_ids], await pipe.execute(), strict=True))
        fresh = [e for e in events if not e.event_id or claimed[id(e)]]
        duplicates = len(events) - len(fresh)
    if not fresh:
        return 0, duplicates
    pipe = redis.pipeline(transaction=False)
    for e in fresh:
        pipe.xadd(keys.stream(keys.shard_of(e.user_id)), _fields(e), maxlen=maxlen, approximate=True)
    try:
        await pipe.execute()
    except Exception:
        # Release the idempotency keys so that the client's retry is not taken for a duplicate.
        ids = [keys.dedup(str(e.event_id)) for e in fresh if e.event_id]
        if ids:
            await redis.delete(*ids)
        raise
    return len(fresh), duplicates


async def ensure_groups(redis: aioredis.Redis, keys: Keys) -> None:
    for stream in keys.streams():
        try:
            await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise


def _decode_batch(reply: Any) -> list[StreamEvent]:
    out: list[StreamEvent] = []
    for stream, entries in reply or []:
        name = stream.decode() if isinstance(stream, bytes) else stream
        out.extend(decode_entry(name, eid, fields) for eid, fields in entries)
    return out


async def read_new(
    redis: aioredis.Redis, keys: Keys, consumer: str, *, count: int, block_ms: int
) -> list[StreamEvent]:
    """New entries for this consumer across all shards (blocks up to `block_ms`)."""
    reply = await redis.xreadgroup(
        GROUP, consumer, {s: ">" for s in keys.streams()}, count=count, block=block_ms
    )
    return _decode_batch(reply)


async def read_own_pending(
    redis: aioredis.Redis, keys: Keys, consumer: str, *, count: int
) -> list[StreamEvent]:
    """Entries delivered to this consumer but never acknowledged (a restart re-processes them)."""
    reply = await redis.xreadgroup(GROUP, consumer, {s: "0" for s in keys.streams()}, count=count)
    return _decode_batch(reply)


async def claim_stale(
    redis: aioredis.Redis, keys: Keys, consumer: str, *, min_idle_ms: int, count: int
) -> list[StreamEvent]:
    """XAUTOCLAIM entries idle for `min_idle_ms` from any consumer (a dead worker's)."""
    out: list[StreamEvent] = []
    for stream in keys.streams():
        start = "0-0"
        while True:
            reply = await redis.xautoclaim(stream, GROUP, consumer, min_idle_ms, start_id=start, count=count)
            next_id, entries = reply[0], reply[1]
            out.extend(decode_entry(stream, eid, fields) for eid, fields in entries)
            # Entries deleted from the stream while pending come back as None / are dropped by Redis 7.
            next_id = next_id.decode() if isinstance(next_id, bytes) else next_id
            if next_id == "0-0" or len(out) >= count:
                break
            start = next_id
    return out


async def dead_letter(redis: aioredis.Redis, keys: Keys, events: Sequence[StreamEvent]) -> None:
    """Keep undecodable entries (with the reason) in `deadletter` for inspection; never drop silently."""
    pipe = redis.pipeline(transaction=False)
    for e in events:
        entry = {
            "stream": e.stream,
            "entry_id": e.entry_id,
            "error": e.error or "",
            "fields": json.dumps(e.raw),
        }
        pipe.xadd(keys.deadletter(), entry, maxlen=100_000, approximate=True)  # type: ignore[arg-type]
    await pipe.execute()


async def ack(redis: aioredis.Redis, events: Sequence[StreamEvent]) -> None:
    by_stream: dict[str, list[str]] = {}
    for e in events:
        by_stream.setdefault(e.stream, []).append(e.entry_id)
    pipe = redis.pipeline(transaction=False)
    for stream, ids in by_stream.items():
        pipe.xack(stream, GROUP, *ids)
    await pipe.execute()
