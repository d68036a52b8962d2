"""Encoder worker against a real Redis: tokens appear, incremental == full recompute, crashes lose
nothing and apply nothing twice, stale model versions are recomputed."""

from __future__ import annotations

import json

import numpy as np
import pytest
from llm_fixtures import real_backbone_dir  # noqa: F401
from service_fixtures import WINDOW, build_tiny_stack

from service.encoding import UserTowerRuntime
from service.keys import Keys
from service.redis_conn import create_redis
from service.schemas import EventIn
from service.streams import claim_stale, ensure_groups, publish, read_new, read_own_pending
from service.user_store import read_history, read_tokens, read_users
from service.worker import EncoderWorker

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def tiny_stack(tmp_path_factory, real_backbone_dir):  # noqa: F811
    return build_tiny_stack(tmp_path_factory.mktemp("stack"), real_backbone_dir)


@pytest.fixture
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
    return EventIn(user_id=user, item_id=str(item), timestamp=ts, rating=kw.pop("rating", 4.0), **kw)


async def drain(worker: EncoderWorker) -> int:
    n = 0
    while batch := await read_new(
        worker.redis, worker.keys, worker.consumer, count=worker.batch, block_ms=10
    ):
        n += await worker.process(batch)
    return n


def worker_for(ctx, name: str = "w1", batch: int = 256) -> EncoderWorker:
    redis, keys, runtime = ctx
    return EncoderWorker(redis, keys, runtime, consumer=name, batch=batch, block_ms=10, claim_idle_ms=100)


async def test_events_become_user_tokens(ctx) -> None:
    redis, keys, runtime = ctx
    await publish(redis, keys, [ev("alice", i, 100 + i) for i in range(1, 6)] + [ev("bob", 7, 5)])
    assert await drain(worker_for(ctx)) == 2
    alice = await read_tokens(redis, keys, "alice")
    assert alice is not None and alice.user_tokens.shape == (16, 32) and alice.user_tokens.dtype == np.float16
    assert alice.model_version == runtime.model_version and alice.n_events == 5
    bob = await read_tokens(redis, keys, "bob")
    assert not np.array_equal(alice.user_tokens, bob.user_tokens)
    assert [e.item_id for e in await read_history(redis, keys, "alice")] == ["1", "2", "3", "4", "5"]


async def test_incremental_updates_equal_a_full_recompute(ctx) -> None:
    redis, keys, runtime = ctx
    worker = worker_for(ctx)
    for step in range(4):  # 4 micro-batches of 3 events: the first full, then incremental
        await publish(
            redis,
            keys,
            [ev("carol", 10 + 3 * step + j, 1000 + 3 * step + j) for j in range(3)],
        )
        await drain(worker)
    cached = await read_tokens(redis, keys, "carol")
    history = await read_history(redis, keys, "carol")
    assert len(history) == 12 <= WINDOW
    full = runtime.encode_full([history])[0]
    np.testing.assert_allclose(
        cached.user_tokens.astype(np.float32), full.user_tokens.astype(np.float32), rtol=0, atol=2e-2
    )  # fp16 storage of state and tokens
    from service import metrics

    assert metrics.WORKER_UPDATES.labels("incremental")._value.get() >= 3


async def test_out_of_order_and_window_overflow_fall_back_to_full_recompute(ctx) -> None:
    redis, keys, runtime = ctx
    worker = worker_for(ctx)
    await publish(redis, keys, [ev("dan", i, 100 + i) for i in range(1, 6)])
    await drain(worker)
    await publish(redis, keys, [ev("dan", 30, 50)])  # older than everything seen
    await drain(worker)
    history = await read_history(redis, keys, "dan")
    assert history[0].item_id == "30"
    cached = await read_tokens(redis, keys, "dan")
    np.testing.assert_allclose(
        cached.user_tokens.astype(np.float32),
        runtime.encode_full([history])[0].user_tokens.astype(np.float32),
        atol=1e-3,
    )
    await publish(redis, keys, [ev("dan", 1 + i % 40, 200 + i) for i in range(WINDOW + 5)])
    await drain(worker)
    history = await read_history(redis, keys, "dan")
    cached = await read_tokens(redis, keys, "dan")
    assert cached.n_events == WINDOW and len(history) == 6 + WINDOW + 5
    np.testing.assert_allclose(
        cached.user_tokens.astype(np.float32),
        runtime.encode_full([history])[0].user_tokens.astype(np.float32),
        atol=1e-3,
    )


