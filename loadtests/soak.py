"""Soak test: a steady mixed load on the stack for minutes, reporting memory and latency drift per process.

    .venv/bin/python loadtests/soak.py --start-stack --minutes 10      # what `make soak` runs
    .venv/bin/python loadtests/soak.py --url http://127.0.0.1:8000 --minutes 2 --rate 10

Open loop at `--rate` requests a second (a fixed schedule, at most `--concurrency` in flight): 50%
`POST /events` (5 events of one of `--users` simulated users, unique event ids), 30% `POST /recommend`,
10% `POST /generate` genre, 5% `POST /generate` review (16 greedy tokens), 5% `GET /users/{id}`. Every
`--window` seconds it reads the resident memory (VmRSS) of each stack process (found by their
`python -m service.*` command lines) and the window's latency percentiles per route. At the end it waits
for the workers to drain the backlog and checks that every accepted event was applied (the sum of
`events_seen` over the users equals the events accepted).

Writes `<out>/soak.json` and `<out>/soak.md` (first vs last window: memory and p50/p99 per route, their
ratio; 5xx seen; events accepted vs applied; the command). Exits 1 on any 5xx, any transport error or an
accepted event not applied. Loopback hosts only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import httpx

REPO = Path(__file__).resolve().parents[1]
SERVICES = ("service.gateway", "service.generator", "service.worker")
# ml-latest-small movie ids (the demo checkpoint's catalogue): popular titles
ITEMS = (1, 2, 3, 5, 6, 10, 32, 47, 50, 110, 150, 260, 296, 318, 356, 480, 527, 589, 593, 1196, 1198, 1210,
         2571, 2858, 2959, 4993, 5952, 7153, 58559)  # fmt: skip
MIX = (("events", 50), ("recommend", 30), ("genre", 10), ("review", 5), ("user", 5))


def stack_processes() -> dict[str, int]:
    """`python -m service.<name>` processes of this user: name (worker-<pid> for each worker) -> pid."""
    out: dict[str, int] = {}
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        for i, a in enumerate(args[:-1]):
            if a == "-m" and args[i + 1] in SERVICES:
                name = args[i + 1].split(".")[1]
                pid = int(cmdline.parent.name)
                out[f"worker-{pid}" if name == "worker" else name] = pid
    return out


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Soak:
    def __init__(self, client: httpx.AsyncClient, users: list[str], items: list[str]):
        self.client, self.users, self.items = client, users, items
        self.latency: dict[str, list[float]] = {name: [] for name, _ in MIX}
        self.status: dict[str, int] = {}
        self.errors: list[str] = []
        self.accepted = 0
        self.clock = {u: 1_000_000.0 for u in users}

    async def one(self, kind: str) -> None:
        user = random.choice(self.users)
        start = time.perf_counter()
        try:
            if kind == "events":
                events = []
                for _ in range(5):
                    self.clock[user] += 1
                    events.append({"user_id": user, "item_id": random.choice(self.items), "rating": 4.0,
                                   "timestamp": self.clock[user], "event_id": uuid.uuid4().hex})  # fmt: skip
                resp = await self.client.post("/events", json={"events": events})
                if resp.status_code == 202:
                    self.accepted += resp.json()["accepted"]
            elif kind == "recommend":
                resp = await self.client.post("/recommend", json={"user_id": user, "k": 10})
            elif kind == "genre":
                resp = await self.client.post("/generate", json={"user_id": user, "task": "genre"})
            elif kind == "review":
                body = {"user_id": user, "task": "review", "item_id": random.choice(self.items), "rating": 4,
                        "max_new_tokens": 16, "temperature": 0}  # fmt: skip
                resp = await self.client.post("/generate", json=body)
            else:
                resp = await self.client.get(f"/users/{user}")
        except httpx.HTTPError as exc:
            self.errors.append(f"{kind}: {type(exc).__name__}: {exc}")
            return
        self.latency[kind].append(time.perf_counter() - start)
        key = f"{kind} {resp.status_code}"
        self.status[key] = self.status.get(key, 0) + 1
        if resp.status_code >= 500 and len(self.errors) < 20:
            self.errors.append(f"{kind}: {resp.status_code} {resp.text[:200]}")


async def run(args: argparse.Namespace) -> dict:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    async with httpx.AsyncClient(base_url=args.url, timeout=60, headers=headers) as client:
        info = await client.get("/readyz")
        info.raise_for_status()
        items = [str(i) for i in ITEMS]
        run_id = uuid.uuid4().hex[:6]
        users = [f"soak-{run_id}-{i}" for i in range(args.users)]
        soak = Soak(client, users, items)
        kinds = [name for name, weight in MIX for _ in range(weight)]
        gate = asyncio.Semaphore(args.concurrency)
        tasks: set[asyncio.Task] = set()
        windows = []
        t0 = time.monotonic()
        end = t0 + args.minutes * 60
        next_window, n = t0 + args.window, 0
        marks = {k: 0 for k in soak.latency}
        print(f"soak: {args.rate}/s for {args.minutes} min against {args.url}", file=sys.stderr)
        while (now := time.monotonic()) < end:
            due = t0 + n / args.rate
            if due > now:
                await asyncio.sleep(min(due - now, 0.05))
                continue
            n += 1
            if gate.locked():
                skipped = "skipped (concurrency full)"
                soak.status[skipped] = soak.status.get(skipped, 0) + 1
            else:
                async def guarded(kind: str) -> None:
                    async with gate:
                        await soak.one(kind)

                task = asyncio.create_task(guarded(random.choice(kinds)))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if now >= next_window:
                next_window += args.window
                window = {"t_s": round(now - t0), "rss_mb": {}, "p50_ms": {}, "p99_ms": {}, "n": {}}
                for name, pid in sorted(stack_processes().items()):
                    window["rss_mb"][name] = rss_mb(pid)
                for kind, values in soak.latency.items():
                    recent = values[marks[kind]:]
                    marks[kind] = len(values)
                    window["n"][kind] = len(recent)
                    for q, key in ((0.5, "p50_ms"), (0.99, "p99_ms")):
                        v = percentile(recent, q)
                        window[key][kind] = None if v is None else round(1000 * v, 1)
                windows.append(window)
                rss = window["rss_mb"]
                print(f"  t={window['t_s']:>4} s rss {rss} p50 {window['p50_ms']}", file=sys.stderr)
        await asyncio.gather(*tasks)
        drained = False
        for _ in range(120):
            ready = await client.get("/readyz")
            if ready.status_code == 200 and ready.json().get("backlog") == 0:
                drained = True
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)
        applied = 0
        for u in users:
            resp = await client.get(f"/users/{u}")
            if resp.status_code == 200:
                applied += resp.json()["events_seen"]
    five_xx = sum(v for k, v in soak.status.items() if k.split()[-1].startswith("5"))
    return {"requests": soak.status, "errors": soak.errors, "five_xx": five_xx, "windows": windows,
            "events_accepted": soak.accepted, "events_applied": applied, "backlog_drained": drained,
            "rate_per_s": args.rate, "minutes": args.minutes}  # fmt: skip


def drift(first: float | None, last: float | None) -> str:
    return "-" if not first or last is None else f"{last / first:.2f}x"


def report(result: dict, command: str) -> str:
    windows = result["windows"]
    first, last = (windows[0], windows[-1]) if windows else ({}, {})
    lines = [
        "# Soak", "",
        f"Command: `{command}` ({time.strftime('%Y-%m-%d', time.gmtime())}, this 2-core machine).", "",
        f"{result['rate_per_s']} requests a second for {result['minutes']} min: "
        f"{sum(result['requests'].values())} requests, **{result['five_xx']} 5xx**, "
        f"{len(result['errors'])} errors; events accepted **{result['events_accepted']}**, applied "
        f"**{result['events_applied']}** (backlog drained: {result['backlog_drained']}).", "",
        "| process | RSS first window (MB) | RSS last window (MB) | drift |", "|---|---|---|---|",
    ]  # fmt: skip
    for name in sorted(first.get("rss_mb", {})):
        a, b = first["rss_mb"].get(name), last.get("rss_mb", {}).get(name)
        lines.append(f"| {name} | {a and round(a)} | {b and round(b)} | {drift(a, b)} |")
    lines += ["", "| route | p50 first (ms) | p50 last (ms) | drift | p99 first (ms) | p99 last (ms) "
              "| drift |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for kind, _ in MIX:
        p50a, p50b = first.get("p50_ms", {}).get(kind), last.get("p50_ms", {}).get(kind)
        p99a, p99b = first.get("p99_ms", {}).get(kind), last.get("p99_ms", {}).get(kind)
        lines.append(
            f"| {kind} | {p50a} | {p50b} | {drift(p50a, p50b)} | {p99a} | {p99b} | {drift(p99a, p99b)} |"
        )
    lines += ["", "Responses: " + ", ".join(f"{k}: {v}" for k, v in sorted(result["requests"].items()))]
    if result["errors"]:
        lines += ["", "Errors (first 20):", *[f"- `{e}`" for e in result["errors"][:20]]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--start-stack", action="store_true", help="start `python -m service.stack` first")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=8.0, help="requests a second")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--window", type=float, default=30.0, help="seconds per sample")
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    parser.add_argument("--api-key", default=os.environ.get("USERLLM_API_KEY"))
    args = parser.parse_args(argv)
    host = urlsplit(args.url).hostname or ""
    if not (host.startswith("127.") or host in ("localhost", "::1")):
        parser.error(f"--url {args.url}: loopback hosts only")
    command = "python loadtests/soak.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    stack = None
    if args.start_stack:
        stack = subprocess.Popen([sys.executable, "-m", "service.stack"], cwd=REPO)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{args.url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if stack.poll() is not None:
                sys.stderr.write(f"error: the stack exited with code {stack.returncode}\n")
                return 1
            time.sleep(1)
    try:
        result = asyncio.run(run(args))
    finally:
        if stack is not None:
            stack.terminate()
            stack.wait(60)
    result["command"] = command
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(result, indent=1) + "\n")
    text = report(result, command)
    (args.out / "soak.md").write_text(text)
    print(text)
    lost = result["events_applied"] != result["events_accepted"]
    ok = not result["five_xx"] and not result["errors"] and not lost
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
