"""Schemathesis against the published OpenAPI of the gateway and of the generation server, in process.

Each app is loaded with `schemathesis.openapi.from_asgi` (requests go straight to the ASGI callable: no
socket, no server) on a real Redis and a tiny untrained USER-LLM checkpoint (`build_tiny_stack`). Every
operation but `/metrics` (a mount, not in the schema) is fuzzed with positive and negative cases, and every
response goes through schemathesis' checks: not_a_server_error, status_code_conformance,
content_type_conformance, response_headers_conformance, response_schema_conformance,
negative_data_rejection and positive_data_acceptance. On top, every 4xx must be the project's error
envelope, and a 422 must name the offending field(s). `GATEWAY_BUDGET` and `GENERATOR_BUDGET` give the
(positive, negative) cases of each operation; `derandomize=True` makes every run send the same cases, and
`max_new_tokens_limit=4` keeps decoding short. The cases per operation, status and media type are logged
(`-o log_cli=true --log-cli-level=INFO`). The cases the fuzzing found are kept below as regressions.

Followed: the schemathesis docs "Testing Python Apps" (`from_asgi`, lifespan handled by schemathesis),
"Using Hypothesis Strategies with Schemathesis" (`schema[path][method].as_strategy()` under `@given`)
and the "Checks" reference.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import jsonschema_rs
import pytest
import schemathesis
from asgi_lifespan import LifespanManager
from hypothesis import HealthCheck, given, settings
from llm_fixtures import real_backbone_dir  # noqa: F401
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi import checks as st_checks
from service_fixtures import build_tiny_stack

from service import gateway, generator
from service.auth import hash_key
from service.settings import Settings

pytestmark = pytest.mark.redis
log = logging.getLogger("userllm.fuzz")

CHECKS = [
    not_a_server_error,
    st_checks.status_code_conformance,
    st_checks.content_type_conformance,
    st_checks.response_headers_conformance,
    st_checks.response_schema_conformance,
    st_checks.negative_data_rejection,
    st_checks.positive_data_acceptance,
]


@pytest.fixture(scope="module")
def tiny_stack(tmp_path_factory, real_backbone_dir):  # noqa: F811
    return build_tiny_stack(tmp_path_factory.mktemp("stack"), real_backbone_dir)


FUZZ_KEY = "ullm_fuzz-key-with-every-scope"
AUTH = {"Authorization": f"Bearer {FUZZ_KEY}"}  # sent with every case: the routes behind the key are fuzzed


@pytest.fixture
def fuzz_settings(tiny_stack, redis_url, key_prefix, clean_redis, tmp_path) -> Settings:
    backbone, ckpt = tiny_stack
    keys_file = tmp_path / "keys.json"
    entry = {"name": "fuzz", "sha256": hash_key(FUZZ_KEY), "scopes": ["ingest", "read", "admin"]}
    keys_file.write_text(json.dumps({"keys": [entry]}))
    return Settings(
        api_keys_file=keys_file,
        redis_url=redis_url,
        key_prefix=key_prefix,
        num_shards=2,
        backbone_dir=backbone,
        checkpoint_dir=ckpt.parent,
        device="cpu",
        max_wait_ms=1,
        max_new_tokens_limit=4,  # the schema allows 256: fuzzing decodes at most 4 tokens a request
        min_workers=0,  # no encoder worker runs here: /readyz must not count them
    )


class LifespanStack:
    """An ASGI app whose lifespan builds and enters the managers `build()` returns, in order, and which
    serves the last one's app: the gateway's lifespan runs in the event loop of the generation server it
    calls (a `LifespanManager` is made inside the loop that runs it)."""

    def __init__(self, build: Callable[[], list[LifespanManager]]):
        self.build = build
        self.app: Any = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        async with contextlib.AsyncExitStack() as stack:
            await receive()  # lifespan.startup
            for manager in self.build():
                self.app = (await stack.enter_async_context(manager)).app
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
        await send({"type": "lifespan.shutdown.complete"})


def generator_only(settings: Settings) -> list[LifespanManager]:
    return [LifespanManager(generator.create_app(settings), startup_timeout=120)]


def gateway_and_generator(settings: Settings) -> list[LifespanManager]:
    [gen] = generator_only(settings)
    gw_app = gateway.create_app(settings, generator_transport=httpx.ASGITransport(app=gen.app))
    return [gen, LifespanManager(gw_app, startup_timeout=60)]


Outcomes = Counter[tuple[str, str, int, str]]  # (operation, generation mode, status, media type) -> cases


def fuzz(schema: Any, budget: dict[str, tuple[int, int]]) -> Outcomes:
    """Run up to `budget[label] = (positive, negative)` cases on each operation of `schema`."""
    outcomes: Outcomes = Counter()
    # An invalid body over USERLLM_MAX_BODY_BYTES is refused with 413 before it is parsed: a rejection too
    # (schemathesis' default list lacks it; a negative /events case of 3.6 MB failed the check with it).
    rejection = schema.config.checks.negative_data_rejection
    rejection.expected_statuses = [*rejection.expected_statuses, "413"]
    operations = [result.ok() for result in schema.get_all_operations()]
    assert sorted(op.label for op in operations) == sorted(budget)
    for operation in operations:
        for mode, n in zip(GenerationMode, budget[operation.label], strict=True):
            if n:  # 0 negative cases: no parameters and no body to make invalid
                run_cases(operation, mode, n, outcomes)
    log.info("%s: %d cases", schema.title, outcomes.total())
    for key, n in sorted(outcomes.items()):
        log.info("  %-24s %-8s %d %-17s %4d", *key, n)
    return outcomes


def run_cases(operation: Any, mode: GenerationMode, max_examples: int, outcomes: Outcomes) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        response = case.call_and_validate(checks=CHECKS, headers=AUTH)
        media_type = response.headers.get("content-type", [""])[0].split(";")[0]
        outcomes[operation.label, mode.value, response.status_code, media_type] += 1
        assert_error_envelope(response)

    state = random.getstate()
    random.seed(0)  # schemathesis' mutations also draw from `random`: the same cases whatever ran before
    try:
        run()
    finally:
        random.setstate(state)


def assert_error_envelope(response: Any) -> None:
    """No 5xx, and no error event in a 200 stream; a 4xx is the envelope, and a 422 names its fields."""
    status = response.status_code
    assert status < 500, response.text
    assert "event: error" not in response.text, response.text  # an engine failure after the 200
    if status < 400:
        return
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body.get("detail"), body
    if status == 422:
        assert body["error"] == "ValidationError" and body["fields"], body
        for field in body["fields"]:
            assert field["field"] and field["field"] in body["detail"], body


GATEWAY_BUDGET = {
    "GET /healthz": (5, 0),
    "GET /readyz": (5, 0),
    "POST /events": (200, 200),
    "POST /recommend": (60, 60),
    "POST /generate": (100, 100),
    "GET /users/{user_id}": (40, 40),
    "DELETE /users/{user_id}": (20, 20),
}
GENERATOR_BUDGET = {
    "GET /healthz": (5, 0),
    "GET /readyz": (5, 0),
    "GET /v1/info": (5, 0),
    "POST /v1/recommend": (60, 60),
    "POST /v1/generate": (120, 120),
}


def test_gateway_conforms_to_its_openapi(fuzz_settings) -> None:
    app = LifespanStack(lambda: gateway_and_generator(fuzz_settings))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    outcomes = fuzz(schema, GATEWAY_BUDGET)
    assert outcomes.total() >= 800, outcomes


def test_generator_conforms_to_its_openapi(fuzz_settings) -> None:
    schema = schemathesis.openapi.from_asgi(
        "/openapi.json", LifespanStack(lambda: generator_only(fuzz_settings))
    )
    outcomes = fuzz(schema, GENERATOR_BUDGET)
    assert outcomes.total() >= 360, outcomes


# --- the cases the fuzzing found (and a few found by reading), kept as explicit regressions ---

RESPONSE_CHECKS = [
    not_a_server_error,
    st_checks.status_code_conformance,
    st_checks.content_type_conformance,
    st_checks.response_schema_conformance,
]
EVENT = {"user_id": "u1", "item_id": 3, "timestamp": 10, "rating": 4.5}

# (operation, body, valid by the published schema, status, the field a 422 names)
REGRESSIONS: list[tuple[str, Any, bool, int, str | None]] = [
    # A whole float is a JSON Schema integer: an id or a count of 10.0 is 10.
    (
        "POST /events",
        {"user_id": 10.0, "item_id": 10.0, "timestamp": 0.05, "event_type": "review"},
        True,
        202,
        None,
    ),
    ("POST /recommend", {"user_id": "u1", "k": 5.0}, True, 200, None),
    ("POST /events", {**EVENT, "item_id": -1}, False, 422, "item_id"),  # integer ids are in [0, 2**53 - 1]
    # The rating rule was not in the schema: a schema-valid event was rejected (now `if`/`then`).
    ("POST /events", {"user_id": 10.0, "item_id": 10.0, "timestamp": 0.05}, False, 422, "rating"),
    ("POST /events", {"events": [EVENT, {**EVENT, "rating": None}]}, False, 422, "events.1.rating"),
    ("POST /generate", {"user_id": "u1", "task": "review"}, False, 422, "item_id"),
    ("POST /generate", {"user_id": "u1", "task": "chat", "prompt": ""}, False, 422, "prompt"),
    # `\s` of the id pattern: U+0085 is whitespace for pydantic, not for JSON Schema; U+FEFF the reverse.
    ("POST /recommend", {"user_id": "\u0002/t\u001e\u0085]"}, False, 422, "user_id"),
    ("POST /recommend", {"user_id": "a\ufeffb"}, False, 422, "user_id"),
    ("POST /recommend", {"user_id": "ü-😍/1"}, True, 200, None),
    # `seed` publishes minimum/maximum (pydantic writes "ge"/"le", ignored by JSON Schema, when the
    # constraints follow a validator).
    ("POST /generate", {"user_id": "u1", "task": "genre", "seed": -4746}, False, 422, "seed"),
    # Numbers as strings were accepted (lax pydantic) although the schema says number/integer.
    ("POST /recommend", {"user_id": "u1", "k": "5"}, False, 422, "k"),
    ("POST /events", {**EVENT, "timestamp": "10"}, False, 422, "timestamp"),
    # A positive temperature this small made the sampling probabilities NaN: 500, or an error event.
    (
        "POST /generate",
        {"user_id": "u1", "task": "chat", "prompt": "Hi", "temperature": 1e-108},
        True,
        200,
        None,
    ),
    (
        "POST /generate",
        {"user_id": "u1", "task": "chat", "prompt": "Hi", "temperature": 1e-108, "stream": True},
        True,
        200,
        None,
    ),
    # `genres` is an array of {genre, probability}: its former [name, probability] tuple schema did not load.
    ("POST /generate", {"user_id": "u1", "task": "genre"}, True, 200, None),
]


def request_schema_validator(raw: dict[str, Any], label: str) -> Any:
    method, path = label.split(" ", 1)
    body = raw["paths"][path][method.lower()]["requestBody"]["content"]["application/json"]["schema"]
    return jsonschema_rs.Draft202012Validator({**body, "components": raw["components"]})


def test_found_cases_schema_and_server_agree(fuzz_settings) -> None:
    schema = schemathesis.openapi.from_asgi(
        "/openapi.json", LifespanStack(lambda: gateway_and_generator(fuzz_settings))
    )
    for label, body, valid, status, field in REGRESSIONS:
        assert request_schema_validator(schema.raw_schema, label).is_valid(body) is valid, (label, body)
        method, path = label.split(" ", 1)
        case = schema[path][method].Case(body=body, media_type="application/json")
        response = case.call_and_validate(checks=RESPONSE_CHECKS, headers=AUTH)
        assert response.status_code == status, (label, body, response.text)
        assert_error_envelope(response)
        if field is not None:
            assert [f["field"] for f in response.json()["fields"]] == [field], response.text
    # A body that is not UTF-8 was an undocumented 400 with the error "HTTPError".
    case = schema["/events"]["POST"].Case(body=b'{"user_id": "\xff"}', media_type="application/json")
    response = case.call_and_validate(checks=RESPONSE_CHECKS, headers=AUTH)
    assert response.status_code == 400 and response.json()["error"] == "BadRequest", response.text


def test_published_openapi(fuzz_settings) -> None:
    """Every error status is the envelope (no FastAPI HTTPValidationError), the /events body is typed,
    the SSE answer of generation is declared on both apps, and every component is valid JSON Schema."""
    for app in (gateway.create_app(fuzz_settings), generator.create_app(fuzz_settings)):
        raw = app.openapi()
        assert "HTTPValidationError" not in raw["components"]["schemas"]
        for name, component in raw["components"]["schemas"].items():
            assert jsonschema_rs.meta.is_valid(component), name
        for path, operations in raw["paths"].items():
            for method, operation in operations.items():
                for status, response in operation["responses"].items():
                    if int(status) >= 400:
                        ref = response["content"]["application/json"]["schema"]["$ref"]
                        envelope = "ValidationErrorEnvelope" if status == "422" else "ErrorEnvelope"
                        assert ref.endswith("/" + envelope), (method, path, status)
                if path.endswith("/generate"):
                    assert "text/event-stream" in operation["responses"]["200"]["content"]
    events = gateway.create_app(fuzz_settings).openapi()["paths"]["/events"]["post"]["requestBody"]
    refs = [s["$ref"] for s in events["content"]["application/json"]["schema"]["anyOf"]]
    assert refs == ["#/components/schemas/EventIn", "#/components/schemas/EventBatch"]


def test_the_gateway_does_not_import_torch() -> None:
    code = "import sys, service.gateway; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