async def test_window_slides_in_chunks_and_stays_equal_to_a_recompute(ctx, tiny_stack) -> None:
    """Past the window, a recompute covers window - slide events and the next `slide` updates are
    incremental; the tokens always equal a full pass over the events they cover."""
    from service import metrics

    redis, keys, plain = ctx
    slide = 4
    sliding = UserTowerRuntime.from_checkpoint(tiny_stack[1], slide=slide)
    worker = EncoderWorker(redis, keys, sliding, consumer="w-slide", block_ms=10)
    modes = []
    for i in range(WINDOW + 3 * slide):  # one event per micro-batch, as a live user sends them
        before = {m: metrics.WORKER_UPDATES.labels(m)._value.get() for m in ("full", "incremental")}
        await publish(redis, keys, [ev("fay", 1 + i % 40, 100 + i)])
        await drain(worker)
        modes.append(next(m for m in before if metrics.WORKER_UPDATES.labels(m)._value.get() > before[m]))
        cached = await read_tokens(redis, keys, "fay")
        history = await read_history(redis, keys, "fay")
        covered = history[len(history) - cached.n_events :]
        if len(history) <= WINDOW:
            assert cached.n_events == len(history)
        else:
            assert WINDOW - slide <= cached.n_events <= WINDOW
        np.testing.assert_allclose(
            cached.user_tokens.astype(np.float32),
            plain.encode_full([covered])[0].user_tokens.astype(np.float32),
            rtol=0, atol=2e-2,
        )  # fmt: skip
    # the first event recomputes; then incremental up to the window; then a recompute + `slide` increments
    assert modes[:WINDOW] == ["full"] + ["incremental"] * (WINDOW - 1)
    assert modes[WINDOW:] == ["incremental" if k % (slide + 1) else "full" for k in range(3 * slide)]
    assert sliding.span(WINDOW + 1) == WINDOW - slide and sliding.span(WINDOW) == WINDOW
    with pytest.raises(ValueError, match="slide"):
        UserTowerRuntime.from_checkpoint(tiny_stack[1], slide=WINDOW)


async def test_long_histories_read_only_the_newest_events_and_are_trimmed_to_history_keep(ctx) -> None:
    """The worker reads the newest window + 1 stored events (all events tied in time with the oldest
    of them included), not the whole history, and keeps `history_keep` events; the tokens equal a
    recompute over the whole stored history, ties in time ordered by item id as in the data sets."""
    redis, keys, runtime = ctx
    keep = 3 * WINDOW
    worker = EncoderWorker(redis, keys, runtime, consumer="w-long", block_ms=10, history_keep=keep)
    await publish(redis, keys, [ev("gus", 1 + i % 40, 100 + i) for i in range(2 * WINDOW)])
    await drain(worker)
    # WINDOW + 4 events at one time, queued in descending item order: the read's boundary cuts
    # through them, and their stored keys (stream entry ids) sort opposite to their items
    await publish(redis, keys, [ev("gus", 40 - i, 500) for i in range(WINDOW + 4)])
    await drain(worker)
    await publish(redis, keys, [ev("gus", 7, 50)])  # older than everything read: only stored
    await drain(worker)
    records = await read_users(redis, keys, ["gus"], newest=WINDOW + 1)
    assert records["gus"].n_stored == keep and len(records["gus"].events) == WINDOW + 4
    await publish(redis, keys, [ev("gus", 3, 600)])
    await drain(worker)
    history = await read_history(redis, keys, "gus")
    assert len(history) == keep and history[-1].timestamp == 600
    assert [e.timestamp for e in history] == sorted(e.timestamp for e in history)
    cached = await read_tokens(redis, keys, "gus")
    np.testing.assert_allclose(
        cached.user_tokens.astype(np.float32),
        runtime.encode_full([history])[0].user_tokens.astype(np.float32),
        atol=1e-3,
    )


