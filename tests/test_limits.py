"""Limits and failure paths of the two servers, run by uvicorn on real sockets (a client can really go
away) against a real Redis and a tiny untrained USER-LLM checkpoint: a client that leaves stops its
decode, prompts are limited in tokens, an unexpected error answers a generic 500 with a request id (the
detail goes to the log), Redis going down answers 503 `StoreUnavailable`."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import redis
import uvicorn
from llm_fixtures import real_backbone_dir  # noqa: F401
from prometheus_client import REGISTRY
from service_fixtures import build_tiny_stack

from service import gateway, generator
from service.engine import TorchEngine
from service.redis_conn import free_port
from service.settings import Settings

pytestmark = [pytest.mark.redis, pytest.mark.usefixtures("one_torch_thread")]

CONTEXT = 1024  # the tiny backbone's max_position_embeddings here


@pytest.fixture(scope="module")
def engine(tmp_path_factory, real_backbone_dir) -> TorchEngine:  # noqa: F811
    backbone, ckpt = build_tiny_stack(
        tmp_path_factory.mktemp("limits"), real_backbone_dir, max_position_embeddings=CONTEXT
    )
    return TorchEngine.load(ckpt, backbone, device="cpu")


@pytest.fixture
def settings(redis_url, key_prefix, clean_redis) -> Settings:
    return Settings(redis_url=redis_url, key_prefix=key_prefix, num_shards=2, device="cpu", max_wait_ms=2,
                    auth_disabled=True, min_workers=0)


@contextmanager
def serving(app) -> Iterator[str]:
    """Run `app` (lifespan included) with uvicorn on a free port in a thread; yields its URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@contextmanager
def stack(settings: Settings, engine: TorchEngine) -> Iterator[str]:
    """Generation server + gateway over HTTP; yields the gateway's URL."""
    with serving(generator.create_app(settings, engine=engine)) as gen:
        with serving(gateway.create_app(settings.model_copy(update={"generator_url": gen}))) as gw:
            yield gw


def assert_envelope(resp: httpx.Response, status: int, error: str) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["error"] == error and body["detail"], body
    return body


def cancelled() -> float:
    return REGISTRY.get_sample_value("userllm_engine_cancelled_total", {"kind": "generate"}) or 0.0


def chat(prompt: str, max_new_tokens: int, **extra: object) -> dict:
    return {"user_id": "u", "task": "chat", "prompt": prompt, "max_new_tokens": max_new_tokens, **extra}


# --- a client that goes away stops its decode ---


@pytest.mark.parametrize("stream", [True, False])
async def test_a_client_that_leaves_stops_its_decode(settings, engine, stream) -> None:
    long = chat("Tell me a long story.", 256, temperature=0, stream=stream)
    short = chat("Hi", 2, temperature=0)
    cancelled_before = cancelled()
    with stack(settings, engine) as gw:
        async with httpx.AsyncClient(base_url=gw, timeout=60) as client:
            full = await client.post("/generate", json={**long, "stream": False})
            assert full.json()["completion_tokens"] == 256  # left alone, this decode runs 256 steps
            forwards: list[int] = []  # forward passes of the LLM (prefill and decoding steps)

            def slow_step(*_: object) -> None:  # 10 ms a step: the whole decode would take > 2.5 s
                forwards.append(1)
                time.sleep(0.01)

            hook = engine.model.llm.register_forward_pre_hook(slow_step)
            try:
                if stream:
                    async with client.stream("POST", "/generate", json=long) as resp:
                        assert resp.status_code == 200
                        async for line in resp.aiter_lines():
                            if line.startswith("data:"):
                                break  # a first piece: the decode runs; leaving closes the connection
                else:
                    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes
                        await client.post("/generate", json=long, timeout=httpx.Timeout(60, read=0.5))
                at_leave = len(forwards)
                after = await client.post("/generate", json=short)  # runs once the decoder is free
                assert after.status_code == 200, after.text
            finally:
                hook.remove()
            short_steps = after.json()["completion_tokens"]  # its prefill + one step per token but the last
            ran = len(forwards) - at_leave - short_steps
            assert ran < 64, f"{ran} steps after the client left"  # the old code ran the ~250 steps left
    assert cancelled() == cancelled_before + 1  # counted by the generation server's decoder


