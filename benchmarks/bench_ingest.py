"""Ingestion: `POST /events` through the real gateway process (HTTP, validation, de-duplication check,
backlog check, pipelined XADD) against the same events queued straight into Redis with `publish`
(no HTTP, no validation): what the gateway adds to the bare Redis cost.

The gateway runs as its own process (`python -m service.gateway`, one uvicorn worker, authentication
off, no generation server: the catalogue is asked for at most every 5 s) on the machine's Redis
under a fresh key prefix; the client is this process (httpx, keep-alive), on the same 2 cores.
Two loads, each for `--seconds`, gateway and direct alternated `--repeats` times:

- batches of 100 events, 8 requests in flight: events/s;
- single events, 32 requests in flight: requests/s and latency p50 / p99.

Run: python -m benchmarks.bench_ingest [--seconds 8] [--repeats 2] [--redis-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

import httpx

from benchmarks.harness import ROOT, Report, Table, add_thread_arg, free_port
from service.keys import Keys
from service.redis_conn import create_redis
from service.schemas import EventIn
from service.streams import publish


def body(n: int, seq: int) -> dict[str, Any]:
    return {"events": [{"user_id": f"u{(seq * n + i) % 5000}", "item_id": str(1 + (seq + i) % 9000),
                        "timestamp": 1.7e9 + seq + i, "rating": 4.0} for i in range(n)]}  # fmt: skip


async def drive(send: Any, batch: int, in_flight: int, seconds: float) -> dict[str, float]:
    """`in_flight` loops sending `batch`-event requests for `seconds`; totals and latencies."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    counter = [0]

    async def loop() -> None:
        while time.perf_counter() < deadline:
            counter[0] += 1
            start = time.perf_counter()
            await send(body(batch, counter[0]))
            latencies.append(time.perf_counter() - start)

    began = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(in_flight)))
    wall = time.perf_counter() - began
    latencies.sort()
    return {
        "requests/s": len(latencies) / wall,
        "events/s": len(latencies) * batch / wall,
        "p50 ms": 1000 * statistics.median(latencies),
        "p99 ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
    }


Runs = dict[str, list[dict[str, float]]]  # "load/path" -> one figure set per round


async def run(url: str, port: int, prefix: str, args: argparse.Namespace) -> Runs:
    redis = create_redis(url, "bench")
    keys = Keys(prefix=prefix, num_shards=4)
    out: Runs = {}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=30) as client:

        async def via_gateway(payload: dict[str, Any]) -> None:
            resp = await client.post("/events", json=payload)
            if resp.status_code != 202:
                raise RuntimeError(f"/events answered {resp.status_code}: {resp.text[:200]}")

        async def direct(payload: dict[str, Any]) -> None:
            await publish(redis, keys, [EventIn.model_validate(e) for e in payload["events"]])

        try:
            for _ in range(args.repeats):
                for load, batch, in_flight in (("batch", 100, 8), ("single", 1, 32)):
                    for name, send in (("gateway", via_gateway), ("direct", direct)):
                        key = f"{load}/{name}"
                        out.setdefault(key, []).append(await drive(send, batch, in_flight, args.seconds))
                        print(key, {k: round(v, 1) for k, v in out[key][-1].items()}, flush=True)
        finally:
            async for k in redis.scan_iter(match=f"{prefix}*", count=1000):
                await redis.delete(k)
            await redis.aclose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each load")
    parser.add_argument("--repeats", type=int, default=2, help="alternating rounds")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    add_thread_arg(parser)  # accepted as every benchmark's; no torch work here
    args = parser.parse_args()
    started = time.time()
    port, prefix = free_port(), f"bench-ingest-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "USERLLM_REDIS_URL": args.redis_url, "USERLLM_KEY_PREFIX": prefix,
           "USERLLM_PORT": str(port), "USERLLM_HOST": "127.0.0.1", "USERLLM_AUTH_DISABLED": "true",
           "USERLLM_MAX_BACKLOG": str(10**9), "USERLLM_GENERATOR_URL": "http://127.0.0.1:9",
           "USERLLM_LOG_LEVEL": "WARNING"}  # fmt: skip
    gateway = subprocess.Popen([sys.executable, "-m", "service.gateway"], cwd=ROOT, env=env)
    try:
        for _ in range(100):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise SystemExit("error: the gateway did not start")
        runs = asyncio.run(run(args.redis_url, port, prefix, args))
    finally:
        gateway.terminate()
        gateway.wait(timeout=10)

    def med(key: str, col: str) -> float:
        return statistics.median(r[col] for r in runs[key])

    table = Table(
        f"`POST /events` through the gateway vs `publish` straight into Redis (medians of {args.repeats} "
        f"runs of {args.seconds:.0f} s)",
        ["load", "path", "events/s", "requests/s", "p50 ms", "p99 ms", "ratio (gateway / direct events/s)"],
    )
    for load, label in (("batch", "batches of 100, 8 in flight"), ("single", "single events, 32 in flight")):
        for name in ("gateway", "direct"):
            key = f"{load}/{name}"
            table.rows.append({
                "load": label, "path": "gateway (HTTP)" if name == "gateway" else "publish (no HTTP)",
                "events/s": med(key, "events/s"), "requests/s": med(key, "requests/s"),
                "p50 ms": med(key, "p50 ms"), "p99 ms": med(key, "p99 ms"),
                "ratio (gateway / direct events/s)": med(key, "events/s") / med(f"{load}/direct", "events/s"),
            })  # fmt: skip
    report = Report(
        name="ingest",
        title="Ingestion: POST /events through the gateway vs straight into Redis",
        summary=(
            "The gateway process (one uvicorn worker, authentication off) against `publish` called in the "
            "client process with the same events; the machine's Redis, a fresh key prefix, no workers "
            "(the streams only grow). Client and gateway share the 2 CPUs."
        ),
        tables=[table],
        started=started,
    )
    report.params.update({"seconds": args.seconds, "repeats": args.repeats, "runs": runs})
    report.save()


if __name__ == "__main__":
    main()
