"""End to end on real processes: the one-command stack on the embedded Redis (its children SIGKILLed
and restarted by the stack), and a worker killed with SIGKILL mid-stream and restarted (no event
lost, none applied twice)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis
from llm_fixtures import real_backbone_dir  # noqa: F401
from service_fixtures import build_tiny_stack

from service.keys import GROUP, Keys
from service.redis_conn import free_port
from service.settings import Settings

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.redis]


@pytest.fixture(scope="module")
def tiny_stack(tmp_path_factory, real_backbone_dir):  # noqa: F811
    return build_tiny_stack(tmp_path_factory.mktemp("stack"), real_backbone_dir)


def _env(tiny_stack, **extra: str) -> dict[str, str]:
    backbone, ckpt = tiny_stack
    env = {k: v for k, v in os.environ.items() if not k.startswith("USERLLM_")}
    env.update(
        USERLLM_BACKBONE_DIR=str(backbone),
        USERLLM_CHECKPOINT_DIR=str(ckpt.parent),
        USERLLM_WORKER_METRICS_PORT="0",
        USERLLM_WORKER_BLOCK_MS="50",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def _wait(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if value := predicate():
                return value
        except (httpx.HTTPError, redis.RedisError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _child_pid(parent: int, module: str) -> int:
    """The pid of `parent`'s child process running `python -m module`."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and module.encode() in cmdline:
            return int(stat.parent.name)
    raise AssertionError(f"no child {module} of {parent}")


def test_stack_on_embedded_redis_events_change_recommendations(tiny_stack, tmp_path) -> None:
    port, gen_port = free_port(), free_port()
    env = _env(tiny_stack, USERLLM_PORT=str(port), USERLLM_GENERATOR_PORT=str(gen_port))
    log = open(tmp_path / "stack.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.stack", "--ready-timeout", "120"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: httpx.get(f"{base}/readyz", timeout=2).status_code == 200, 150, "the stack to be ready")
        with httpx.Client(base_url=base, timeout=30) as client:
            cold = client.post("/recommend", json={"user_id": "e2e", "k": 10}).json()
            assert cold["personalized"] is False
            sent = client.post(
                "/events",
                json={
                    "events": [
                        {"user_id": "e2e", "item_id": str(i), "timestamp": 100 + i, "rating": 5.0}
                        for i in (2, 4, 8, 16)
                    ]
                },
            )
            assert sent.status_code == 202
            info = _wait(
                lambda: (
                    (r := client.get("/users/e2e")).status_code == 200
                    and r.json()["events_seen"] == 4  # the worker may apply them over several reads
                    and r.json()
                ),
                30,
                "the 4 events applied and their user tokens in Redis",
            )
            assert info["embedding_model_version"] == cold["model_version"]
            assert info["events_seen"] == 4 and info["embedding_n_events"] == 4
            warm = client.post("/recommend", json={"user_id": "e2e", "k": 10}).json()
            assert warm["personalized"] is True
            assert [(i["item_id"], round(i["score"], 4)) for i in warm["items"]] != [
                (i["item_id"], round(i["score"], 4)) for i in cold["items"]
            ]
            assert {"2", "4", "8", "16"}.isdisjoint(i["item_id"] for i in warm["items"])

            # the stack restarts children that die: SIGKILL the generation server and the worker, once the
            # stack itself saw the start-up end (a child exiting before that stops the stack on purpose)
            _wait(lambda: "stack is up" in (tmp_path / "stack.log").read_text(), 30, "the stack's start-up")
            for module in ("service.generator", "service.worker"):
                os.kill(_child_pid(proc.pid, module), signal.SIGKILL)
            _wait(lambda: (tmp_path / "stack.log").read_text().count("restarted (restart 1") == 2, 60,
                  "both children restarted")  # fmt: skip
            _wait(lambda: httpx.get(f"{base}/readyz", timeout=2).status_code == 200, 150, "ready again")
            one = {"user_id": "e2e", "item_id": "32", "timestamp": 200, "rating": 4.0}
            again = client.post("/events", json=one)
            assert again.status_code == 202
            _wait(lambda: client.get("/users/e2e").json()["events_seen"] == 5, 30, "the restarted worker")
            assert client.post("/recommend", json={"user_id": "e2e", "k": 10}).json()["personalized"] is True
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        log.close()
    assert code == 0, (tmp_path / "stack.log").read_text()[-3000:]


def test_worker_killed_mid_stream_loses_nothing_and_applies_nothing_twice(
    tiny_stack, redis_url, key_prefix, clean_redis, tmp_path
) -> None:
    keys = Keys(key_prefix, 2)
    users, per_user = 40, 30
    env = _env(
        tiny_stack,
        USERLLM_REDIS_URL=redis_url,
        USERLLM_KEY_PREFIX=key_prefix,
        USERLLM_NUM_SHARDS="2",
        USERLLM_WORKER_NAME="victim",
        USERLLM_WORKER_BATCH="20",
    )
    # queue everything first (through the same producer code as the gateway)
    import asyncio

    from service.redis_conn import create_redis
    from service.schemas import EventIn
    from service.streams import ensure_groups, publish

    async def produce() -> None:
        client = create_redis(redis_url, "test")
        await ensure_groups(client, keys)
        events = [
            EventIn(
                user_id=f"k{u}",
                item_id=str(1 + (u + i) % 40),
                timestamp=1000 + i,
                rating=3.0,
                event_id=f"k{u}-{i}",
            )
            for i in range(per_user)
            for u in range(users)
        ]
        await publish(client, keys, events)
        await client.aclose()

    asyncio.run(produce())

    def applied() -> int:
        return sum(int(clean_redis.hget(keys.seen(f"k{u}"), "n_events") or 0) for u in range(users))

    log = open(tmp_path / "worker.log", "wb")
    victim = subprocess.Popen(
        [sys.executable, "-m", "service.worker"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    _wait(lambda: applied() > 0, 60, "the first applied micro-batch")
    victim.send_signal(signal.SIGKILL)  # no clean shutdown: entries are pending, some may be written un-acked
    victim.wait(10)
    partial = applied()
    assert 0 < partial < users * per_user
    restarted = subprocess.Popen(
        [sys.executable, "-m", "service.worker"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        _wait(lambda: applied() == users * per_user, 90, "every event applied")
        pending = sum(clean_redis.xpending(keys.stream(s), GROUP)["pending"] for s in range(2))
        _wait(
            lambda: sum(clean_redis.xpending(keys.stream(s), GROUP)["pending"] for s in range(2)) == 0,
            30,
            f"acknowledgements ({pending} pending)",
        )
    finally:
        restarted.terminate()
        restarted.wait(20)
        log.close()
    assert applied() == users * per_user  # none twice
    for u in range(users):
        assert clean_redis.zcard(keys.hist(f"k{u}")) == per_user
        # the tiny encoder window (16) slides by the default encoder_slide: the newest 6 to 16 events
        slide = Settings.model_fields["encoder_slide"].default
        assert 16 - slide <= int(clean_redis.hget(keys.emb(f"k{u}"), "n_events")) <= 16
