"""Every route and error of the gateway and the generation server, in process (httpx ASGITransport),
against a real Redis and a tiny untrained USER-LLM checkpoint."""

from __future__ import annotations

import json

import httpx
import pytest
from asgi_lifespan import LifespanManager
from llm_fixtures import real_backbone_dir  # noqa: F401
from service_fixtures import GENRES, build_tiny_stack

from service import gateway, generator
from service.encoding import UserTowerRuntime
from service.keys import Keys
from service.redis_conn import create_redis
from service.settings import Settings
from service.streams import ensure_groups, read_new
from service.user_store import checksum
from service.worker import EncoderWorker

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def tiny_stack(tmp_path_factory, real_backbone_dir):  # noqa: F811
    return build_tiny_stack(tmp_path_factory.mktemp("stack"), real_backbone_dir)


@pytest.fixture
def settings(tiny_stack, redis_url, key_prefix, clean_redis) -> Settings:
    backbone, ckpt = tiny_stack
    return Settings(
        redis_url=redis_url,
        key_prefix=key_prefix,
        num_shards=2,
        backbone_dir=backbone,
        checkpoint_dir=ckpt.parent,
        device="cpu",
        max_wait_ms=2,
        auth_disabled=True,  # tests/test_auth.py covers API keys
    )


@pytest.fixture
async def api(settings):
    """(gateway client, generator client, apply_events()) wired in process."""
    gen_app = generator.create_app(settings)
    async with LifespanManager(gen_app) as gen:
        transport = httpx.ASGITransport(app=gen.app)
        gw_app = gateway.create_app(settings, generator_transport=transport)
        async with LifespanManager(gw_app) as gw:
            redis = create_redis(settings.redis_url, "test")
            keys = Keys(settings.key_prefix, settings.num_shards)
            await ensure_groups(redis, keys)
            runtime = UserTowerRuntime.from_checkpoint(settings.userllm_checkpoint)
            worker = EncoderWorker(redis, keys, runtime, consumer="test", block_ms=10)
            await worker.heartbeat()  # /readyz wants a live worker

            async def apply_events() -> None:
                while batch := await read_new(redis, keys, "test", count=500, block_ms=10):
                    await worker.process(batch)

            async with (
                httpx.AsyncClient(transport=httpx.ASGITransport(app=gw.app), base_url="http://gw") as client,
                httpx.AsyncClient(transport=transport, base_url="http://gen") as gen_client,
            ):
                yield client, gen_client, apply_events, (redis, keys)
            await redis.aclose()


def events(user: str, items: list[int], start: float = 1000.0) -> dict:
    return {
        "events": [
            {"user_id": user, "item_id": i, "timestamp": start + n, "rating": 4.5}
            for n, i in enumerate(items)
        ]
    }


def assert_envelope(resp: httpx.Response, status: int, error: str) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["error"] == error and body["detail"], body
    return body


async def test_health_ready_metrics_docs(api) -> None:
    client, gen, *_ = api
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["model_version"].startswith("userllm-")
    assert ready.json()["workers"] == {"live": ["test"], "stopped": []} and ready.json()["backlog"] == 0
    assert (await gen.get("/readyz")).status_code == 200
    await client.post("/recommend", json={"user_id": "m1"})
    text = (await client.get("/metrics/")).text
    assert 'userllm_request_duration_seconds_count{method="POST",route="/recommend"' in text
    assert "/healthz" not in text.split("userllm_request_duration_seconds_count")[1].split("\n")[0]
    assert (await client.get("/openapi.json")).json()["paths"].keys() >= {
        "/events",
        "/recommend",
        "/generate",
    }
    assert (await client.get("/docs")).status_code == 200


