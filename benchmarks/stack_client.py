"""The client side of the stack benchmark: closed and open HTTP loads against the gateway, freshness
probes (an event's 202 -> the user's tokens rewritten by the worker, read back with GET /users/{id}).

Used by benchmarks/bench_stack.py; every non-2xx answer stops the benchmark.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import httpx

from benchmarks.movielens import MovieLens

SEED_EVENTS = 60  # per user: past the encoder window of 50, so updates slide the window
PROBES_PER_S = 4.0
POLL_S = 0.05  # a probe's GET /users/{id} period (freshness is read from the tokens' timestamp)


def event(user: str, item: str, ts: float, rating: float) -> dict[str, Any]:
    return {"user_id": user, "item_id": item, "timestamp": ts, "rating": rating}


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def figures(latencies: list[float], wall: float, **extra: Any) -> dict[str, Any]:
    return {"requests": len(latencies), "requests/s": len(latencies) / wall,
            "p50 ms": 1000 * statistics.median(latencies), "p99 ms": 1000 * pct(latencies, 0.99),
            **extra}  # fmt: skip


class Driver:
    """The client side: httpx against the gateway; every non-2xx answer stops the benchmark."""

    def __init__(self, client: httpx.AsyncClient, data: MovieLens, users: list[str]):
        self.client, self.data, self.users = client, data, users
        self.clock = 1.8e9  # event timestamps after every seeded one

    async def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        resp = await self.client.post(path, json=body)
        if resp.status_code >= 300:
            raise RuntimeError(f"{path} answered {resp.status_code}: {resp.text[:300]}")
        return resp

    def fresh_events(self, users: list[str]) -> list[dict[str, Any]]:
        out = []
        for u in users:
            self.clock += 1
            item = self.data.histories[u][SEED_EVENTS % len(self.data.histories[u])].item_id
            out.append(event(u, item, self.clock, 4.0))
        return out

    async def seed(self, users: list[str]) -> None:
        events = [event(u, e.item_id, e.timestamp, e.rating or 3.0)
                  for u in users for e in self.data.histories[u][:SEED_EVENTS]]  # fmt: skip
        for start in range(0, len(events), 500):
            await self.post("/events", {"events": events[start : start + 500]})
        await self.wait_seen({u: SEED_EVENTS for u in users}, timeout_s=600)

    async def wait_seen(self, want: dict[str, int], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        todo = dict(want)
        while todo:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(todo)} users not updated after {timeout_s:.0f} s")
            for u in list(todo)[:64]:
                info = (await self.client.get(f"/users/{u}")).json()
                if info.get("events_seen", 0) >= todo[u] and info.get("embedding_updated_at"):
                    del todo[u]
            await asyncio.sleep(0.2)

    async def closed_loop(self, fn: Any, concurrency: int, seconds: float) -> dict[str, Any]:
        latencies: list[float] = []
        deadline = time.perf_counter() + seconds

        async def loop(i: int) -> None:
            n = i
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                await fn(n)
                latencies.append(time.perf_counter() - start)
                n += concurrency

        began = time.perf_counter()
        await asyncio.gather(*(loop(i) for i in range(concurrency)))
        return figures(latencies, time.perf_counter() - began)

    async def recommend(self, n: int) -> None:
        await self.post("/recommend", {"user_id": self.users[n % len(self.users)], "k": 10})

    async def review(self, n: int, tokens: int) -> int:
        user = self.users[n % len(self.users)]
        body = {"user_id": user, "task": "review", "item_id": self.data.histories[user][0].item_id,
                "rating": 4.0, "max_new_tokens": tokens, "temperature": 0}  # fmt: skip
        return int((await self.post("/generate", body)).json()["completion_tokens"])

    async def generate(self, concurrency: int, requests: int, tokens: int) -> dict[str, Any]:
        latencies, produced = [], []
        queue = list(range(requests))

        async def loop() -> None:
            while queue:
                n = queue.pop()
                start = time.perf_counter()
                produced.append(await self.review(n, tokens))
                latencies.append(time.perf_counter() - start)

        began = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        wall = time.perf_counter() - began
        return figures(latencies, wall, **{"tokens/s": sum(produced) / wall, "tokens": sum(produced)})

    async def recommend_while_generating(self, seconds: float, tokens: int) -> dict[str, Any]:
        stop = asyncio.Event()

        async def stream_forever(i: int) -> None:
            while not stop.is_set():
                await self.review(1000 + i, tokens)

        background = [asyncio.create_task(stream_forever(i)) for i in range(4)]
        await asyncio.sleep(1.0)  # the 4 generations are decoding
        try:
            return await self.closed_loop(self.recommend, 1, seconds)
        finally:
            stop.set()
            await asyncio.gather(*background)

    async def freshness(self, rate: int, seconds: float, probes: list[str]) -> dict[str, Any]:
        """Open-loop load of `rate` events/s for `seconds` while probes measure 202 -> tokens updated."""
        samples: list[float] = []
        per_tick = max(1, rate // 10)
        deadline = time.perf_counter() + seconds
        sent = [0, 1.0]  # events sent, seconds the load ran

        async def load_loop() -> None:
            tick, cursor, pending = time.perf_counter(), 0, set()
            began = tick
            while tick < deadline:
                batch = [self.users[(cursor + i) % len(self.users)] for i in range(per_tick)]
                cursor += per_tick
                pending.add(asyncio.create_task(self.post("/events", {"events": self.fresh_events(batch)})))
                sent[0] += per_tick
                tick += 0.1
                await asyncio.sleep(max(0.0, tick - time.perf_counter()))
            await asyncio.gather(*pending)
            sent[1] = time.perf_counter() - began

        async def probe_loop(user: str, offset: float) -> None:
            await asyncio.sleep(offset)
            seen = (await self.client.get(f"/users/{user}")).json()["events_seen"]
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                await self.post("/events", {"events": self.fresh_events([user])})
                accepted = time.time()
                seen += 1
                while True:
                    info = (await self.client.get(f"/users/{user}")).json()
                    if info["events_seen"] >= seen:
                        samples.append(max(0.0, info["embedding_updated_at"] - accepted))
                        break
                    if time.perf_counter() - started > 30:
                        raise RuntimeError(f"probe event of {user} not applied in 30 s")
                    await asyncio.sleep(POLL_S)
                period = len(probes) / PROBES_PER_S
                await asyncio.sleep(max(0.0, started + period - time.perf_counter()))

        period = len(probes) / PROBES_PER_S
        await asyncio.gather(load_loop(), *(probe_loop(u, i * period / len(probes)) for i, u in
                                            enumerate(probes)))  # fmt: skip
        backlog = await self.backlog()
        return {"events/s offered": rate, "events/s sent": sent[0] / sent[1], "probes": len(samples),
                "freshness p50 ms": 1000 * statistics.median(samples),
                "freshness p99 ms": 1000 * pct(samples, 0.99), "freshness max ms": 1000 * max(samples),
                "backlog at the end": backlog}  # fmt: skip

    async def backlog(self) -> int:
        return int((await self.client.get("/readyz")).json().get("backlog", -1))
