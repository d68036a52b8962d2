"""The generation server's engine loop: ONE thread owns the model and runs every forward pass, so
requests never compete for the cores from several threads.

Each iteration, in priority order:

1. scoring (`/recommend`, genre): every queued job, up to `max_batch` in one forward pass; when
   nothing is decoding, it waits up to `max_wait_ms` for more jobs to fill the batch;
2. history re-encodes (cache misses): up to `max_batch` users in one pass;
3. prompt embeddings for the vLLM engine (service/vllm_engine.py): up to `max_batch` requests;
4. generation admission: waiting requests are prefilled and join the running decode
   (models/continuous.py), up to `max_batch` rows in all;
5. one decode step for every running row: each gets its next token (streamed through its
   `on_text`); rows that finished or whose caller went away (a cancelled `generate`) leave at once.

So a new generation starts at the next step instead of waiting for a batch to end, a short one is
answered as soon as it is done, and a `/recommend` waits at most one decode step behind
generations. Results are handed back to the event loop with `call_soon_threadsafe`. A failing job
fails alone (a failing decode step fails the rows decoding then); the loop lives on.

Based on: vLLM's `EngineCore` busy loop (schedule, execute, hand results back; `AsyncLLM` as the
async client) and Orca's iteration-level scheduling, reduced to one thread and three queues.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from torch import Tensor

from service import metrics
from service.detokenizer import Detokenizer
from service.encoding import Encoded
from service.engine import GenerateJob, GenerateResult, ScoreJob, ScoreResult, TorchEngine
from service.errors import EngineOverloaded, EngineUnavailable
from service.settings import Settings
from service.user_store import StoredEvent

log = logging.getLogger("userllm.scheduler")
J = TypeVar("J")
R = TypeVar("R")


@dataclass
class _Pending(Generic[J, R]):
    job: J
    future: asyncio.Future[R]


@dataclass
class _Running:
    pending: _Pending[GenerateJob, GenerateResult]
    text: Detokenizer
    started: float = field(default_factory=time.perf_counter)


class EngineLoop:
    """`await score(job)`, `await generate(job)`, `await encode(history)`, `await embed(job)`: all run by
    one thread (an `EngineClient`, service/engine_client.py)."""

    def __init__(self, engine: TorchEngine, *, max_batch: int, max_wait_ms: float, max_queue: int) -> None:
        self.engine = engine
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_ms / 1000, max_queue
        self._scores: deque[_Pending[ScoreJob, ScoreResult]] = deque()
        self._encodes: deque[_Pending[list[StoredEvent], Encoded]] = deque()
        self._embeds: deque[_Pending[GenerateJob, Tensor | None]] = deque()
        self._waiting: deque[_Pending[GenerateJob, GenerateResult]] = deque()
        self._running: dict[Hashable, _Running] = {}  # id(job) -> row of the running decode
        self._batch = engine.decode_batch()
        self._wake = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.steps = 0  # decode steps run
        self.admitted = 0  # generation requests that started decoding
        self.most_rows = 0  # the largest number of rows decoded in one step

    # --- the event loop's side ---

    def start(self) -> None:
        if self._thread is None:
            self._loop = asyncio.get_running_loop()
            self._stop = False
            self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)
            self._thread.start()

    async def stop(self) -> None:
        """Stop the thread after its current iteration; queued and running requests fail with 503."""
        if self._thread is None:
            return
        with self._wake:
            self._stop = True
            self._wake.notify()
        await asyncio.to_thread(self._thread.join)
        self._thread = None
        gone = EngineUnavailable("engine is shutting down")
        for queue in (self._scores, self._encodes, self._embeds, self._waiting):
            while queue:
                self._fail(queue.popleft(), gone)
        for row in self._running.values():
            self._fail(row.pending, gone)
        self._running.clear()
        self._batch = self.engine.decode_batch()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def queued(self) -> int:
        return len(self._scores) + len(self._encodes) + len(self._embeds) + len(self._waiting)

    @property
    def running(self) -> int:
        """Generation requests decoding now."""
        return len(self._running)

    async def score(self, job: ScoreJob) -> ScoreResult:
        return await self._submit(self._scores, job, "score")

    async def encode(self, history: list[StoredEvent]) -> Encoded:
        return await self._submit(self._encodes, history, "encode")

    async def embed(self, job: GenerateJob) -> Tensor | None:
        """The prompt embeddings of a generation request for the vLLM engine
        (`TorchEngine.prompt_embeds_batch`): its user prefix, then its prompt's token embeddings."""
        return await self._submit(self._embeds, job, "embed")

    async def generate(self, job: GenerateJob) -> GenerateResult:
        """Decode `job`; text pieces go to `job.on_text` (from the engine thread) as they come.
        Cancelling this call cancels the job: a waiting one never starts, a running one leaves the
        batch before the next step."""
        return await self._submit(self._waiting, job, "generate", on_cancel=job.cancel)

    async def _submit(
        self, queue: deque[_Pending[J, R]], job: J, name: str, on_cancel: Callable[[], None] | None = None
    ) -> R:
        if not self.alive or self._loop is None:
            raise EngineUnavailable("the engine loop is not running")
        if self.queued() >= self.max_queue:
            raise EngineOverloaded(f"{self.max_queue} requests are waiting for the engine; retry later")
        pending: _Pending[J, R] = _Pending(job, self._loop.create_future())
        with self._wake:
            queue.append(pending)
            self._wake.notify()
        metrics.QUEUE_DEPTH.set(self.queued())
        try:
            return await pending.future
        except asyncio.CancelledError:
            metrics.CANCELLED.labels(name).inc()
            if on_cancel is not None:
                on_cancel()
            raise

    # --- the engine thread's side ---

    def _settle(
        self, pending: _Pending[Any, Any], result: Any = None, exc: BaseException | None = None
    ) -> None:
        """Hand a result (or an error) back to the event loop; a future already done (its caller was
        cancelled) is left alone."""
        assert self._loop is not None

        def done() -> None:
            if pending.future.done():
                return
            if exc is not None:
                pending.future.set_exception(exc)
            else:
                pending.future.set_result(result)

        self._loop.call_soon_threadsafe(done)

    def _resolve(self, pending: _Pending[Any, Any], result: Any) -> None:
        self._settle(pending, result)

    def _fail(self, pending: _Pending[Any, Any], exc: BaseException) -> None:
        self._settle(pending, exc=exc)

    def _take(self, queue: deque[_Pending[J, R]], n: int) -> list[_Pending[J, R]]:
        with self._wake:
            taken: list[_Pending[J, R]] = []
            while queue and len(taken) < n:
                pending = queue.popleft()
                if not pending.future.cancelled():
                    taken.append(pending)
            return taken

    def _idle(self) -> bool:
        return not (self._scores or self._encodes or self._embeds or self._waiting or self._running)

    def _run(self) -> None:
        while True:
            with self._wake:
                while self._idle() and not self._stop:
                    self._wake.wait()
                if self._stop:
                    return
                if self._scores and not self._running and len(self._scores) < self.max_batch:
                    self._wake.wait(self.max_wait_s)  # nothing decoding: let a few more scores come
            try:
                self._iteration()
            except Exception:  # each stage fails its own jobs; a bookkeeping bug must not end the thread
                log.exception("engine loop iteration failed")

    def _batched(self, queue: deque[_Pending[J, R]], fn: Callable[[list[J]], Sequence[R]], name: str) -> None:
        batch = self._take(queue, self.max_batch)
        if not batch:
            return
        metrics.BATCH_SIZE.labels(name).observe(len(batch))
        try:
            results = fn([p.job for p in batch])
        except Exception as exc:  # the batch fails together; the loop lives on
            log.warning("%s batch of %d failed: %s: %s", name, len(batch), type(exc).__name__, exc)
            for p in batch:
                self._fail(p, exc)
            return
        for p, result in zip(batch, results, strict=True):
            self._resolve(p, result)

    def _iteration(self) -> None:
        self._batched(self._scores, self.engine.score_batch, "score")
        self._batched(self._encodes, self.engine.tower.encode_full, "encode")
        self._batched(self._embeds, self.engine.prompt_embeds_batch, "embed")
        self._admit()
        self._step()
        metrics.QUEUE_DEPTH.set(self.queued())

    def _admit(self) -> None:
        joining = []
        for p in self._take(self._waiting, self.max_batch - len(self._running)):
            if p.job.cancelled.is_set():  # cancelled before it started: never run
                self._resolve(p, GenerateResult("", len(p.job.prompt), 0))
            else:
                joining.append(p)
        if not joining:
            return
        metrics.BATCH_SIZE.labels("generate").observe(len(joining))
        try:
            self.engine.join(self._batch, [p.job for p in joining])
        except Exception as exc:
            log.warning("prefill of %d requests failed: %s: %s", len(joining), type(exc).__name__, exc)
            for p in joining:
                self._fail(p, exc)
            return
        self.admitted += len(joining)
        for p in joining:
            self._running[id(p.job)] = _Running(p, Detokenizer(self.engine.tokenizer, p.job.on_text))

    def _step(self) -> None:
        if not self._running:
            return
        cancelled = {key for key, row in self._running.items() if row.pending.job.cancelled.is_set()}
        self.most_rows = max(self.most_rows, len(self._running) - len(cancelled))
        try:
            emitted = self._batch.step(cancelled=cancelled)
        except Exception as exc:
            log.warning("decode step of %d rows failed: %s: %s", len(self._running), type(exc).__name__, exc)
            for row in self._running.values():
                self._fail(row.pending, exc)
            self._running.clear()
            self._batch = self.engine.decode_batch()
            return
        self.steps += 1
        for key in cancelled:
            row = self._running.pop(key)
            self._resolve(row.pending, row.text.result(len(row.pending.job.prompt)))
        for e in emitted:
            row = self._running[e.key]
            row.text.add(e.token)
            if e.finished:
                del self._running[e.key]
                self._resolve(row.pending, row.text.result(len(row.pending.job.prompt)))


def start_engine_loop(engine: TorchEngine, settings: Settings) -> EngineLoop:
    """An engine loop over `engine` with the settings' batch size, wait and queue bound, started (call
    on the server's event loop)."""
    loop = EngineLoop(engine, max_batch=settings.max_batch_size, max_wait_ms=settings.max_wait_ms,
                      max_queue=settings.max_queue)  # fmt: skip
    loop.start()
    return loop