async def test_events_accepted_and_applied(api) -> None:
    client, _, apply_events, (redis, keys) = api
    single = await client.post("/events", json={"user_id": "u1", "item_id": 3, "timestamp": 10, "rating": 4})
    assert single.status_code == 202 and single.json() == {"accepted": 1, "unknown_items": 0, "duplicates": 0}
    batch = await client.post("/events", json=events("u1", [5, 7, 999999]))
    assert batch.json() == {"accepted": 3, "unknown_items": 1, "duplicates": 0}
    await apply_events()
    user = (await client.get("/users/u1")).json()
    assert user["events_seen"] == 4 and user["unknown_items"] == 1 and user["embedding_n_events"] == 4
    assert user["embedding_model_version"].startswith("userllm-") and user["embedding_age_s"] >= 0
    again = await client.post(
        "/events",
        json={
            "events": [
                {"user_id": "u1", "item_id": 8, "timestamp": 20, "rating": 3, "event_id": "x1"},
                {"user_id": "u1", "item_id": 8, "timestamp": 20, "rating": 3, "event_id": "x1"},
            ]
        },
    )
    assert again.json() == {"accepted": 1, "unknown_items": 0, "duplicates": 1}


async def test_event_ids_are_deduplicated_per_user(api) -> None:
    """Another user's client that knows (or guesses) an event_id cannot pre-claim it."""
    client, _, apply_events, _ = api
    one = {"item_id": 8, "timestamp": 20, "rating": 3, "event_id": "order-1"}
    attacker = await client.post("/events", json={"user_id": "mallory", **one})
    victim = await client.post("/events", json={"user_id": "victim", **one})
    assert attacker.json()["accepted"] == 1 and victim.json() == {
        "accepted": 1, "unknown_items": 0, "duplicates": 0
    }  # fmt: skip
    assert (await client.post("/events", json={"user_id": "victim", **one})).json()["duplicates"] == 1
    await apply_events()
    assert (await client.get("/users/victim")).json()["events_seen"] == 1


async def test_readyz_reports_a_stopped_worker(api) -> None:
    client, _, _, (redis, keys) = api
    await redis.delete(keys.worker("test"))  # its heartbeat expired: the worker died without signing off
    body = assert_envelope(await client.get("/readyz"), 503, "EngineUnavailable")
    assert "0 encoder workers heart-beating" in body["detail"] and "stopped: test" in body["detail"]


async def test_events_past_the_backlog_limit_get_503_and_nothing_is_trimmed(settings) -> None:
    """No worker runs: the streams fill up to `max_backlog`, then /events refuses with Retry-After;
    every accepted event is still in the streams (no approximate MAXLEN trims unread entries)."""
    small = settings.model_copy(update={"max_backlog": 30, "min_workers": 0})
    gen_app = generator.create_app(small)
    async with LifespanManager(gen_app) as gen:
        transport = httpx.ASGITransport(app=gen.app)
        async with LifespanManager(gateway.create_app(small, generator_transport=transport)) as gw:
            gw_transport = httpx.ASGITransport(app=gw.app)
            async with httpx.AsyncClient(transport=gw_transport, base_url="http://gw") as c:
                accepted, refused = 0, None
                for n in range(10):
                    resp = await c.post("/events", json=events(f"b{n}", [1, 2, 3, 4], start=n * 10.0))
                    if resp.status_code == 202:
                        accepted += resp.json()["accepted"]
                    else:
                        refused = resp
                        break
                assert accepted == 28 and refused is not None  # 7 batches of 4 fit under 30
                body = assert_envelope(refused, 503, "Backlogged")
                assert "max_backlog 30" in body["detail"] and int(refused.headers["retry-after"]) > 0
                ready = await c.get("/readyz")
                assert ready.status_code == 200 and ready.json()["backlog"] == 28
                redis = create_redis(small.redis_url, "test")
                keys = Keys(small.key_prefix, small.num_shards)
                assert sum([await redis.xlen(s) for s in keys.streams()]) == 28
                await redis.aclose()