async def test_an_inactive_users_state_expires_and_the_next_update_recomputes(ctx) -> None:
    """`state_ttl_s`: the encoder state of a user without updates expires (memory), and the user's
    next update is a recompute equal to a full pass."""
    import asyncio

    from service import metrics

    redis, keys, runtime = ctx
    worker = EncoderWorker(redis, keys, runtime, consumer="w-ttl", block_ms=10, state_ttl_s=1)
    await publish(redis, keys, [ev("hal", i, 100 + i) for i in range(1, 6)])
    await drain(worker)
    assert 0 < await redis.pttl(keys.state("hal")) <= 1000
    await asyncio.sleep(1.2)
    assert not await redis.exists(keys.state("hal")) and await read_tokens(redis, keys, "hal") is not None
    full = metrics.WORKER_UPDATES.labels("full")._value.get()
    await publish(redis, keys, [ev("hal", 9, 200)])
    await drain(worker)
    assert metrics.WORKER_UPDATES.labels("full")._value.get() == full + 1
    cached, history = await read_tokens(redis, keys, "hal"), await read_history(redis, keys, "hal")
    assert cached.n_events == 6 and 0 < await redis.pttl(keys.state("hal")) <= 1000
    np.testing.assert_allclose(
        cached.user_tokens.astype(np.float32),
        runtime.encode_full([history])[0].user_tokens.astype(np.float32),
        atol=1e-3,
    )


async def test_crash_between_write_and_ack_applies_nothing_twice(ctx, monkeypatch) -> None:
    redis, keys, _ = ctx
    await publish(redis, keys, [ev("erin", i, i, event_id=f"e{i}") for i in range(1, 9)])
    crashing = worker_for(ctx, "w-dead", batch=5)

    async def boom(*_a, **_k):
        raise ConnectionError("killed before XACK")

    monkeypatch.setattr("service.worker.ack", boom)
    batch = await read_new(redis, keys, "w-dead", count=5, block_ms=10)
    with pytest.raises(ConnectionError):
        await crashing.process(batch)  # written, never acknowledged
    monkeypatch.undo()
    restarted = worker_for(ctx, "w-dead", batch=5)
    pending = await read_own_pending(redis, keys, "w-dead", count=100)
    assert len(pending) == 5
    await restarted.process(pending)
    await drain(restarted)
    seen = await redis.hgetall(keys.seen("erin"))
    assert int(seen[b"n_events"]) == 8
    assert [e.item_id for e in await read_history(redis, keys, "erin")] == [str(i) for i in range(1, 9)]
    assert await read_own_pending(redis, keys, "w-dead", count=100) == []


async def test_a_dead_workers_entries_are_claimed(ctx) -> None:
    import asyncio

    redis, keys, _ = ctx
    await publish(redis, keys, [ev("fay", i, i) for i in range(1, 4)])
    assert len(await read_new(redis, keys, "w-gone", count=10, block_ms=10)) == 3  # delivered, then it dies
    alive = worker_for(ctx, "w-alive")
    stop = asyncio.Event()
    task = asyncio.create_task(alive.run(stop))
    for _ in range(100):
        if await read_tokens(redis, keys, "fay") is not None:
            break
        await asyncio.sleep(0.05)
    stop.set()
    await task
    assert (await read_tokens(redis, keys, "fay")).n_events == 3


async def test_tokens_of_another_model_version_are_recomputed(ctx) -> None:
    redis, keys, runtime = ctx
    await publish(redis, keys, [ev("gus", i, i) for i in range(1, 4)])
    await drain(worker_for(ctx))
    await redis.hset(keys.emb("gus"), mapping={"model_version": "userllm-older"})
    await redis.hset(keys.state("gus"), mapping={"model_version": "userllm-older"})
    await publish(redis, keys, [ev("gus", 9, 10)])
    await drain(worker_for(ctx))
    cached = await read_tokens(redis, keys, "gus")
    assert cached.model_version == runtime.model_version and cached.n_events == 4
    state = await redis.hget(keys.state("gus"), "keys")
    assert len(json.loads(state)) == 4


