"""Encoder worker: stream events -> per-user history -> user_tokens in Redis (`python -m service.worker`).

Reads micro-batches from the sharded event streams through the consumer group, updates only the
users they touch (incrementally where the cached encoder state allows, else a recompute over the
newest events; the window slides in chunks of `encoder_slide` events, service/encoding.py), writes
user tokens + state with compare-and-set, and acknowledges the entries only after the write. Per
micro-batch it reads each user's newest stored event with the metadata (one pipeline), and the
newest `window + 1` events only for the users that need a recompute (a second pipeline): the cost
of an update does not grow with the stored history. On start it re-processes its own pending
entries; every `claim_idle_ms` it claims entries a dead worker left pending (XAUTOCLAIM).
Re-applying an entry is a no-op (events are keyed), so a crash between write and XACK applies
nothing twice.

Nothing stops it but a signal: a Redis outage is waited out with exponential backoff (then its own
pending entries are re-processed first); an entry that cannot be decoded, a stored event it reads
that cannot be decoded (found when a recompute's window reaches it), and the entries of a user
whose update raises go to the dead-letter stream with the reason (counted in
`userllm_worker_events_total{outcome="dead_letter"}`) and the rest of the batch is applied. Queued
events of a user deleted after they were queued (`DELETE /users/{id}`) are dropped. It heart-beats
(`Keys.worker`, with a TTL) so the gateway's /readyz can report a stopped worker, and trims stream
entries every group has acknowledged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service import metrics
from service.encoding import Encoded, UserTowerRuntime
from service.keys import Keys
from service.pplug_runtime import PPlugRuntime, load_user_runtime
from service.streams import (
    StreamEvent,
    ack,
    claim_stale,
    dead_letter,
    dead_letter_stored,
    ensure_groups,
    read_new,
    read_own_pending,
    trim_acknowledged,
)
from service.user_store import (
    CorruptRecord,
    StoredEvent,
    UserRecord,
    UserUpdate,
    read_users,
    write_updates,
)

log = logging.getLogger("userllm.worker")
MAX_CAS_ATTEMPTS = 8
# Redis unreachable, timing out or still loading its data after a restart: wait and retry.
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)
_Pending = dict[str, list[StreamEvent]]  # user -> the stream entries of the micro-batch not applied yet


@dataclass
class _Plan:
    record: UserRecord
    add: list[StoredEvent]
    drop: list[str]
    history: list[StoredEvent]  # the newest events after the update (the record's + add), time-ordered
    n_unknown: int
    oldest_ms: int  # queue time of the oldest stream entry behind `add`
    state: tuple[np.ndarray, list[str]] | None  # the cached state to extend with `add`; None: recompute


def _newest_per_item(events: Sequence[StoredEvent]) -> dict[str, float]:
    newest: dict[str, float] = {}
    for e in events:
        newest[e.item_id] = max(newest.get(e.item_id, e.timestamp), e.timestamp)
    return newest


def _entry_ms(e: StreamEvent) -> int:
    return int(e.entry_id.split("-")[0])


def _stored(e: StreamEvent) -> StoredEvent:
    return StoredEvent(e.key, e.item_id, e.timestamp, e.event_type, e.rating, e.text)


class EncoderWorker:
    """One consumer of the `encoders` group."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        runtime: UserTowerRuntime | PPlugRuntime,
        *,
        consumer: str,
        history_keep: int = 200,
        batch: int = 256,
        block_ms: int = 500,
        claim_idle_ms: int = 30_000,
        heartbeat_ttl_s: float = 10.0,
        trim_interval_s: float = 10.0,
        max_backoff_s: float = 5.0,
        items_keep: int = 10_000,
        state_ttl_s: int = 0,
    ):
        self.redis, self.keys, self.runtime, self.consumer = redis, keys, runtime, consumer
        self.history_keep = history_keep  # events kept per user in Redis
        self.batch = batch  # stream entries per read
        self.block_ms = block_ms  # XREADGROUP block time
        self.claim_idle_ms = claim_idle_ms  # pending entries idle this long are claimed from others
        self.heartbeat_ttl_s = heartbeat_ttl_s  # the heartbeat key expires this long after the last beat
        self.trim_interval_s = trim_interval_s  # how often acknowledged stream entries are trimmed
        self.max_backoff_s = max_backoff_s  # longest wait between retries while Redis is down
        self.items_keep = items_keep  # newest items kept per user for exclude_seen
        self.state_ttl_s = state_ttl_s  # an inactive user's encoder state expires after this (0: kept)
        self.started_at = time.time()
        self.applied = 0  # events applied since start (reported in the heartbeat)

    # --- planning (pure, CPU) ---

    def _plan(self, record: UserRecord, events: Sequence[StreamEvent]) -> _Plan | None:
        """The update of one user from what `record` read of the stored history (the newest events)."""
        undecodable = {c[0] for c in record.corrupt}
        fresh: dict[str, StoredEvent] = {}
        queued: dict[str, int] = {}
        for e in events:
            if e.key not in record.stored or e.key in undecodable:
                fresh.setdefault(e.key, _stored(e))
                queued[e.key] = min(queued.get(e.key, _entry_ms(e)), _entry_ms(e))
        if not fresh and not record.corrupt and record.emb_model_version == self.runtime.model_version:
            return None  # only re-deliveries of applied events: nothing to do
        merged = sorted([*record.events, *fresh.values()], key=lambda e: e.order)
        history = merged[-self.history_keep :]
        kept = {e.key for e in history}
        add = [e for e in fresh.values() if e.key in kept]
        return _Plan(
            record=record,
            add=add,
            drop=[key for key in undecodable if key not in fresh],
            history=history,
            n_unknown=sum(not self.runtime.codec.known(e.item_id) for e in fresh.values()),
            oldest_ms=min((queued[e.key] for e in add), default=0),
            state=self._extendable(record, history, add),
        )

    def _extendable(
        self, record: UserRecord, history: list[StoredEvent], add: list[StoredEvent]
    ) -> tuple[np.ndarray, list[str]] | None:
        """The user's cached state when the added events can be encoded after it, else None."""
        n_new = len(add)
        if not n_new or record.corrupt or self.history_keep < self.runtime.window:
            return None
        try:
            state = self.runtime.state_of(record.state)
        except CorruptRecord as exc:
            log.warning("user %s: stored state fails its check (%s); recomputed", record.user_id, exc)
            metrics.CORRUPT_RECORDS.labels("worker", "state").inc()
            return None
        tail_is_new = {e.key for e in history[-n_new:]} == {e.key for e in add}
        if state is None or not tail_is_new:
            return None
        return state if self.runtime.can_extend(state[1], history, n_new, record.n_stored) else None

    def _encode(self, plans: list[_Plan]) -> list[Encoded]:
        """Batch the incremental users together and the full recomputes together."""
        incremental = [(i, p.state) for i, p in enumerate(plans) if p.state is not None]
        full = [i for i, p in enumerate(plans) if p.state is None]
        out: dict[int, Encoded] = {}
        if incremental:
            encoded = self.runtime.encode_incremental(
                [state[0] for _, state in incremental],
                [state[1] for _, state in incremental],
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
            new_items=sorted(_newest_per_item(plan.add).items()),
            oldest_ms=plan.oldest_ms,
            items_keep=self.items_keep,
            history_keep=self.history_keep,
            state_ttl_s=self.state_ttl_s,
        )

    # --- one micro-batch ---

    async def process(self, events: Sequence[StreamEvent]) -> int:
        """Apply a micro-batch and acknowledge it; returns the number of users updated.

        Redis errors propagate (the entries stay pending and are re-processed after the outage); any
        other error is confined to the users whose update raises, whose entries are dead-lettered.
        """
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
        try:
            updated, unapplied = await self._apply(by_user)
        except REDIS_DOWN:
            raise
        except Exception:
            log.exception("a micro-batch of %d users failed; applying its users one by one", len(by_user))
            updated, unapplied = await self._apply_each(by_user)
        if unapplied:  # left pending: XAUTOCLAIM hands them to a worker again after `claim_idle_ms`
            log.warning("users %s kept changing under this worker; retried later", sorted(unapplied)[:5])
        await ack(self.redis, [e for e in events if e.error is not None or e.user_id not in unapplied])
        now = time.time()
        for e in events:
            metrics.STREAM_LAG.observe(max(0.0, now - int(e.entry_id.split("-")[0]) / 1000))
        metrics.WORKER_BATCH_SECONDS.observe(time.perf_counter() - start)
        return updated

    async def _apply_each(self, by_user: dict[str, list[StreamEvent]]) -> tuple[int, set[str]]:
        updated, unapplied = 0, set()
        for user, user_events in by_user.items():
            try:
                n, left = await self._apply({user: user_events})
            except REDIS_DOWN:
                raise
            except Exception as exc:
                reason = f"update of user {user!r} failed: {type(exc).__name__}: {exc}"
                log.exception("dead-lettering %d entries: %s", len(user_events), reason)
                await dead_letter(self.redis, self.keys, user_events, reason=reason)
                metrics.WORKER_EVENTS.labels("dead_letter").inc(len(user_events))
                continue
            updated += n
            unapplied |= left
        return updated, unapplied

    async def _read(
        self, pending: _Pending, users: list[str], newest: int, reported: set[tuple[str, str]]
    ) -> dict[str, UserRecord]:
        """Read the users' records with their `newest` stored events; dead-letter stored events that do
        not decode (once per user) and drop the pending events a later deletion of the user forgot."""
        records = await read_users(
            self.redis, self.keys, users, newest=newest, asked={u: [e.key for e in pending[u]] for u in users}
        )
        for u, record in records.items():
            if news := [c for c in record.corrupt if (u, c[0]) not in reported]:
                reported.update((u, c[0]) for c in news)
                await self._dead_letter_stored(u, news)
            if record.forgotten_ms is not None:  # keep only events queued after the deletion
                kept = [e for e in pending[u] if _entry_ms(e) > record.forgotten_ms]
                metrics.WORKER_EVENTS.labels("forgotten").inc(len(pending[u]) - len(kept))
                pending[u] = kept
        return records

    async def _plans(self, pending: _Pending, reported: set[tuple[str, str]]) -> list[_Plan]:
        """Plan every pending user's update in two pipelined reads: first the newest stored event(s)
        with the metadata, which is all an incremental update needs; then the newest `window + 1`
        events of the users that need a recompute. Users with nothing to apply leave `pending`."""
        plans, recompute = [], []
        records = await self._read(pending, list(pending), 1, reported)
        for u, record in records.items():
            plan = self._plan(record, pending[u]) if pending[u] else None
            if plan is None:
                pending.pop(u)  # only re-deliveries of applied events, or events of a forgotten user
            elif plan.state is None and record.n_stored > len(record.events):
                recompute.append(u)  # the recompute needs more of the history than this read
            else:
                plans.append(plan)
        if recompute:
            records = await self._read(pending, recompute, self.runtime.window + 1, reported)
            for u, record in records.items():
                if pending[u] and (plan := self._plan(record, pending[u])) is not None:
                    plans.append(plan)
                else:
                    pending.pop(u)
        return plans

    async def _apply(self, by_user: dict[str, list[StreamEvent]]) -> tuple[int, set[str]]:
        """Plan, encode and compare-and-set the users' updates; returns (users updated, users that kept
        changing under this worker for MAX_CAS_ATTEMPTS rounds)."""
        pending, updated, reported = dict(by_user), 0, set[tuple[str, str]]()
        for _ in range(MAX_CAS_ATTEMPTS):
            plans = await self._plans(pending, reported)
            if not plans:
                return updated, set()
            updates = [self._update(p, e) for p, e in zip(plans, self._encode(plans), strict=True)]
            applied = await write_updates(self.redis, self.keys, updates)
            for up, ok in zip(updates, applied, strict=True):
                if ok:
                    updated += 1
                    self.applied += len(up.add)
                    metrics.WORKER_EVENTS.labels("applied").inc(len(up.add))
                    metrics.UNKNOWN_ITEMS.labels("worker").inc(up.n_unknown)
                    pending.pop(up.user_id)
            if all(applied):
                return updated, set()
            metrics.WORKER_EVENTS.labels("cas_retry").inc()
        return updated, set(pending)

    async def _dead_letter_stored(self, user_id: str, corrupt: list[tuple[str, bytes, str]]) -> None:
        log.error(
            "user %s: %d stored events do not decode (e.g. %s: %s); moved to the dead-letter stream",
            user_id, len(corrupt), corrupt[0][0], corrupt[0][2],
        )  # fmt: skip
        await dead_letter_stored(self.redis, self.keys, user_id, corrupt)
        metrics.CORRUPT_RECORDS.labels("worker", "stored_event").inc(len(corrupt))
        metrics.WORKER_EVENTS.labels("dead_letter").inc(len(corrupt))

    # --- liveness ---

    async def heartbeat(self) -> None:
        """Refresh this worker's heartbeat key (expires after `heartbeat_ttl_s`)."""
        beat = {
            "pid": os.getpid(),
            "model_version": self.runtime.model_version,
            "started_at": self.started_at,
            "beat_at": time.time(),
            "events_applied": self.applied,
        }
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self.keys.worker(self.consumer), json.dumps(beat), px=int(self.heartbeat_ttl_s * 1000))
        pipe.sadd(self.keys.workers(), self.consumer)
        await pipe.execute()

    async def sign_off(self) -> None:
        """A clean stop: the worker is no longer expected (not reported as stopped)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(self.keys.worker(self.consumer))
        pipe.srem(self.keys.workers(), self.consumer)
        await pipe.execute()

    # --- loop ---

    async def _recover(self) -> None:
        """(Re-)create the groups, then apply this consumer's pending entries before new ones."""
        await ensure_groups(self.redis, self.keys)
        seen: set[str] = set()
        while batch := await read_own_pending(self.redis, self.keys, self.consumer, count=self.batch):
            if {e.entry_id for e in batch} <= seen:
                break  # what is left stays pending (users that kept changing): claimed again later
            seen |= {e.entry_id for e in batch}
            log.info("re-processing %d pending entries of %s", len(batch), self.consumer)
            await self.process(batch)

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop` is set: heartbeat, claim stale entries, trim, apply new entries; wait out Redis
        outages with exponential backoff."""
        recovering, backoff = True, 0.0
        last_claim = last_beat = last_trim = 0.0
        while not stop.is_set():
            try:
                if recovering:
                    await self._recover()
                    if backoff:
                        log.info("redis is back; worker %s resumed", self.consumer)
                    recovering, backoff = False, 0.0
                now = time.monotonic()
                if now - last_beat > min(1.0, self.heartbeat_ttl_s / 3):
                    last_beat = now
                    await self.heartbeat()
                if now - last_claim > self.claim_idle_ms / 2000:
                    last_claim = now
                    claimed = await claim_stale(
                        self.redis, self.keys, self.consumer, min_idle_ms=self.claim_idle_ms, count=self.batch
                    )
                    if claimed:
                        log.info("claimed %d entries idle for %d ms", len(claimed), self.claim_idle_ms)
                        await self.process(claimed)
                if now - last_trim > self.trim_interval_s:
                    last_trim = now
                    metrics.STREAM_TRIMMED.inc(await trim_acknowledged(self.redis, self.keys))
                batch = await read_new(
                    self.redis, self.keys, self.consumer, count=self.batch, block_ms=self.block_ms
                )
                await self.process(batch)
            except REDIS_DOWN as exc:
                metrics.WORKER_REDIS_ERRORS.inc()
                backoff = min(max(2 * backoff, 0.1), self.max_backoff_s)
                log.warning("redis unavailable (%s: %s); retry in %.1f s", type(exc).__name__, exc, backoff)
                recovering = True
                try:
                    await asyncio.wait_for(stop.wait(), backoff)
                except TimeoutError:
                    pass
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                log.warning("consumer group missing (Redis lost its data?); re-creating it")
                recovering = True


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
    try:
        runtime = load_user_runtime(settings.userllm_checkpoint, slide=settings.encoder_slide)
    except ValueError as exc:  # a slide the checkpoint's window cannot hold
        raise SystemExit(f"error: USERLLM_ENCODER_SLIDE={settings.encoder_slide}: {exc}") from None
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
        heartbeat_ttl_s=settings.heartbeat_ttl_s,
        items_keep=settings.items_keep,
        state_ttl_s=settings.state_ttl_s,
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
        try:
            await worker.sign_off()
        except REDIS_DOWN:
            pass  # the heartbeat key expires by itself
    finally:
        await redis.aclose()


def run() -> None:
    """The `userllm-worker` command."""
    asyncio.run(main())


if __name__ == "__main__":
    run()