# --- prompts are limited in tokens ---


async def test_prompts_are_limited_in_tokens_and_by_the_context(settings, engine) -> None:
    near_full = "😀" * 280
    n = len(engine.chat_prompt(near_full))
    assert CONTEXT - 256 < n <= 1024  # within the default limit, not with 256 new tokens
    with stack(settings, engine) as gw:
        async with httpx.AsyncClient(base_url=gw, timeout=60) as client:
            for stream in (False, True):
                resp = await client.post("/generate", json=chat(near_full, 256, stream=stream))
                body = assert_envelope(resp, 422, "PromptTooLong")
                assert body["fields"] == [
                    {"field": "prompt", "message": body["detail"], "type": "prompt_too_long"}
                ]
                assert f"context of {CONTEXT:,} tokens" in body["detail"]
            fits = await client.post("/generate", json=chat(near_full, 8))
            assert fits.status_code == 200 and fits.json()["prompt_tokens"] == n
            emoji = await client.post("/generate", json=chat("😀" * 4000, 8))  # 4,000 characters: allowed
            body = assert_envelope(emoji, 422, "PromptTooLong")
            assert body["fields"][0]["field"] == "prompt" and "the limit is 1,024" in body["detail"]
    assert "USERLLM_MAX_PROMPT_TOKENS" in generator.GenerateRequest.model_fields["prompt"].description


# --- unexpected errors: a generic 500 with a request id, the detail in the log ---


async def test_an_unexpected_error_answers_500_with_its_request_id(
    settings, engine, clean_redis, caplog
) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("secret internals")

    with stack(settings, engine) as gw:
        async with httpx.AsyncClient(base_url=gw, timeout=60) as client:
            hook = engine.model.llm.register_forward_pre_hook(broken)
            try:
                resp = await client.post(
                    "/recommend", json={"user_id": "bad"}, headers={"X-Request-ID": "req-1"}
                )
            finally:
                hook.remove()
            assert resp.status_code == 500
            assert resp.json() == {
                "error": "InternalError",
                "detail": "internal error",
                "request_id": "req-1",
            }
            assert resp.headers["x-request-id"] == "req-1"
            logged = [r for r in caplog.records if r.name == "userllm.errors" and "req-1" in r.getMessage()]
            assert logged and "secret internals" in str(logged[0].exc_info[1])  # the generator's log, same id

            hook = engine.model.llm.register_forward_pre_hook(broken)
            try:
                streamed = await client.post(
                    "/generate", json=chat("Hi", 4, stream=True), headers={"X-Request-ID": "req-2"}
                )
            finally:
                hook.remove()
            assert streamed.text.startswith("event: error\n") and "secret" not in streamed.text
            assert '"detail":"internal error","request_id":"req-2"' in streamed.text
            for given in ("a b", "x" * 65, None):  # unsafe or missing ids are replaced by a fresh one
                headers = {"X-Request-ID": given} if given else {}
                rid = (await client.get("/healthz", headers=headers)).headers["x-request-id"]
                assert re.fullmatch(r"[0-9a-f]{32}", rid)


# --- Redis going down: 503 StoreUnavailable with Retry-After ---


async def test_redis_going_down_answers_503_with_retry_after(settings, engine) -> None:
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + 10
        while True:
            try:
                with redis.Redis.from_url(url) as probe:
                    probe.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        with stack(settings.model_copy(update={"redis_url": url}), engine) as gw:
            async with httpx.AsyncClient(base_url=gw, timeout=60) as client:
                assert (await client.post("/recommend", json={"user_id": "r"})).status_code == 200
                server.terminate()
                server.wait(10)
                for method, path, body in [
                    ("POST", "/recommend", {"user_id": "r"}),  # the generation server's read
                    ("POST", "/generate", {"user_id": "r", "task": "genre"}),
                    ("GET", "/users/r", None),  # the gateway's own read
                ]:
                    resp = await client.request(method, path, json=body)
                    assert_envelope(resp, 503, "StoreUnavailable")
                    assert int(resp.headers["retry-after"]) > 0
    finally:
        server.kill()
        server.wait(10)
