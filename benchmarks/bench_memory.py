"""Redis memory per user as users grow: the worker's layout with the default retention vs a compact one.

Synthetic users are written the way the encoder worker writes them (`write_updates`, the
compare-and-set script), with what a long-lived user keeps under each policy: its retained events
(ml-latest-small items and ratings, keyed like stream entries), user tokens of the demo recipe's shape
(17 x 64 fp16), encoder state (2 layers: 5 x 50 x 64 fp16), seen items and counters. Two retention
policies:

- **default**: `history_keep` 200 events, `items_keep` 10,000 seen items, the encoder state kept
  (`state_ttl_s` 0);
- **compact**: `history_keep` 60 (the encoder window 50 + the slide 10), `items_keep` 100, the state
  of inactive users expired (`state_ttl_s`; measured after it expired).

Redis keeps a small hash or sorted set in a compact encoding (listpack, up to 128 entries by
default) and converts it for good once it grows past that; the compact policy's sets stay below it
while micro-batches add a few events per user, the default's 200 events do not. Writing each user's
retained content in one call gives the encoding a user reaches by growing in small steps.

Bytes per user = growth of Redis' `used_memory` / users; the breakdown per key comes from
`MEMORY USAGE` (exact, `SAMPLES 0`) over 100 of the users. A private `redis-server` (no persistence)
on a free port holds the data, so nothing else is counted and the machine's Redis is untouched.

Run: python -m benchmarks.bench_memory [--users 1000,10000,100000] [--default-max 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import subprocess
import time
from typing import Any

import numpy as np
import redis.asyncio as aioredis

from benchmarks.harness import Report, Table, add_thread_arg, free_port
from benchmarks.movielens import load
from service.keys import Keys
from service.user_store import StoredEvent, UserUpdate, write_updates

TOKENS = (17, 64)  # the demo recipe: 16 Perceiver tokens + the last-event token, width 64
STATE = (5, 50, 64)  # 2 layers: (k, v) x 2 + the inputs; 50 events; d_model 64
POLICIES = {"default": (200, 10_000, 0), "compact": (60, 100, 1)}  # (history_keep, items_keep, state_ttl_s)
KINDS = ("hist", "evt", "emb", "state", "seen", "items")  # Keys.user_keys order


def synthetic_events(pool: list[StoredEvent], user: int, n: int) -> list[StoredEvent]:
    """n events of a synthetic user: real items and ratings, stream-entry keys, increasing times."""
    start = (user * 7919) % len(pool)
    base = 1_700_000_000_000 + user * 10_000
    out = []
    for i in range(n):
        e = pool[(start + i) % len(pool)]
        out.append(StoredEvent(f"{base + i}-0", e.item_id, 1.7e9 + user + i, "rating", e.rating, None))
    return out


async def fill(redis: aioredis.Redis, keys: Keys, pool: list[StoredEvent], users: range, policy: str) -> None:
    keep, items_keep, ttl = POLICIES[policy]
    rng = np.random.default_rng(0)
    tokens = rng.standard_normal(TOKENS).astype(np.float16)
    state = rng.standard_normal(STATE).astype(np.float16)
    batch: list[UserUpdate] = []
    for u in users:
        events = synthetic_events(pool, u, keep)
        batch.append(UserUpdate(
            user_id=f"u{u}", expected_rev="", add=events, drop=[], user_tokens=tokens, model_version="bench",
            n_events_encoded=50, last_event_key=events[-1].key, state_kv=state,
            state_keys=[e.key for e in events[-50:]], n_unknown=0,
            new_items=[(e.item_id, e.timestamp) for e in events][-items_keep:], items_keep=items_keep,
            history_keep=keep, state_ttl_s=ttl,
        ))  # fmt: skip
        if len(batch) == 200:
            assert all(await write_updates(redis, keys, batch))
            batch = []
    if batch:
        assert all(await write_updates(redis, keys, batch))


async def measure(url: str, pool: list[StoredEvent], n: int, policy: str) -> dict[str, Any]:
    redis = aioredis.from_url(url, socket_timeout=600)
    keys = Keys(prefix="mem", num_shards=1)
    try:
        await redis.flushall()
        before = (await redis.info("memory"))["used_memory"]
        start = time.perf_counter()
        await fill(redis, keys, pool, range(n), policy)
        seconds = time.perf_counter() - start
        if POLICIES[policy][2]:
            await asyncio.sleep(POLICIES[policy][2] + 0.5)  # the states expire
            async for _ in redis.scan_iter(count=10_000):  # SCAN removes the expired keys it meets
                pass
            assert await redis.dbsize() == (len(KINDS) - 1) * n, "states left after their TTL"
        used = (await redis.info("memory"))["used_memory"] - before
        sample = range(0, n, max(1, n // 100))
        per_kind = {k: 0 for k in KINDS}
        for u in sample:
            for kind, key in zip(KINDS, keys.user_keys(f"u{u}"), strict=True):
                per_kind[kind] += await redis.memory_usage(key, samples=0) or 0
        return {"users": n, "policy": policy, "bytes_per_user": used / n, "write_s": seconds,
                **{f"{k}_bytes": v / len(sample) for k, v in per_kind.items()}}  # fmt: skip
    finally:
        await redis.flushall()
        await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", default="1000,10000,100000", help="user counts to measure")
    parser.add_argument("--default-max", type=int, default=10_000,
                        help="largest count for the default policy (~75 KB a user)")  # fmt: skip
    add_thread_arg(parser)  # accepted as every benchmark's (run_all passes it); no torch work here
    args = parser.parse_args()
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("error: bench_memory needs redis-server on PATH (a private instance is started)")
    started = time.time()
    port = free_port()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        url = f"redis://127.0.0.1:{port}/0"
        for _ in range(50):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.1)
        data = load()
        pool = [e for h in data.histories.values() for e in h]
        rows = []
        for n in [int(x) for x in args.users.split(",") if x]:
            for policy in POLICIES:
                if policy == "default" and n > args.default_max:
                    continue
                rows.append(asyncio.run(measure(url, pool, n, policy)))
                print({k: round(v, 1) if isinstance(v, float) else v for k, v in rows[-1].items()})
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    base = {r["users"]: r["bytes_per_user"] for r in rows if r["policy"] == "default"}
    table = Table(
        "Redis bytes per user (used_memory growth / users) and the per-key breakdown (MEMORY USAGE, "
        "100 sampled users)",
        ["users", "policy", "bytes per user", "ratio to default", "hist", "evt", "emb", "state", "seen",
         "items"],
    )  # fmt: skip
    for r in rows:
        ratio = base[r["users"]] / r["bytes_per_user"] if r["users"] in base else None
        table.rows.append({
            "users": r["users"], "policy": r["policy"], "bytes per user": r["bytes_per_user"],
            "ratio to default": ratio if ratio is not None else "-",
            **{k: r[f"{k}_bytes"] for k in KINDS},
        })  # fmt: skip
    report = Report(
        name="memory",
        title="Redis memory per user: default retention vs compact",
        summary=(
            "Synthetic users written through the worker's compare-and-set script into a private "
            "redis-server: their retained events (ml-latest-small items), user tokens 17 x 64 fp16, encoder "
            "state 5 x 50 x 64 fp16, seen items. `default`: history_keep 200, items_keep 10,000, state kept; "
            "`compact`: history_keep 60, items_keep 100, the state of inactive users expired (state_ttl_s). "
            "`ratio to default` = default bytes / compact bytes at the same user count."
        ),
        tables=[table],
        started=started,
    )
    report.params.update({"policies": POLICIES, "tokens": TOKENS, "state": STATE, "rows": rows})
    report.notes.append(
        "`items` holds the items `exclude_seen` removes from recommendations: with `items_keep` 100 a "
        "long-lived user may be recommended an item seen before its newest 100. `hist` + `evt` are the "
        "history (the worker reads at most the newest 51 events; the text-prompt path reads the newest "
        "`history_keep`)."
    )
    report.save()


if __name__ == "__main__":
    main()