async def test_two_workers_side_by_side_apply_every_event_once(ctx) -> None:
    """Two consumers of one group split the micro-batches of the same users; compare-and-set keeps
    every user's record complete and exact."""
    import asyncio

    redis, keys, runtime = ctx
    users, per_user = 12, 20
    await publish(
        redis,
        keys,
        [ev(f"p{u}", 1 + (u * 7 + i) % 40, 100 + i) for i in range(per_user) for u in range(users)],
    )
    a, b = worker_for(ctx, "wa", batch=7), worker_for(ctx, "wb", batch=5)
    await asyncio.gather(drain(a), drain(b))
    # a user that kept changing under one worker is left pending (the worker's log says "retried later");
    # its run loop claims such entries once idle for claim_idle_ms: do that until nothing is left
    while claimed := await claim_stale(redis, keys, "wa", min_idle_ms=0, count=64):
        await a.process(claimed)
    for consumer in ("wa", "wb"):
        assert not await read_own_pending(redis, keys, consumer, count=8)
    for u in range(users):
        seen = await redis.hgetall(keys.seen(f"p{u}"))
        assert int(seen[b"n_events"]) == per_user
        history = await read_history(redis, keys, f"p{u}")
        assert [e.timestamp for e in history] == [100.0 + i for i in range(per_user)]
        cached = await read_tokens(redis, keys, f"p{u}")
        np.testing.assert_allclose(
            cached.user_tokens.astype(np.float32),
            runtime.encode_full([history])[0].user_tokens.astype(np.float32),
            atol=2e-2,
        )


async def test_undecodable_entries_go_to_the_dead_letter_stream(ctx) -> None:
    from service.keys import GROUP

    redis, keys, _ = ctx
    stream = keys.stream(keys.shard_of("hal"))
    await redis.xadd(
        stream, {"u": "hal", "i": "3"}
    )  # no timestamp: written by something else than the gateway
    await redis.xadd(
        stream, {"u": "hal", "i": "4", "t": "not-a-number", "y": "rating", "r": "", "x": "", "e": ""}
    )
    await redis.xadd(  # NaN used to fail the worker's Redis script for the whole batch ("not a valid float")
        stream, {"u": "hal", "i": "6", "t": "nan", "y": "rating", "r": "", "x": "", "e": ""}
    )
    await publish(redis, keys, [ev("hal", 5, 10)])
    await drain(worker_for(ctx))
    dead = await redis.xrange(keys.deadletter())
    assert [json.loads(f[b"fields"])["i"] for _, f in dead] == ["3", "4", "6"]
    assert b"missing field" in dead[0][1][b"error"] and b"not-a-number" in dead[1][1][b"error"]
    assert b"not a finite number" in dead[2][1][b"error"]
    assert [e.item_id for e in await read_history(redis, keys, "hal")] == ["5"]
    assert (await redis.xpending(stream, GROUP))["pending"] == 0


@pytest.fixture(scope="module")
def demo_runtime(tmp_path_factory, real_backbone_dir) -> UserTowerRuntime:  # noqa: F811
    _, ckpt = build_tiny_stack(tmp_path_factory.mktemp("demo-stack"), real_backbone_dir, demo_shape=True)
    return UserTowerRuntime.from_checkpoint(ckpt)


async def test_the_demo_shape_updates_incrementally_as_a_full_recompute(
    redis_url, key_prefix, clean_redis, demo_runtime
) -> None:
    """The demo recipe's encoder (rotary positions, tied head, seen bias) with the newest event's state
    as a 17th token: incremental updates give the tokens of a full recompute."""
    redis = create_redis(redis_url, "test")
    keys = Keys(prefix=key_prefix, num_shards=2)
    await ensure_groups(redis, keys)
    try:
        worker = EncoderWorker(
            redis, keys, demo_runtime, consumer="w1", batch=256, block_ms=10, claim_idle_ms=100
        )
        for step in range(4):
            await publish(redis, keys, [ev("dora", 20 + 3 * step + j, 2000 + 3 * step + j) for j in range(3)])
            await drain(worker)
        cached = await read_tokens(redis, keys, "dora")
        history = await read_history(redis, keys, "dora")
        assert cached is not None and cached.user_tokens.shape == (17, 32) and len(history) == 12
        full = demo_runtime.encode_full([history])[0]
        np.testing.assert_allclose(
            cached.user_tokens.astype(np.float32), full.user_tokens.astype(np.float32), rtol=0, atol=2e-2
        )
        assert not np.allclose(cached.user_tokens[-1], cached.user_tokens[0])  # the 17th token is its own
    finally:
        await redis.aclose()
