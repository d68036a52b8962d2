"""Event ingestion through Redis Streams, sharded by user, consumed by groups of encoder workers.

Producer: `publish()` XADDs each event to its user's shard stream (one pipeline). Client `event_id`s
are de-duplicated per user with `SET NX EX` before queuing. Streams are never capped at XADD time (an
approximate MAXLEN would trim entries no worker has read): `backlog()` tells the gateway how many
entries wait, so it can refuse new ones past a limit, and `trim_acknowledged()` removes only entries
below every group's last-delivered and pending ids. Consumer helpers wrap XREADGROUP (new and own
pending entries) and XAUTOCLAIM (entries of dead consumers). Requires Redis >= 7.0 (group `lag`).

Based on: redis-py streams docs and the Redis Streams introduction (consumer groups, XAUTOCLAIM,
XTRIM MINID, XINFO GROUPS).
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
DEADLETTER_MAXLEN = 100_000  # the dead-letter stream is for inspection; its oldest entries go first


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
    redis: aioredis.Redis, keys: Keys, events: Sequence[EventIn], *, dedup_ttl_s: int = DEDUP_TTL_S
) -> tuple[int, int]:
    """Queue events; returns (queued, duplicates). Duplicates: an `event_id` of the same user seen in
    the last `dedup_ttl_s` seconds (a week by default)."""
    fresh = list(events)
    duplicates = 0
    with_ids = [e for e in events if e.event_id]
    if with_ids:
        pipe = redis.pipeline(transaction=False)
        for e in with_ids:
            pipe.set(keys.dedup(e.user_id, str(e.event_id)), b"1", nx=True, ex=dedup_ttl_s)
        claimed = dict(zip([id(e) for e in with_ids], await pipe.execute(), strict=True))
        fresh = [e for e in events if not e.event_id or claimed[id(e)]]
        duplicates = len(events) - len(fresh)
    if not fresh:
        return 0, duplicates
    pipe = redis.pipeline(transaction=False)
    for e in fresh:
        pipe.xadd(keys.stream(keys.shard_of(e.user_id)), _fields(e))
    try:
        await pipe.execute()
    except Exception:
        # Release the idempotency keys so that the client's retry is not taken for a duplicate.
        ids = [keys.dedup(e.user_id, str(e.event_id)) for e in fresh if e.event_id]
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


def _entry_fields(e: StreamEvent) -> dict[str, str]:
    if e.raw is not None:
        return e.raw
    return {
        "u": e.user_id, "i": e.item_id, "t": repr(e.timestamp), "y": e.event_type,
        "r": "" if e.rating is None else repr(e.rating), "x": e.text or "", "e": e.event_id or "",
    }  # fmt: skip


async def dead_letter(
    redis: aioredis.Redis, keys: Keys, events: Sequence[StreamEvent], reason: str | None = None
) -> None:
    """Keep entries that cannot be applied (undecodable, or their user's update failed: `reason`) in
    `deadletter` with the reason and their fields, for inspection and replay; never drop silently."""
    pipe = redis.pipeline(transaction=False)
    for e in events:
        entry = {
            "kind": "stream_entry",
            "stream": e.stream,
            "entry_id": e.entry_id,
            "error": reason or e.error or "",
            "fields": json.dumps(_entry_fields(e)),
        }
        pipe.xadd(keys.deadletter(), entry, maxlen=DEADLETTER_MAXLEN, approximate=True)  # type: ignore[arg-type]
    await pipe.execute()


async def dead_letter_stored(
    redis: aioredis.Redis, keys: Keys, user_id: str, stored: Sequence[tuple[str, bytes, str]]
) -> None:
    """Keep a user's stored events that cannot be decoded (key, raw value, reason) in `deadletter`."""
    pipe = redis.pipeline(transaction=False)
    for key, raw, reason in stored:
        entry = {
            "kind": "stored_event",
            "user_id": user_id,
            "key": key,
            "error": reason,
            "fields": raw.decode("utf-8", errors="replace"),
        }
        pipe.xadd(keys.deadletter(), entry, maxlen=DEADLETTER_MAXLEN, approximate=True)  # type: ignore[arg-type]
    await pipe.execute()


async def backlog(redis: aioredis.Redis, keys: Keys) -> int:
    """Entries waiting for the `encoders` group over all shards: not yet delivered (`lag`) plus
    delivered and not acknowledged (`pending`). A shard whose group does not exist yet, or whose lag
    Redis cannot tell, counts its whole length (an over-estimate)."""
    pipe = redis.pipeline(transaction=False)
    for stream in keys.streams():
        pipe.xinfo_groups(stream)
        pipe.xlen(stream)
    replies = await pipe.execute(raise_on_error=False)
    total = 0
    for groups, length in zip(replies[0::2], replies[1::2], strict=True):
        if isinstance(length, Exception):
            raise length
        group = None if isinstance(groups, Exception) else _group_info(groups)
        if group is None:
            total += int(length)
            continue
        lag = group.get("lag")  # None when Redis cannot tell (entries deleted in between): the length
        total += int(length) if lag is None else int(group.get("pending") or 0) + int(lag)
    return total


def _group_info(groups: Any) -> dict[str, Any] | None:
    for g in groups or []:
        name = g.get("name")
        if (name.decode() if isinstance(name, bytes) else name) == GROUP:
            return {k if isinstance(k, str) else k.decode(): v for k, v in g.items()}
    return None


def _next_id(entry_id: str) -> str:
    ms, seq = entry_id.split("-")
    return f"{ms}-{int(seq) + 1}"


async def trim_acknowledged(redis: aioredis.Redis, keys: Keys, *, approximate: bool = True) -> int:
    """XTRIM each shard below the oldest entry the group still needs; returns entries removed.

    The group's last-delivered id is read *before* its pending summary: an entry delivered after the
    first read has a larger id, and one delivered before it is either acknowledged or in the summary.
    So nothing unread or unacknowledged is trimmed (approximate MINID, the default, trims at most that
    much, in whole macro nodes).
    """
    removed = 0
    for stream in keys.streams():
        try:
            group = _group_info(await redis.xinfo_groups(stream))
        except ResponseError:  # no stream yet
            continue
        if group is None:
            continue
        last = group["last-delivered-id"]
        last = last.decode() if isinstance(last, bytes) else str(last)
        if last == "0-0":
            continue
        summary = await redis.xpending(stream, GROUP)
        floor = _next_id(last)
        if summary["pending"]:
            oldest = summary["min"]
            oldest = oldest.decode() if isinstance(oldest, bytes) else str(oldest)
            floor = min(floor, oldest, key=lambda i: tuple(int(x) for x in i.split("-")))
        removed += int(await redis.xtrim(stream, minid=floor, approximate=approximate))
    return removed


async def ack(redis: aioredis.Redis, events: Sequence[StreamEvent]) -> None:
    by_stream: dict[str, list[str]] = {}
    for e in events:
        by_stream.setdefault(e.stream, []).append(e.entry_id)
    pipe = redis.pipeline(transaction=False)
    for stream, ids in by_stream.items():
        pipe.xack(stream, GROUP, *ids)
    await pipe.execute()
