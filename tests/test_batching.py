"""MicroBatcher: concurrent jobs share a batch, a full queue answers EngineOverloaded (503), a failing
batch fails its jobs only, a stopped batcher refuses work, a cancelled submit cancels its job."""

from __future__ import annotations

import asyncio
import threading

import pytest

from service.batching import MicroBatcher
from service.errors import EngineOverloaded, EngineUnavailable


async def test_concurrent_jobs_are_batched_and_results_stay_in_order() -> None:
    sizes: list[int] = []

    def double(batch: list[int]) -> list[int]:
        sizes.append(len(batch))
        return [2 * x for x in batch]

    batcher = MicroBatcher(double, name="t", max_batch=4, max_wait_ms=50, max_queue=100)
    batcher.start()
    results = await asyncio.gather(*(batcher.submit(i) for i in range(10)))
    await batcher.stop()
    assert results == [2 * i for i in range(10)]
    assert max(sizes) == 4 and sum(sizes) == 10 and len(sizes) <= 4


async def test_a_full_queue_is_refused_with_engine_overloaded() -> None:
    gate = threading.Event()

    def slow(batch: list[int]) -> list[int]:
        gate.wait(5)
        return batch

    batcher = MicroBatcher(slow, name="t", max_batch=1, max_wait_ms=0, max_queue=2)
    batcher.start()
    first = asyncio.create_task(batcher.submit(0))  # taken by the loop, blocks in the thread
    await asyncio.sleep(0.05)
    queued = [asyncio.create_task(batcher.submit(i)) for i in (1, 2)]
    await asyncio.sleep(0.05)
    with pytest.raises(EngineOverloaded) as err:
        await batcher.submit(3)
    assert err.value.status_code == 503 and err.value.headers["Retry-After"] == "1"
    gate.set()
    assert await first == 0 and [await q for q in queued] == [1, 2]
    await batcher.stop()


async def test_a_failing_batch_fails_its_jobs_and_the_loop_survives() -> None:
    def picky(batch: list[int]) -> list[int]:
        if -1 in batch:
            raise ValueError("bad job")
        return batch

    batcher = MicroBatcher(picky, name="t", max_batch=1, max_wait_ms=0, max_queue=10)
    batcher.start()
    with pytest.raises(ValueError, match="bad job"):
        await batcher.submit(-1)
    assert await batcher.submit(7) == 7
    await batcher.stop()
    with pytest.raises(EngineUnavailable):
        await batcher.submit(1)


async def test_cancelling_submit_drops_a_queued_job_and_tells_a_running_one() -> None:
    gate, started = threading.Event(), threading.Event()
    ran: list[list[int]] = []
    cancelled: list[int] = []

    def slow(batch: list[int]) -> list[int]:
        ran.append(batch)
        started.set()
        gate.wait(5)
        return batch

    batcher = MicroBatcher(
        slow, name="t", max_batch=1, max_wait_ms=0, max_queue=10, on_cancel=cancelled.append
    )
    batcher.start()
    running = asyncio.create_task(batcher.submit(0))
    await asyncio.to_thread(started.wait, 5)
    queued = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0.05)
    for task in (running, queued):
        task.cancel()
    await asyncio.sleep(0)
    assert cancelled == [0, 1]  # the engine may stop job 0 at once
    gate.set()
    assert await batcher.submit(2) == 2
    await batcher.stop()
    assert ran == [[0], [2]]  # job 1 was dropped from the queue, never run
