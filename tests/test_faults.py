"""Fault suite of the worker on real Redis: poison stored records, a user whose update raises, corrupt
encoder state, and Redis stopped / SIGKILLed and restarted (append-only, its own server on another
port) while events stream in. Every test counts events accepted vs applied."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from llm_fixtures import real_backbone_dir  # noqa: F401
from service_fixtures import RedisServer, build_tiny_stack

from service.encoding import UserTowerRuntime
from service.keys import GROUP, Keys
from service.redis_conn import create_redis
from service.schemas import EventIn
from service.streams import ensure_groups, publish, read_new, trim_acknowledged
from service.user_store import read_history, read_tokens
from service.worker import EncoderWorker

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def tiny_stack(tmp_path_factory, real_backbone_dir):  # noqa: F811
    return build_tiny_stack(tmp_path_factory.mktemp("stack"), real_backbone_dir)


@pytest.fixture(scope="module")
def runtime(tiny_stack) -> UserTowerRuntime:
    return UserTowerRuntime.from_checkpoint(tiny_stack[1])


@pytest.fixture
async def ctx(redis_url, key_prefix, clean_redis, runtime):
    redis = create_redis(redis_url, "test")
    keys = Keys(prefix=key_prefix, num_shards=2)
    await ensure_groups(redis, keys)
    yield redis, keys, runtime
    await redis.aclose()


def ev(user: str, item: int, ts: float, **kw) -> EventIn:
    return EventIn(user_id=user, item_id=str(item), timestamp=ts, rating=4.0, **kw)


def make_worker(redis, keys, runtime, **kw) -> EncoderWorker:
    return EncoderWorker(redis, keys, runtime, consumer="w1", block_ms=10, claim_idle_ms=100, **kw)


async def drain(worker: EncoderWorker) -> None:
    while batch := await read_new(worker.redis, worker.keys, worker.consumer, count=64, block_ms=10):
        await worker.process(batch)


async def pending(redis, keys) -> int:
    return sum([(await redis.xpending(s, GROUP))["pending"] for s in keys.streams()])


async def test_a_poison_stored_event_is_dead_lettered_and_the_user_still_updates(ctx) -> None:
    redis, keys, runtime = ctx
    await publish(redis, keys, [ev("pam", i, 100 + i) for i in range(1, 4)])
    worker = make_worker(redis, keys, runtime)
    await drain(worker)
    poison = {"c:bad-json": b"\xff{not json", "c:bad-type": b'["4", "soon", "rating", 4.0, null]'}
    for key, raw in poison.items():  # the newest stored events: what the worker reads first
        await redis.hset(keys.evt("pam"), key, raw)
        await redis.zadd(keys.hist("pam"), {key: 150})
    await publish(redis, keys, [ev("pam", 9, 200), ev("quinn", 5, 10)])
    await drain(worker)  # raised out of `process` (and crash-looped the worker) before
    assert [e.item_id for e in await read_history(redis, keys, "pam")] == ["1", "2", "3", "9"]
    assert await redis.hlen(keys.evt("pam")) == 4 and await redis.zcard(keys.hist("pam")) == 4
    assert (await read_tokens(redis, keys, "pam")).n_events == 4
    assert (await read_tokens(redis, keys, "quinn")).n_events == 1
    dead = [f for _, f in await redis.xrange(keys.deadletter())]
    assert sorted(f[b"key"] for f in dead) == [b"c:bad-json", b"c:bad-type"]
    assert {f[b"kind"] for f in dead} == {b"stored_event"} and all(f[b"error"] for f in dead)
    assert await pending(redis, keys) == 0


async def test_a_user_whose_update_raises_is_dead_lettered_and_the_batch_goes_on(ctx, monkeypatch) -> None:
    redis, keys, runtime = ctx
    worker = make_worker(redis, keys, runtime)
    encode = worker._encode

    def failing(plans):
        if any(p.record.user_id == "boom" for p in plans):
            raise RuntimeError("model exploded")
        return encode(plans)

    monkeypatch.setattr(worker, "_encode", failing)
    accepted = [ev("boom", 1, 1), ev("ok", 2, 2), ev("ok", 3, 3), ev("boom", 4, 4)]
    await publish(redis, keys, accepted)
    await drain(worker)
    assert [e.item_id for e in await read_history(redis, keys, "ok")] == ["2", "3"]
    dead = [f for _, f in await redis.xrange(keys.deadletter())]
    assert [json.loads(f[b"fields"])["i"] for f in dead] == ["1", "4"]
    assert all(b"model exploded" in f[b"error"] for f in dead)
    assert await pending(redis, keys) == 0  # applied (2) + dead-lettered (2) == accepted (4)


async def test_corrupt_encoder_state_falls_back_to_a_full_recompute(ctx) -> None:
    redis, keys, runtime = ctx
    worker = make_worker(redis, keys, runtime)
    await publish(redis, keys, [ev("sal", i, i) for i in range(1, 5)])
    await drain(worker)
    kv = bytearray(await redis.hget(keys.state("sal"), "kv"))
    kv[:8] = b"\x00\x7c" * 4  # +inf in fp16: same length, wrong bytes
    await redis.hset(keys.state("sal"), "kv", bytes(kv))
    await publish(redis, keys, [ev("sal", 7, 10)])
    await drain(worker)
    history = await read_history(redis, keys, "sal")
    cached = await read_tokens(redis, keys, "sal")
    full = runtime.encode_full([history])[0].user_tokens
    assert len(history) == 5 and np.isfinite(cached.user_tokens).all()
    np.testing.assert_allclose(cached.user_tokens.astype(np.float32), full.astype(np.float32), atol=2e-2)


@pytest.mark.slow
async def test_a_client_reconnects_after_a_redis_restart(tmp_path) -> None:
    """`create_redis` retries a command on a connection the restart closed (the sync `Retry` given to
    an async client never retried: the first command after any Redis restart failed)."""
    server = RedisServer(tmp_path)
    server.start()
    client = create_redis(server.url, "test")
    try:
        await client.set("k", "v")
        server.stop()
        server.start()
        assert await client.get("k") == b"v"  # append-only: the write survived the restart
    finally:
        await client.aclose()
        server.stop()


@pytest.mark.slow
@pytest.mark.parametrize("kill", [False, True], ids=["stopped", "sigkilled"])
async def test_worker_rides_out_a_redis_restart_and_applies_every_accepted_event(
    tmp_path, runtime, kill
) -> None:
    """Redis (append-only, fsync always) goes away for ~2 s while the worker runs; events accepted
    before and after are all applied exactly once, and the worker never exits."""
    server = RedisServer(tmp_path)
    server.start()
    keys = Keys(prefix="fault", num_shards=2)
    redis = create_redis(server.url, "test")
    worker = EncoderWorker(
        create_redis(server.url, "worker"), keys, runtime, consumer="w1", block_ms=20, max_backoff_s=0.3
    )
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        users = [f"r{u}" for u in range(6)]
        accepted = 0
        for step in range(3):
            accepted += (await publish(redis, keys, [ev(u, 1 + step, step) for u in users]))[0]
        await asyncio.sleep(0.3)
        server.stop(kill=kill)
        await asyncio.sleep(1.5)
        assert not task.done()  # it used to exit on the ConnectionError of XREADGROUP
        server.start()
        for step in range(3, 6):
            accepted += (await publish(redis, keys, [ev(u, 1 + step, step) for u in users]))[0]

        async def applied() -> int:
            return sum([len(await read_history(redis, keys, u)) for u in users])

        for _ in range(200):
            if await applied() == accepted and await pending(redis, keys) == 0:
                break
            await asyncio.sleep(0.05)
        assert accepted == 36 and await applied() == accepted
        for u in users:
            assert [e.item_id for e in await read_history(redis, keys, u)] == [str(i) for i in range(1, 7)]
            assert (await read_tokens(redis, keys, u)).n_events == 6
        assert not task.done()
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await worker.redis.aclose()
        await redis.aclose()
        server.stop()


async def test_retention_trims_only_what_every_consumer_acknowledged(ctx) -> None:
    """Acknowledged entries are trimmed, unread and pending ones stay; seen items keep the newest
    `items_keep`; event ids are remembered `dedup_ttl_s`."""
    redis, keys, runtime = ctx
    worker = make_worker(redis, keys, runtime, items_keep=3)
    await publish(redis, keys, [ev("tia", i, i, event_id=f"t{i}") for i in range(1, 6)], dedup_ttl_s=60)
    assert 55 <= await redis.ttl(keys.dedup("tia", "t1")) <= 60
    await worker.process(await read_new(redis, keys, "w1", count=3, block_ms=10))  # applied and acknowledged
    pending_batch = await read_new(redis, keys, "w1", count=1, block_ms=10)  # delivered, not acknowledged
    assert await trim_acknowledged(redis, keys, approximate=False) == 3
    assert sum([await redis.xlen(s) for s in keys.streams()]) == 2  # the pending one and the unread one
    await worker.process(pending_batch)
    await drain(worker)
    assert await trim_acknowledged(redis, keys, approximate=False) == 2
    assert [e.item_id for e in await read_history(redis, keys, "tia")] == ["1", "2", "3", "4", "5"]
    assert await redis.zrange(keys.items("tia"), 0, -1) == [b"3", b"4", b"5"]
