"""Event streams against a real Redis: sharding, ordering, dedup, pending re-reads and XAUTOCLAIM."""

from __future__ import annotations

import asyncio

import pytest

from service.keys import GROUP, Keys
from service.redis_conn import create_redis
from service.schemas import EventIn
from service.streams import ack, claim_stale, ensure_groups, publish, read_new, read_own_pending

pytestmark = pytest.mark.redis


def _event(user: str, item: int, ts: float, event_id: str | None = None) -> EventIn:
    return EventIn(user_id=user, item_id=str(item), timestamp=ts, rating=4.0, event_id=event_id)


@pytest.fixture
async def ctx(redis_url, key_prefix, clean_redis):
    redis = create_redis(redis_url, "test")
    keys = Keys(prefix=key_prefix, num_shards=3)
    await ensure_groups(redis, keys)
    yield redis, keys
    await redis.aclose()


async def test_events_of_one_user_stay_ordered_in_one_shard(ctx) -> None:
    redis, keys = ctx
    events = [_event(f"u{u}", i, 1000 + i) for i in range(20) for u in range(5)]
    assert await publish(redis, keys, events) == (100, 0)
    got = await read_new(redis, keys, "c1", count=1000, block_ms=100)
    assert len(got) == 100
    for u in range(5):
        mine = [e for e in got if e.user_id == f"u{u}"]
        assert [e.item_id for e in mine] == [str(i) for i in range(20)]
        assert {e.stream for e in mine} == {keys.stream(keys.shard_of(f"u{u}"))}


async def test_duplicate_event_ids_are_queued_once(ctx) -> None:
    redis, keys = ctx
    first = await publish(redis, keys, [_event("a", 1, 1, "e1"), _event("a", 2, 2, "e2")])
    again = await publish(redis, keys, [_event("a", 1, 1, "e1"), _event("a", 3, 3, None)])
    assert first == (2, 0) and again == (1, 1)
    got = await read_new(redis, keys, "c1", count=100, block_ms=100)
    assert [e.item_id for e in got] == ["1", "2", "3"]
    assert got[0].key == "c:e1" and got[2].key.startswith("s:")


async def test_unacked_entries_come_back_to_their_consumer_and_to_claimers(ctx) -> None:
    redis, keys = ctx
    await publish(redis, keys, [_event("a", i, i) for i in range(4)])
    got = await read_new(redis, keys, "dead", count=100, block_ms=100)
    assert len(got) == 4
    await ack(redis, got[:1])
    pending = await read_own_pending(redis, keys, "dead", count=100)
    assert [e.item_id for e in pending] == ["1", "2", "3"]
    assert await claim_stale(redis, keys, "alive", min_idle_ms=60_000, count=100) == []
    await asyncio.sleep(0.05)
    claimed = await claim_stale(redis, keys, "alive", min_idle_ms=20, count=100)
    assert [e.item_id for e in claimed] == ["1", "2", "3"]
    await ack(redis, claimed)
    assert await read_own_pending(redis, keys, "alive", count=100) == []
    info = await redis.xpending(keys.stream(keys.shard_of("a")), GROUP)
    assert info["pending"] == 0
