"""The whole stack over HTTP: freshness at steady event rates, `/recommend` and `/generate` at
concurrency 1 / 8 / 32, and `/recommend` while generations stream.

Starts `python -m service.stack` (gateway, generation server, one encoder worker, as `make run` does)
on a private `redis-server` (append-only, fsync every second, as a production Redis) and drives it
from this process with httpx, on the same 2 cores: client, Redis and the three processes share them.
The checkpoint is `--checkpoint-dir` (default `checkpoints`, the demo's `make train-demo`) when it
holds `userllm/`, else an untrained checkpoint of the paper-sized tower and the demo's placement
(gated cross-attention in the backbone's last 4 layers) on the real backbone, written to a temporary
folder: serving costs do not depend on the weight values, only the generated text does.

1. seeding: `--users` ml-latest-small users with their first 60 ratings (past the 50-event window)
   through `POST /events`, drained by the worker;
2. `/recommend` (k=10), closed loop at concurrency 1, 8, 32 for `--seconds` each;
3. `/generate` review (`--tokens` greedy tokens), `--gen-requests` x concurrency requests at 1, 8, 32;
4. `/recommend` at concurrency 1 while 4 review generations stream, against (2) at concurrency 1;
5. freshness at steady rates (open loop, `--rates` events/s in 10 batches a second, users round
   robin) for `--seconds` each: probe events for users outside the load, one at a time per probe
   user, 4 a second; freshness = the user's `embedding_updated_at` (written by the worker with the
   tokens) minus the moment the probe's 202 arrived; plus the backlog left when the load stops.

Run: USERLLM_BACKBONE_DIR=... python -m benchmarks.bench_stack [--seconds 8] [--users 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import torch

from benchmarks.harness import ROOT, Report, Table, add_thread_arg, backbone_dir, free_port
from benchmarks.movielens import MovieLens, load
from benchmarks.stack_client import PROBES_PER_S, SEED_EVENTS, Driver

PROBE_USERS = 4


def untrained_checkpoint(root: Path, data: MovieLens) -> Path:
    """An untrained USER-LLM checkpoint shaped as the recipes' (paper-sized tower, cross-attention in the
    last 4 layers, 16-token scoring prompts)."""
    from models.backbone import backbone_id, load_backbone
    from models.checkpoint import save_checkpoint
    from models.personalized import PersonalizedLM, UserLLMConfig
    from models.user_encoder import UserEncoderConfig
    from models.user_tower import UserTowerConfig
    from models.userllm import LLMAdapterConfig

    backbone, _ = load_backbone(backbone_dir())
    layers = len(backbone.model.layers)
    config = UserLLMConfig(
        tower=UserTowerConfig(encoder=UserEncoderConfig(features=data.features())),
        llm=LLMAdapterConfig(cross_attn_layers=tuple(range(layers - 4, layers))),
        num_items=data.vocab_size("item"),
        num_categories=data.vocab_size("category"),
        prompt_tokens=16,  # the scoring prompts' last 16 tokens, as the USER-LLM recipes train them
    )
    torch.manual_seed(0)
    model = PersonalizedLM(config, backbone)
    save_checkpoint(root / "userllm", model.checkpoint_state(), config=model.config.to_dict(),
                    kind="userllm", trainable_only=True,
                    manifest={"backbone_id": backbone_id(backbone_dir()), "seed": 0},
                    extras={"vocab": data.vocab, "catalogue": data.catalogue})  # fmt: skip
    return root


async def run(url: str, data: MovieLens, args: argparse.Namespace) -> dict[str, Any]:
    users = data.users_with(SEED_EVENTS + 1)[: args.users + PROBE_USERS]
    load_users, probes = users[: args.users], users[args.users :]
    out: dict[str, Any] = {}
    limits = httpx.Limits(max_connections=128, max_keepalive_connections=128)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=300) as client:
        d = Driver(client, data, load_users)
        began = time.perf_counter()
        await d.seed(users)
        out["seed_seconds"] = time.perf_counter() - began
        print(f"seeded {len(users)} users x {SEED_EVENTS} events in {out['seed_seconds']:.1f} s", flush=True)
        await d.closed_loop(d.recommend, 4, 2.0)  # warm-up
        await d.generate(2, 2, 4)
        for c in (1, 8, 32):
            out[f"recommend/{c}"] = await d.closed_loop(d.recommend, c, args.seconds)
            print(f"recommend c={c}", out[f"recommend/{c}"], flush=True)
        for c in (1, 8, 32):
            out[f"generate/{c}"] = await d.generate(c, args.gen_requests * c, args.tokens)
            print(f"generate c={c}", out[f"generate/{c}"], flush=True)
        out["recommend/while"] = await d.recommend_while_generating(args.seconds, args.tokens)
        print("recommend while 4 generate", out["recommend/while"], flush=True)
        for rate in args.rates:
            out[f"fresh/{rate}"] = await d.freshness(rate, args.seconds, probes)
            print(f"freshness at {rate}/s", out[f"fresh/{rate}"], flush=True)
            while await d.backlog() > 0:  # drain before the next rate
                await asyncio.sleep(0.5)
    return out


def start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("error: bench_stack needs redis-server on PATH (a private instance is started)")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
                             "--appendonly", "yes", "--appendfsync", "everysec", "--save", ""],
                            stdout=subprocess.DEVNULL)  # fmt: skip
    return proc, f"redis://127.0.0.1:{port}/0"


def wait_ready(url: str, stack: subprocess.Popen[bytes], timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if stack.poll() is not None:
            raise SystemExit(f"error: the stack exited with code {stack.returncode} during start-up")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    raise SystemExit(f"error: the stack was not ready after {timeout_s:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each closed or open loop")
    parser.add_argument("--users", type=int, default=200, help="seeded users under load")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per generated review")
    parser.add_argument("--gen-requests", type=int, default=2, help="review requests per concurrent slot")
    parser.add_argument("--rates", default="100,1000", help="steady event rates (events/s) for freshness")
    parser.add_argument("--checkpoint-dir", type=Path, default=ROOT / "checkpoints")
    add_thread_arg(parser)  # accepted as every benchmark's; the stack's processes use torch's default
    args = parser.parse_args()
    args.rates = [int(r) for r in args.rates.split(",") if r]
    started = time.time()
    data = load()
    tmp = Path(tempfile.mkdtemp(prefix="bench-stack-"))
    trained = (args.checkpoint_dir / "userllm" / "manifest.json").is_file()
    checkpoints = args.checkpoint_dir if trained else untrained_checkpoint(tmp, data)
    redis, redis_url = start_redis(tmp)
    port, gen_port = free_port(), free_port()
    env = {**os.environ, "USERLLM_REDIS_URL": redis_url, "USERLLM_CHECKPOINT_DIR": str(checkpoints),
           "USERLLM_PORT": str(port), "USERLLM_HOST": "127.0.0.1", "USERLLM_GENERATOR_PORT": str(gen_port),
           "USERLLM_GENERATOR_URL": f"http://127.0.0.1:{gen_port}", "USERLLM_WORKER_METRICS_PORT": "0",
           "USERLLM_LOG_LEVEL": "WARNING", "USERLLM_BACKBONE_DIR": str(backbone_dir()),
           "USERLLM_MODEL": "userllm"}  # fmt: skip
    env.pop("USERLLM_API_KEYS_FILE", None)
    log = (tmp / "stack.log").open("wb")
    stack = subprocess.Popen([sys.executable, "-m", "service.stack"], cwd=ROOT, env=env, stdout=log,
                             stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, stack)
        out = asyncio.run(run(url, data, args))
    except BaseException:
        sys.stderr.write("the stack's log ends:\n" + (tmp / "stack.log").read_text()[-4000:])
        raise
    finally:
        stack.terminate()
        stack.wait(timeout=30)
        log.close()
        redis.terminate()
        redis.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
    report = Report(
        name="stack",
        title="The whole stack over HTTP: latency at concurrency 1 / 8 / 32, freshness at steady rates",
        summary=(
            "`python -m service.stack` (gateway, generation server, one encoder worker; torch's default "
            "threads in each) on a private redis-server (append-only, fsync every second), driven over "
            f"HTTP by this process on the same 2 CPUs. {args.users} ml-latest-small users seeded with "
            f"{SEED_EVENTS} ratings each (full 50-event windows). Closed loops of {args.seconds:.0f} s per "
            "concurrency; review generations of "
            f"{args.tokens} greedy tokens; freshness probes during open-loop event loads. Checkpoint: "
            + ("the demo checkpoint (`make train-demo`)." if trained else
               "untrained, paper-sized tower, cross-attention in the last 4 layers, 16-token scoring "
               "prompts as the recipes (no demo checkpoint here; costs do not depend on the weights).")
        ),
        started=started,
    )  # fmt: skip
    served = Table(
        "`/recommend` (k=10) and `/generate` review over HTTP; throughput ratio = this row / concurrency 1",
        ["route", "concurrency", "requests", "requests/s", "p50 ms", "p99 ms", "tokens/s",
         "throughput ratio"],
    )  # fmt: skip
    for route in ("recommend", "generate"):
        for c in (1, 8, 32):
            r = out[f"{route}/{c}"]
            key = "tokens/s" if route == "generate" else "requests/s"
            served.rows.append({"route": f"/{route}", "concurrency": c, **r,
                                "throughput ratio": r[key] / out[f"{route}/1"][key]})  # fmt: skip
    idle, busy = out["recommend/1"], out["recommend/while"]
    during = Table(
        "`/recommend` at concurrency 1 while 4 review generations stream vs idle (ratio = while / idle)",
        ["while", "requests/s", "p50 ms", "p99 ms", "ratio to idle (p50)"],
    )
    during.rows += [{"while": "idle", **idle, "ratio to idle (p50)": 1.0},
                    {"while": "4 generations stream", **busy,
                     "ratio to idle (p50)": busy["p50 ms"] / idle["p50 ms"]}]  # fmt: skip
    fresh = Table(
        "Freshness (probe event's 202 -> the user's tokens rewritten by the worker) at steady event rates",
        ["events/s offered", "events/s sent", "probes", "freshness p50 ms", "freshness p99 ms",
         "freshness max ms", "backlog at the end"],
    )  # fmt: skip
    fresh.rows += [out[f"fresh/{rate}"] for rate in args.rates]
    report.tables = [served, during, fresh]
    report.params.update({k: v for k, v in vars(args).items() if k != "checkpoint_dir"})
    report.params.update({"trained_checkpoint": trained, "seed_seconds": out["seed_seconds"], "runs": out})
    report.notes = [
        f"Seeding {args.users + PROBE_USERS} users x {SEED_EVENTS} events took {out['seed_seconds']:.1f} s "
        "through `POST /events` (batches of 500) until every user's tokens were written.",
        "Load events go to the seeded users round robin (one new rating each), 10 requests a second; probe "
        f"users ({PROBE_USERS}) are outside the load, one probe in flight per user, {PROBES_PER_S:.0f} "
        "probes a second in all; a probe polls `GET /users/{id}` every 50 ms until its event is counted, "
        "then reads the time the worker wrote the tokens (`embedding_updated_at`).",
        "The generation server runs one engine loop (service/scheduler.py): scores between decode steps, "
        "continuous batching of generations (at most `USERLLM_MAX_BATCH_SIZE` = 8 rows).",
    ]
    report.save()


if __name__ == "__main__":
    main()
