"""Encoder worker: stream events -> per-user history -> user_tokens in Redis (`python -m service.worker`).

Reads micro-batches from the sharded event streams through the consumer group, updates only the
users they touch (incrementally where the cached encoder state allows, else a full recompute over
the last `window` events), writes user tokens + state with compare-and-set, and acknowledges the
entries only after the write. On start it re-processes its own pending entries; every
`claim_idle_ms` it claims entries a dead worker left pending (XAUTOCLAIM). Re-applying an entry is a
no-op (events are keyed), so a crash between write and XACK applies nothing twice.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis

from service import metrics
from service.encoding import Encoded, UserTowerRuntime
from service.keys import Keys
from service.streams import (
    StreamEvent,
    ack,
    claim_stale,
    dead_letter,
    ensure_groups,
    read_new,
    read_own_pending,
)
from service.user_store import StoredEvent, UserRecord, UserUpdate, read_users, write_updates

log = logging.getLogger("userllm.worker")
MAX_CAS_ATTEMPTS = 8


@dataclass
class _Plan:
    record: UserRecord
    add: list[StoredEvent]
    drop: list[str]
    history: list[StoredEvent]  # kept history after the update, time-ordered
    n_unknown: int


def _stored(e: StreamEvent) -> StoredEvent:
    return StoredEvent(e.key, e.item_id, e.timestamp, e.event_type, e.rating, e.text)


class EncoderWorker:
    """One consumer of the `encoders` group."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        runtime: UserTowerRuntime,
        *,
        consumer: str,
        history_keep: int = 200,
        batch: int = 256,
        block_ms: int = 500,
        claim_idle_ms: int = 30_000,
    ):
        self.redis, self.keys, self.runtime, self.consumer = redis, keys, runtime, consumer
        self.history_keep = history_keep  # events kept per user in Redis
        self.batch = batch  # stream entries per read
        self.block_ms = block_ms  # XREADGROUP block time
        self.claim_idle_ms = claim_idle_ms  # pending entries idle this long are claimed from others

    # --- planning (pure, CPU) ---

    def _plan(self, record: UserRecord, events: Sequence[StreamEvent]) -> _Plan | None:
        known = {e.key for e in record.events}
        fresh: dict[str, StoredEvent] = {}
        for e in events:
            if e.key not in known:
                fresh.setdefault(e.key, _stored(e))
        if not fresh and record.emb_model_version == self.runtime.model_version:
            return None  # only re-deliveries of applied events: nothing to do
        merged = sorted([*record.events, *fresh.values()], key=lambda e: e.order)
        history = merged[-self.history_keep :]
        kept = {e.key for e in history}
        return _Plan(
            record=record,
            add=[e for e in fresh.values() if e.key in kept],
            drop=[e.key for e in record.events if e.key not in kept],
            history=history,
            n_unknown=sum(not self.runtime.codec.known(e.item_id) for e in fresh.values()),
        )

    def _encode(self, plans: list[_Plan]) -> list[Encoded]:
        """Batch the incremental users together and the full recomputes together."""
        incremental, full = [], []
        for i, p in enumerate(plans):
            state = self.runtime.state_of(p.record.state)
            n_new = len(p.add)
            tail_is_new = n_new > 0 and {e.key for e in p.history[-n_new:]} == {e.key for e in p.add}
            if state is not None and tail_is_new and self.runtime.can_extend(state[1], p.history, n_new):
                incremental.append((i, state))
            else:
                full.append(i)
        out: dict[int, Encoded] = {}
        if incremental:
            encoded = self.runtime.encode_incremental(
                [s[0] for _, s in incremental],
                [s[1] for _, s in incremental],
                [plans[i].history[-len(plans[i].add) :] for i, _ in incremental],
            )
            out.update(zip([i for i, _ in incremental], encoded, strict=True))
        if full:
            out.update(zip(full, self.runtime.encode_full([plans[i].history for i in full]), strict=True))
        return [out[i] for i in range(len(plans))]

    def _update(self, plan: _Plan, enc: Encoded) -> UserUpdate:
        metrics.WORKER_UPDATES.labels(enc.mode).inc()
        return UserUpdate(
            user_id=plan.record.user_id,
            expected_rev=plan.record.rev,
            add=plan.add,
            drop=plan.drop,
            user_tokens=enc.user_tokens,
            model_version=self.runtime.model_version,
            n_events_encoded=enc.n_events,
            last_event_key=plan.history[-1].key if plan.history else "",
            state_kv=enc.state,
            state_keys=enc.state_keys,
            n_unknown=plan.n_unknown,
            new_items=sorted({e.item_id for e in plan.add}),
        )

    # --- one micro-batch ---

    async def process(self, events: Sequence[StreamEvent]) -> int:
        """Apply a micro-batch and acknowledge it; returns the number of users updated."""
        if not events:
            return 0
        start = time.perf_counter()
        broken = [e for e in events if e.error is not None]
        if broken:
            log.error(
                "dead-lettering %d undecodable entries, e.g. %s: %s",
                len(broken),
                broken[0].entry_id,
                broken[0].error,
            )
            await dead_letter(self.redis, self.keys, broken)
            metrics.WORKER_EVENTS.labels("dead_letter").inc(len(broken))
        by_user: dict[str, list[StreamEvent]] = {}
        for e in events:
            if e.error is None:
                by_user.setdefault(e.user_id, []).append(e)
        pending, updated = dict(by_user), 0
        for _ in range(MAX_CAS_ATTEMPTS):
            records = await read_users(self.redis, self.keys, list(pending))
            plans = [p for u in pending if (p := self._plan(records[u], pending[u])) is not None]
            if not plans:
                break
            updates = [self._update(p, e) for p, e in zip(plans, self._encode(plans), strict=True)]
            applied = await write_updates(self.redis, self.keys, updates)
            for up, ok in zip(updates, applied, strict=True):
                if ok:
                    updated += 1
                    metrics.WORKER_EVENTS.labels("applied").inc(len(up.add))
                    metrics.UNKNOWN_ITEMS.labels("worker").inc(up.n_unknown)
                    pending.pop(up.user_id)
            if not any(not ok for ok in applied):
                break
            metrics.WORKER_EVENTS.labels("cas_retry").inc()
        else:
            raise RuntimeError(
                f"users {sorted(pending)[:5]} kept changing under this worker; not acknowledged"
            )
        await ack(self.redis, events)
        now = time.time()
        for e in events:
            metrics.STREAM_LAG.observe(max(0.0, now - int(e.entry_id.split("-")[0]) / 1000))
        metrics.WORKER_BATCH_SECONDS.observe(time.perf_counter() - start)
        return updated

    # --- loop ---

    async def run(self, stop: asyncio.Event) -> None:
        await ensure_groups(self.redis, self.keys)
        while batch := await read_own_pending(self.redis, self.keys, self.consumer, count=self.batch):
            log.info("re-processing %d pending entries of %s", len(batch), self.consumer)
            await self.process(batch)
        last_claim = 0.0
        while not stop.is_set():
            if time.monotonic() - last_claim > self.claim_idle_ms / 2000:
                last_claim = time.monotonic()
                claimed = await claim_stale(
                    self.redis, self.keys, self.consumer, min_idle_ms=self.claim_idle_ms, count=self.batch
                )
                if claimed:
                    log.info("claimed %d entries of dead consumers", len(claimed))
                    await self.process(claimed)
            await self.process(
                await read_new(self.redis, self.keys, self.consumer, count=self.batch, block_ms=self.block_ms)
            )


def default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


async def main() -> None:
    from prometheus_client import start_http_server

    from service.redis_conn import create_redis
    from service.serve import configure_logging
    from service.settings import get_settings

    configure_logging()
    settings = get_settings()
    try:
        redis_url = settings.require_redis_url()
    except RuntimeError as exc:
        raise SystemExit(f"error: {exc}") from None
    runtime = UserTowerRuntime.from_checkpoint(settings.userllm_checkpoint)
    if settings.worker_metrics_port:
        start_http_server(settings.worker_metrics_port, addr=settings.host)
    redis = create_redis(redis_url, "worker")
    keys = Keys(settings.key_prefix, settings.num_shards)
    worker = EncoderWorker(
        redis,
        keys,
        runtime,
        consumer=settings.worker_name or default_consumer_name(),
        history_keep=settings.history_keep,
        batch=settings.worker_batch,
        block_ms=settings.worker_block_ms,
        claim_idle_ms=settings.claim_idle_ms,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "worker %s: model_version %s, %d shards", worker.consumer, runtime.model_version, keys.num_shards
    )
    try:
        await worker.run(stop)
    finally:
        await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main())