async def test_an_invalid_event_rejects_the_whole_batch(api) -> None:
    client, _, _, (redis, keys) = api
    bad = events("u2", [1, 2, 3])
    bad["events"][1]["timestamp"] = -5
    body = assert_envelope(await client.post("/events", json=bad), 422, "ValidationError")
    assert body["fields"][0]["field"] == "events.1.timestamp"
    assert sum([await redis.xlen(s) for s in keys.streams()]) == 0
    no_rating = {"user_id": "u2", "item_id": 1, "timestamp": 1}
    assert (
        "rating"
        in assert_envelope(await client.post("/events", json=no_rating), 422, "ValidationError")["detail"]
    )
    too_many = events("u2", list(range(1001)))
    assert (
        assert_envelope(await client.post("/events", json=too_many), 422, "ValidationError")["fields"][0][
            "field"
        ]
        == "events"
    )
    extra = {"user_id": "u2", "item_id": 1, "timestamp": 1, "rating": 3, "colour": "red"}
    assert (
        assert_envelope(await client.post("/events", json=extra), 422, "ValidationError")["fields"][0][
            "field"
        ]
        == "colour"
    )
    garbage = await client.post("/events", content=b"{not json", headers={"content-type": "application/json"})
    fields = assert_envelope(garbage, 422, "ValidationError")["fields"]
    assert [f["field"] for f in fields] == ["body"]  # not the character offset ("1") of the JSON error


async def test_recommend_cold_start_then_personalized_and_exclude_seen(api) -> None:
    client, _, apply_events, _ = api
    cold = (await client.post("/recommend", json={"user_id": "u3", "k": 5})).json()
    assert cold["personalized"] is False and len(cold["items"]) == 5 and cold["updated_at"] is None
    await client.post("/events", json=events("u3", [1, 2, 3, 4, 5, 6]))
    await apply_events()
    warm = (await client.post("/recommend", json={"user_id": "u3", "k": 40, "exclude_seen": True})).json()
    assert warm["personalized"] is True and warm["updated_at"] is not None
    ids = [i["item_id"] for i in warm["items"]]
    assert not {"1", "2", "3", "4", "5", "6"} & set(ids) and len(ids) == 34  # 40 items - 6 seen
    assert [i["rank"] for i in warm["items"]] == list(range(1, 35))
    assert warm["items"][0]["title"] == f"Movie {ids[0]}"
    scores = [i["score"] for i in warm["items"]]
    assert scores == sorted(scores, reverse=True)
    cold_scores = {i["item_id"]: i["score"] for i in cold["items"]}
    assert any(
        abs(cold_scores[i["item_id"]] - i["score"]) > 1e-4
        for i in warm["items"]
        if i["item_id"] in cold_scores
    )
    with_seen = (
        await client.post("/recommend", json={"user_id": "u3", "k": 40, "exclude_seen": False})
    ).json()
    assert len(with_seen["items"]) == 40


async def test_recommend_validation(api) -> None:
    client, *_ = api
    for body, field in [
        ({"user_id": "u", "k": 0}, "k"),
        ({"user_id": "u", "k": 101}, "k"),
        ({"k": 3}, "user_id"),
        ({"user_id": "a b"}, "user_id"),
    ]:
        got = assert_envelope(await client.post("/recommend", json=body), 422, "ValidationError")
        assert got["fields"][0]["field"] == field


async def test_stale_model_version_is_recomputed_not_served(api) -> None:
    client, gen, apply_events, (redis, keys) = api
    await client.post("/events", json=events("u4", [1, 2, 3]))
    await apply_events()
    fresh = (await client.post("/recommend", json={"user_id": "u4", "k": 5})).json()
    tokens, shape = await redis.hmget(keys.emb("u4"), ["user_tokens", "shape"])
    other = "userllm-000000000000"  # a well-formed record of another model version
    await redis.hset(
        keys.emb("u4"),
        mapping={"model_version": other, "checksum": checksum(tokens, shape.decode(), "float16", other)},
    )
    stale = (await client.post("/recommend", json={"user_id": "u4", "k": 5})).json()
    assert stale["personalized"] is True
    assert [i["item_id"] for i in stale["items"]] == [i["item_id"] for i in fresh["items"]]
    assert 'userllm_cache_misses_total{reason="model_version"}' in (await gen.get("/metrics/")).text
    written_back = await redis.hget(keys.emb("u4"), "model_version")
    assert written_back.decode() == fresh["model_version"]  # recomputed once, then cached again


