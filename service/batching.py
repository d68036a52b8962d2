"""Dynamic batching: concurrent requests are grouped (up to `max_batch`, waiting at most `max_wait_ms`)
and run together in one worker thread, off the event loop. Cancelling `submit` cancels the job: a queued
job is dropped before its batch runs, and a running one is told through `on_cancel(job)`.

Based on: the "micro-batcher" pattern of model servers (vLLM's engine loop, Ray Serve `@serve.batch`),
reduced to one asyncio task per batcher.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from service import metrics
from service.errors import EngineOverloaded, EngineUnavailable

T = TypeVar("T")
R = TypeVar("R")


class MicroBatcher(Generic[T, R]):
    """`await submit(job)` -> result of `fn(batch)[i]`; `fn` runs in a thread, one batch at a time.

    `on_cancel(job)` (on the event loop) is called when a `submit` is cancelled, e.g. because the client
    went away; `fn` may be running that job in its thread at that moment and should stop it."""

    def __init__(
        self,
        fn: Callable[[list[T]], Sequence[R]],
        *,
        name: str,
        max_batch: int,
        max_wait_ms: float,
        max_queue: int,
        on_cancel: Callable[[T], None] | None = None,
    ):
        self.fn, self.name, self.on_cancel = fn, name, on_cancel
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_ms / 1000, max_queue
        self._queue: asyncio.Queue[tuple[T, asyncio.Future[R]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while not self._queue.empty():
            _, fut = self._queue.get_nowait()
            if not fut.done():
                fut.set_exception(EngineUnavailable("engine is shutting down"))

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    async def submit(self, job: T) -> R:
        if not self.alive:
            raise EngineUnavailable(f"{self.name} batcher is not running")
        if self._queue.qsize() >= self.max_queue:
            raise EngineOverloaded(f"{self.name} queue is full ({self.max_queue} waiting); retry later")
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        await self._queue.put((job, fut))
        metrics.QUEUE_DEPTH.set(self._queue.qsize())
        try:
            return await fut  # cancelling this task cancels `fut`: a queued job is then never run
        except asyncio.CancelledError:
            metrics.CANCELLED.labels(self.name).inc()
            if self.on_cancel is not None:
                self.on_cancel(job)
            raise

    async def _collect(self) -> list[tuple[T, asyncio.Future[R]]]:
        batch = [await self._queue.get()]
        deadline = asyncio.get_running_loop().time() + self.max_wait_s
        while len(batch) < self.max_batch:
            timeout = deadline - asyncio.get_running_loop().time()
            if timeout <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), timeout))
            except TimeoutError:
                break
        return [(job, fut) for job, fut in batch if not fut.cancelled()]

    async def _loop(self) -> None:
        while True:
            batch = await self._collect()
            metrics.QUEUE_DEPTH.set(self._queue.qsize())
            if not batch:
                continue
            metrics.BATCH_SIZE.labels(self.name).observe(len(batch))
            try:
                results = await asyncio.to_thread(self.fn, [job for job, _ in batch])
            except Exception as exc:  # the whole batch fails together; the loop lives on
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), result in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(result)
