"""API keys, scopes, rate limits, body limits and the right to be forgotten, through the real gateway
and generation server (in process, ASGI) on a real Redis."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
from asgi_lifespan import LifespanManager
from llm_fixtures import real_backbone_dir  # noqa: F401
from service_fixtures import build_tiny_stack

from service import auth, gateway, generator
from service.encoding import UserTowerRuntime
from service.keys import Keys
from service.redis_conn import create_redis
from service.serve import RedactUserIds
from service.settings import Settings
from service.streams import ensure_groups, read_new
from service.worker import EncoderWorker

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def tiny_stack(tmp_path_factory, real_backbone_dir):  # noqa: F811
    return build_tiny_stack(tmp_path_factory.mktemp("stack"), real_backbone_dir)


def create_key(path, name: str, scopes: str, *extra: str, capsys) -> str:
    assert auth.main(["create", "--file", str(path), "--name", name, "--scopes", scopes, *extra]) == 0
    return capsys.readouterr().out.strip()


@pytest.fixture
def secrets(tmp_path, capsys) -> dict[str, str]:
    path = tmp_path / "keys.json"
    out = {
        "ingest": create_key(path, "bot", "ingest", capsys=capsys),
        "read": create_key(path, "app", "read", capsys=capsys),
        "admin": create_key(path, "ops", "admin,read,ingest", capsys=capsys),
        "slow": create_key(path, "slow", "read", "--rate", "2", capsys=capsys),
    }
    stored = path.read_text()
    assert all(s.startswith("ullm_") and s not in stored for s in out.values())  # only hashes stored
    return out


@pytest.fixture
def settings(tiny_stack, redis_url, key_prefix, clean_redis, tmp_path, secrets) -> Settings:
    backbone, ckpt = tiny_stack
    return Settings(
        redis_url=redis_url, key_prefix=key_prefix, num_shards=2, backbone_dir=backbone,
        checkpoint_dir=ckpt.parent, device="cpu", max_wait_ms=2, api_keys_file=tmp_path / "keys.json",
        max_body_bytes=4096, metrics_require_admin=True, min_workers=0,
    )  # fmt: skip


@pytest.fixture
async def api(settings):
    async with LifespanManager(generator.create_app(settings)) as gen:
        transport = httpx.ASGITransport(app=gen.app)
        async with LifespanManager(gateway.create_app(settings, generator_transport=transport)) as gw:
            redis = create_redis(settings.redis_url, "test")
            keys = Keys(settings.key_prefix, settings.num_shards)
            await ensure_groups(redis, keys)
            worker = EncoderWorker(
                redis, keys, UserTowerRuntime.from_checkpoint(settings.userllm_checkpoint), consumer="t"
            )

            async def apply_events() -> None:
                while batch := await read_new(redis, keys, "t", count=500, block_ms=10):
                    await worker.process(batch)

            client = httpx.AsyncClient(transport=httpx.ASGITransport(app=gw.app), base_url="http://gw")
            async with client:
                yield client, apply_events, redis, keys
            await redis.aclose()


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def event(user: str, item: int, ts: float, **kw) -> dict:
    return {"user_id": user, "item_id": str(item), "timestamp": ts, "rating": 4.0, **kw}


def envelope(resp: httpx.Response, status: int, error: str) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.json()["error"] == error and resp.json()["detail"], resp.text
    return resp.json()


async def test_keys_and_scopes(api, secrets) -> None:
    client, *_ = api
    body = envelope(await client.post("/recommend", json={"user_id": "u"}), 401, "Unauthenticated")
    assert "API key is required" in body["detail"]
    resp = await client.post("/recommend", json={"user_id": "u"}, headers=bearer("ullm_guess"))
    assert envelope(resp, 401, "Unauthenticated") and resp.headers["www-authenticate"] == "Bearer"
    resp = await client.post("/recommend", json={"user_id": "u"}, headers=bearer(secrets["ingest"]))
    assert "lacks the scope 'read'" in envelope(resp, 403, "Forbidden")["detail"]
    resp = await client.post("/recommend", json={"user_id": "u"}, headers=bearer(secrets["read"]))
    assert resp.status_code == 200
    resp = await client.post("/events", json=event("u", 1, 1), headers={"X-API-Key": secrets["ingest"]})
    assert resp.status_code == 202
    resp = await client.post("/events", json=event("u", 2, 2), headers=bearer(secrets["read"]))
    envelope(resp, 403, "Forbidden")
    envelope(await client.get("/users/u", headers=bearer(secrets["ingest"])), 403, "Forbidden")
    assert (await client.get("/healthz")).status_code == 200  # health checks need no key
    envelope(await client.get("/metrics/"), 401, "Unauthenticated")
    envelope(await client.get("/metrics/", headers=bearer(secrets["read"])), 403, "Forbidden")
    assert "userllm_" in (await client.get("/metrics/", headers=bearer(secrets["admin"]))).text


async def test_rate_limit_per_key(api, secrets) -> None:
    """10 quick requests span at most two one-second windows, so one window sees 5 > 2."""
    client, *_ = api
    codes = [
        (await client.post("/recommend", json={"user_id": "u"}, headers=bearer(secrets["slow"]))).status_code
        for _ in range(10)
    ]
    assert 429 in codes and codes.count(200) <= 4
    resp = await client.post("/recommend", json={"user_id": "u"}, headers=bearer(secrets["read"]))
    assert resp.status_code == 200  # other keys are not limited by it


async def test_body_size_limit(api, secrets) -> None:
    client, *_ = api
    big = {"events": [event("u", i, i, text="x" * 100) for i in range(1, 60)]}
    resp = await client.post("/events", json=big, headers=bearer(secrets["ingest"]))
    assert "larger than 4096 bytes" in envelope(resp, 413, "PayloadTooLarge")["detail"]

    async def chunks():  # no Content-Length: counted as it arrives
        for _ in range(10):
            yield b" " * 1000

    headers = {**bearer(secrets["ingest"]), "Content-Type": "application/json"}
    envelope(await client.post("/events", content=chunks(), headers=headers), 413, "PayloadTooLarge")


async def test_delete_forgets_the_user_and_their_queued_events(api, secrets) -> None:
    client, apply_events, redis, keys = api
    ingest, admin = bearer(secrets["ingest"]), bearer(secrets["admin"])
    sent = {"events": [event("zoe", i, i, event_id=f"z{i}") for i in range(1, 4)]}
    assert (await client.post("/events", json=sent, headers=ingest)).json()["accepted"] == 3
    await apply_events()
    assert (await client.get("/users/zoe", headers=admin)).json()["events_seen"] == 3
    await client.post("/events", json=event("zoe", 9, 9), headers=ingest)  # queued, not applied yet
    envelope(await client.delete("/users/zoe", headers=bearer(secrets["read"])), 403, "Forbidden")
    gone = await client.delete("/users/zoe", headers=admin)
    assert gone.status_code == 200 and gone.json()["keys_removed"] >= 6  # 6 user keys + 3 dedup keys
    await apply_events()  # the queued event is dropped, not applied to a forgotten user
    envelope(await client.get("/users/zoe", headers=admin), 404, "UserNotFound")
    assert [k async for k in redis.scan_iter(match=f"{keys.base}:*zoe*")] == [keys.forgotten("zoe").encode()]
    again = await client.post("/events", json=event("zoe", 5, 50, event_id="z1"), headers=ingest)
    assert again.json()["duplicates"] == 0  # de-duplication keys went too
    await apply_events()
    assert (await client.get("/users/zoe", headers=admin)).json()["events_seen"] == 1


def test_a_gateway_without_keys_refuses_to_start_unless_auth_is_disabled(settings) -> None:
    no_keys = settings.model_copy(update={"api_keys_file": None})
    with pytest.raises(auth.KeyFileError, match="USERLLM_API_KEYS_FILE is not set"):
        gateway.create_app(no_keys)
    gateway.create_app(no_keys.model_copy(update={"auth_disabled": True}))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "keys.json:1: not JSON"),
        ('{"keys": [{"name": "a", "sha256": "xyz", "scopes": ["read"]}]}', "keys[0].sha256"),
        ('{"keys": [{"name": "a", "sha256": "' + "0" * 64 + '", "scopes": ["root"]}]}', "keys[0].scopes"),
        ('{"keys": [{"name": "a", "sha256": "' + "0" * 64 + '", "scopes": ["read"], "rate_per_s": -1}]}',
         "keys[0].rate_per_s"),
    ],
)  # fmt: skip
def test_bad_key_files_name_the_file_and_entry(tmp_path, content, message) -> None:
    path = tmp_path / "keys.json"
    path.write_text(content)
    with pytest.raises(auth.KeyFileError, match=message.replace("[", r"\[").replace("]", r"\]")):
        auth.KeyRing.load(path)


def test_access_log_lines_carry_no_user_ids() -> None:
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", "/users/alice%40example.com?x=1", "1.1", 200), None,
    )  # fmt: skip
    RedactUserIds().filter(record)
    assert "alice" not in record.getMessage() and "/users/{user_id}?x=1" in record.getMessage()
    assert json.dumps(record.args)  # still plain values


def test_the_stack_prints_redis_urls_without_their_password() -> None:
    from service.stack import redact

    assert redact("redis://:s3cret@cache.internal:6380/0") == "redis://:***@cache.internal:6380/0"
    assert redact("rediss://app:s3cret@cache/1") == "rediss://app:***@cache/1"
    assert redact("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