async def test_corrupt_cached_tokens_are_recomputed_never_served(api) -> None:
    """Bytes that do not fit the shape (a 500 with the exception text before) and bytes that fit but
    were altered (a 200 with garbage tokens before) are both recomputed from history and rewritten."""
    client, gen, apply_events, (redis, keys) = api
    await client.post("/events", json=events("u9", [4, 5, 6]))
    await apply_events()
    fresh = (await client.post("/recommend", json={"user_id": "u9", "k": 5})).json()
    good = await redis.hget(keys.emb("u9"), "user_tokens")
    altered = bytes(b ^ 0x55 for b in good[:64]) + good[64:]
    for corrupt in (b"\x00" * 54, altered):
        await redis.hset(keys.emb("u9"), "user_tokens", corrupt)
        resp = await client.post("/recommend", json={"user_id": "u9", "k": 5})
        assert resp.status_code == 200, resp.text
        assert resp.json()["personalized"] is True
        assert [i["item_id"] for i in resp.json()["items"]] == [i["item_id"] for i in fresh["items"]]
        assert await redis.hget(keys.emb("u9"), "user_tokens") == good  # rewritten
    metrics_text = (await gen.get("/metrics/")).text
    assert 'userllm_corrupt_records_total{kind="user_tokens",service="generator"} 2.0' in metrics_text


async def test_generate_tasks(api) -> None:
    client, _, apply_events, _ = api
    await client.post("/events", json=events("u5", [3, 6, 9]))
    await apply_events()
    genre = (await client.post("/generate", json={"user_id": "u5", "task": "genre"})).json()
    assert genre["text"] in GENRES and genre["personalized"] is True
    assert abs(sum(g["probability"] for g in genre["genres"]) - 1.0) < 1e-3
    assert genre["genres"][0]["genre"] == genre["text"]
    review = (
        await client.post(
            "/generate",
            json={
                "user_id": "u5",
                "task": "review",
                "item_id": 4,
                "rating": 5,
                "max_new_tokens": 6,
                "temperature": 0,
            },
        )
    ).json()
    assert review["completion_tokens"] <= 6 and review["prompt_tokens"] > 5 and "text" in review
    sampled = {
        "user_id": "nobody",
        "task": "chat",
        "prompt": "Hi",
        "max_new_tokens": 4,
        "temperature": 0.8,
        "seed": 3,
    }
    chat = await client.post("/generate", json=sampled)
    assert chat.status_code == 200 and chat.json()["personalized"] is False
    same = await client.post("/generate", json=sampled)  # the same seed samples the same text
    assert same.json()["text"] == chat.json()["text"]


async def test_generate_suggest_is_given_the_first_unseen_recommendation(api) -> None:
    """task "suggest": the answer is written for the item /recommend ranks first (history excluded), whose
    catalogue entry lengthens the prompt; a user who has seen every item gets the question alone."""
    client, _, apply_events, _ = api
    await client.post("/events", json=events("u7", [3, 6, 9]))
    await apply_events()
    top = (await client.post("/recommend", json={"user_id": "u7", "k": 1, "exclude_seen": True})).json()
    body = {"user_id": "u7", "task": "suggest", "max_new_tokens": 4, "temperature": 0}
    suggest = await client.post("/generate", json=body)
    assert suggest.status_code == 200, suggest.text
    item = suggest.json()["item"]
    assert item["item_id"] == top["items"][0]["item_id"] and item["item_id"] not in {"3", "6", "9"}
    assert item["title"] == f"Movie {item['item_id']}" and item["rank"] == 1
    cold = (await client.post("/generate", json={**body, "user_id": "nobody"})).json()
    assert cold["personalized"] is False and cold["item"]["rank"] == 1  # cold start: the cold-start ranking
    question = "Suggest a movie for me tonight and say why."
    chat = (await client.post("/generate", json={**body, "task": "chat", "prompt": question})).json()
    assert chat["item"] is None and suggest.json()["prompt_tokens"] > chat["prompt_tokens"] + 5
    async with client.stream("POST", "/generate", json={**body, "stream": True}) as resp:
        raw = (await resp.aread()).decode()
    done = json.loads(raw.strip().split("\n\n")[-1].split("data: ", 1)[1])
    assert done["item"] == item
    await client.post("/events", json=events("u8", list(range(1, 41))))
    await apply_events()
    everything = (await client.post("/generate", json={**body, "user_id": "u8"})).json()
    assert everything["item"] is None and everything["prompt_tokens"] == chat["prompt_tokens"]


async def test_generate_errors(api) -> None:
    client, *_ = api
    body = assert_envelope(
        await client.post("/generate", json={"user_id": "u", "task": "review"}), 422, "ValidationError"
    )
    assert "item_id" in body["detail"]
    assert_envelope(
        await client.post("/generate", json={"user_id": "u", "task": "chat"}), 422, "ValidationError"
    )
    assert_envelope(
        await client.post("/generate", json={"user_id": "u", "task": "poem"}), 422, "ValidationError"
    )
    for field, value in [("temperature", -1), ("top_p", 0), ("max_new_tokens", 1000)]:
        got = assert_envelope(
            await client.post("/generate", json={"user_id": "u", "task": "genre", field: value}),
            422,
            "ValidationError",
        )
        assert got["fields"][0]["field"] == field
    assert_envelope(
        await client.post("/generate", json={"user_id": "u", "task": "review", "item_id": "nope"}),
        404,
        "ItemNotFound",
    )


async def test_generate_streams_server_sent_events(api) -> None:
    client, *_ = api
    async with client.stream(
        "POST",
        "/generate",
        json={
            "user_id": "u6",
            "task": "chat",
            "prompt": "Hello",
            "max_new_tokens": 5,
            "temperature": 0,
            "stream": True,
        },
    ) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        raw = (await resp.aread()).decode()
    frames = [f for f in raw.split("\n\n") if f.strip()]
    assert frames[-1].startswith("event: done")
    done = json.loads(frames[-1].split("data: ", 1)[1])
    pieces = "".join(json.loads(f.split("data: ", 1)[1])["text"] for f in frames[:-1])
    assert pieces.strip() == done["text"] and done["completion_tokens"] <= 5


async def test_users_and_unknown_routes(api) -> None:
    client, *_ = api
    assert_envelope(await client.get("/users/ghost"), 404, "UserNotFound")
    assert_envelope(await client.get("/nope"), 404, "NotFound")
    assert_envelope(await client.get("/events"), 405, "MethodNotAllowed")


async def test_generation_server_down_gives_503_with_retry_after(settings) -> None:
    down = settings.model_copy(update={"generator_url": "http://127.0.0.1:9", "generator_retries": 0})
    async with LifespanManager(gateway.create_app(down)) as gw:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=gw.app), base_url="http://gw"
        ) as client:
            resp = await client.post("/recommend", json={"user_id": "u"})
            assert_envelope(resp, 503, "EngineUnavailable")
            assert int(resp.headers["retry-after"]) > 0
            assert_envelope(await client.get("/readyz"), 503, "EngineUnavailable")
            accepted = await client.post("/events", json=events("u", [1]))
            assert accepted.status_code == 202  # ingestion does not need the generator
            assert accepted.json() == {"accepted": 1, "unknown_items": None, "duplicates": 0}
            assert (await client.get("/healthz")).status_code == 200


async def test_redis_down_gives_503(settings) -> None:
    down = settings.model_copy(update={"redis_url": "redis://127.0.0.1:9/0"})
    async with LifespanManager(gateway.create_app(down)) as gw:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=gw.app), base_url="http://gw"
        ) as client:
            assert_envelope(await client.get("/readyz"), 503, "StoreUnavailable")
            assert_envelope(await client.post("/events", json=events("u", [1])), 503, "StoreUnavailable")
            assert_envelope(await client.get("/users/u"), 503, "StoreUnavailable")  # was a 500


async def test_events_are_queued_while_the_generation_server_is_down(settings) -> None:
    """The catalogue (for counting unknown items) comes from the generation server; while it is
    unreachable, /events still queues events (unknown_items null) and asks it at most every 5 s."""
    calls = []

    def refuse(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        raise httpx.ConnectError("connection refused", request=request)

    down = settings.model_copy(update={"min_workers": 0, "generator_retries": 0})
    app = gateway.create_app(down, generator_transport=httpx.MockTransport(refuse))
    async with LifespanManager(app) as gw:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gw.app), base_url="http://gw") as c:
            for n in range(5):
                resp = await c.post("/events", json=events(f"d{n}", [1, 2], start=n * 10.0))
                assert resp.status_code == 202 and resp.json() == {
                    "accepted": 2, "unknown_items": None, "duplicates": 0
                }
    assert calls == ["/v1/info"]
