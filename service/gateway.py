"""Gateway (`python -m service.gateway`): the public REST API on 127.0.0.1:8000.

POST /events queues events on Redis Streams (the encoder workers apply them) unless the streams'
backlog is past `max_backlog` (503 with Retry-After: never accept what could be lost); POST /recommend
and POST /generate are answered by the generation server (httpx; a client that goes away closes the
call, which stops the decode there); GET /users/{id} reads Redis. /healthz does no I/O; /readyz checks
Redis, the generation server, the workers' heartbeats and the backlog; /metrics is Prometheus.
DELETE /users/{id} forgets a user (the right to be forgotten).

Every route but the health checks needs an API key with its scope (service/auth.py) unless
authentication is explicitly disabled; request bodies are limited to `max_body_bytes` (413).

Based on: polar `app.py` (factory + typed lifespan state), the full-stack template's thin routes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypedDict, cast

import redis.asyncio as aioredis
from fastapi import Body, Depends, FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import make_asgi_app
from pydantic import ValidationError
from redis.exceptions import RedisError
from starlette.datastructures import Headers

from service import metrics
from service.auth import ApiKey, KeyFileError, KeyRing, authorize, check_rate
from service.body_limit import BodyLimit
from service.disconnect import cancel_on_disconnect
from service.errors import (
    Backlogged,
    EngineUnavailable,
    ServiceError,
    StoreUnavailable,
    UserNotFound,
    envelope,
    error_responses,
    install_error_handlers,
)
from service.generator_client import GeneratorClient, UpstreamError
from service.keys import Keys
from service.redis_conn import create_redis
from service.request_id import RequestIdMiddleware
from service.schemas import (
    SSE_OK,
    EventBatch,
    EventIn,
    EventsAccepted,
    EventsBody,
    GenerateRequest,
    GenerateResponse,
    Id,
    RecommendRequest,
    RecommendResponse,
    UserForgotten,
    UserInfo,
)
from service.serve import serve
from service.settings import Settings, get_settings
from service.sse import EventStreamResponse
from service.streams import backlog, publish
from service.user_store import forget_user, read_user_info

log = logging.getLogger("userllm.gateway")


class State(TypedDict):
    settings: Settings
    redis: aioredis.Redis
    keys: Keys
    generator: GeneratorClient
    catalogue: dict[str, set[str]]  # {"items": ...} once fetched from the generator
    catalogue_failed_at: list[float]  # [monotonic time of the last failed fetch]
    backlog: list[float]  # [entries waiting, monotonic time read]: re-read at most every BACKLOG_TTL_S
    keyring: KeyRing | None  # None: authentication explicitly disabled


BACKLOG_TTL_S = 0.5


def create_app(settings: Settings | None = None, generator_transport: Any = None) -> FastAPI:
    """Build the gateway; `generator_transport` (an httpx transport) lets tests call an in-process
    generation server."""
    settings = settings or get_settings()
    keyring = load_keyring(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[State]:
        redis_url = settings.require_redis_url()
        redis = create_redis(redis_url, "gateway")
        generator = GeneratorClient(
            settings.generator_url,
            timeout_s=settings.generator_timeout_s,
            retries=settings.generator_retries,
            transport=generator_transport,
        )
        try:
            yield State(
                settings=settings,
                redis=redis,
                keys=Keys(settings.key_prefix, settings.num_shards),
                generator=generator,
                catalogue={},
                catalogue_failed_at=[float("-inf")],
                backlog=[0.0, float("-inf")],
                keyring=keyring,
            )
        finally:
            await generator.aclose()
            await redis.aclose()

    app = FastAPI(
        title="USER-LLM gateway",
        version="0.1.0",
        lifespan=lifespan,
        description="Personalized recommendations and generation from user embeddings (USER-LLM).",
    )
    install_error_handlers(app)
    app.add_exception_handler(UpstreamError, _upstream_error)
    app.middleware("http")(metrics.request_metrics_middleware("gateway"))
    metrics_app = make_asgi_app()
    if settings.metrics_require_admin and keyring is not None:
        metrics_app = _admin_only(metrics_app, keyring)
    app.mount("/metrics", metrics_app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestIdMiddleware)  # outermost: every response carries the id
    _routes(app)
    return app


def load_keyring(settings: Settings) -> KeyRing | None:
    """The API keys, or None when authentication is explicitly disabled; a clear error otherwise."""
    if settings.auth_disabled:
        log.warning("authentication is DISABLED (USERLLM_AUTH_DISABLED): anyone can read and write any user")
        return None
    if settings.api_keys_file is None:
        raise KeyFileError(
            "USERLLM_API_KEYS_FILE is not set: create keys with `python -m service.auth create --file "
            "keys.json --name NAME --scopes ingest,read,admin`, or set USERLLM_AUTH_DISABLED=true for a "
            "local stack"
        )
    return KeyRing.load(settings.api_keys_file)


def _admin_only(inner: Any, keyring: KeyRing) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        try:
            authorize(keyring, Headers(scope=scope), "admin")
        except ServiceError as exc:
            response = JSONResponse(envelope(type(exc).__name__, exc.message), exc.status_code, exc.headers)
            await response(scope, receive, send)
            return
        await inner(scope, receive, send)

    return app


async def _upstream_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, UpstreamError)
    body = envelope(exc.name, exc.body.get("detail", exc.message))
    for key in ("fields", "request_id"):
        if key in exc.body:
            body[key] = exc.body[key]
    return JSONResponse(body, exc.status_code, headers=exc.headers)


async def get_state(request: Request) -> State:
    return cast(State, request.state._state)


StateDep = Annotated[State, Depends(get_state)]
_bearer = HTTPBearer(auto_error=False, description="an API key: `Authorization: Bearer <key>`")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key (alternative header)")


def require(scope: str) -> Any:
    """Route dependency: an API key with `scope`, within its rate limit (401 / 403 / 429)."""

    async def check(
        request: Request,
        state: StateDep,
        _b: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        _k: Annotated[str | None, Depends(_api_key)],
    ) -> ApiKey | None:
        if state["keyring"] is None:
            return None
        key = authorize(state["keyring"], request.headers, scope)
        await check_rate(state["redis"], state["keys"], key)
        return key

    return Depends(check)


def parse_events(body: Any) -> list[EventIn]:
    """One event object or {"events": [...]}; any invalid event rejects the whole request (422)."""
    try:
        if isinstance(body, dict) and "events" in body:
            return EventBatch.model_validate(body).events
        return [EventIn.model_validate(body)]
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from exc


CATALOGUE_RETRY_S = 5.0  # while the generation server is unreachable, ask it again at most this often


async def known_items(state: State) -> set[str] | None:
    """The catalogue's item ids (fetched once from the generation server), or None while it cannot be
    fetched: /events then counts no unknown items, and does not wait on the generation server for
    every request (one attempt per CATALOGUE_RETRY_S)."""
    catalogue = state["catalogue"]
    if "items" not in catalogue:
        now = time.monotonic()
        if now - state["catalogue_failed_at"][0] < CATALOGUE_RETRY_S:
            return None
        try:
            catalogue["items"] = set((await state["generator"].get("/v1/info"))["items"])
        except Exception:
            state["catalogue_failed_at"][0] = now
            return None
    return catalogue["items"]


async def current_backlog(state: State, *, fresh: bool = False) -> int:
    """Stream entries waiting for workers, read from Redis at most every BACKLOG_TTL_S."""
    cached = state["backlog"]
    if fresh or time.monotonic() - cached[1] > BACKLOG_TTL_S:
        cached[:] = [float(await backlog(state["redis"], state["keys"])), time.monotonic()]
    return int(cached[0])


async def worker_liveness(state: State) -> tuple[list[str], list[str]]:
    """(live, stopped) worker names: stopped = heart-beat once, key expired, never signed off."""
    redis, keys = state["redis"], state["keys"]
    members = await redis.smembers(keys.workers())
    names = sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)
    beats = await redis.mget([keys.worker(n) for n in names]) if names else []
    live = [n for n, b in zip(names, beats, strict=True) if b is not None]
    return live, [n for n in names if n not in live]


def _routes(app: FastAPI) -> None:
    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses=error_responses(503))
    async def readyz(state: StateDep) -> dict[str, Any]:
        settings = state["settings"]
        try:
            await state["redis"].ping()
            live, stopped = await worker_liveness(state)
            waiting = await current_backlog(state, fresh=True)
        except Exception as exc:
            raise StoreUnavailable(f"redis unreachable: {exc}") from exc
        try:
            ready = await state["generator"].get("/readyz")
        except UpstreamError as exc:
            raise EngineUnavailable(f"generation server not ready: {exc.message}") from exc
        if len(live) < settings.min_workers:
            raise EngineUnavailable(
                f"{len(live)} encoder workers heart-beating, {settings.min_workers} required"
                + (f"; stopped: {', '.join(stopped)}" if stopped else "")
            )
        if waiting > settings.max_backlog:
            raise Backlogged(f"{waiting} events wait for the workers (max_backlog {settings.max_backlog})")
        return {
            "status": "ready",
            "model_version": str(ready.get("model_version")),
            "workers": {"live": live, "stopped": stopped},
            "backlog": waiting,
        }

    @app.post(
        "/events",
        status_code=202,
        response_model=EventsAccepted,
        tags=["events"],
        dependencies=[require("ingest")],
        responses=error_responses(400, 401, 403, 413, 422, 429, 503),
    )
    async def post_events(
        state: StateDep,
        body: Annotated[
            EventsBody, Body(description='one event, or {"events": [...]} with up to 1,000 events')
        ],
    ) -> EventsAccepted:
        events = parse_events(body)
        items = await known_items(state)
        unknown = None if items is None else sum(e.item_id not in items for e in events)
        limit = state["settings"].max_backlog
        try:
            waiting = await current_backlog(state)
            if waiting + len(events) > limit:
                waiting = await current_backlog(state, fresh=True)
            if waiting + len(events) > limit:
                raise Backlogged(
                    f"{waiting} events wait for the encoder workers (max_backlog {limit}); retry later"
                )
            queued, duplicates = await publish(
                state["redis"], state["keys"], events, dedup_ttl_s=state["settings"].dedup_ttl_s
            )
        except Backlogged:
            raise
        except Exception as exc:
            raise StoreUnavailable(f"could not queue events: {exc}") from exc
        state["backlog"][0] += queued
        metrics.EVENTS_ACCEPTED.inc(queued)
        metrics.EVENTS_DUPLICATE.inc(duplicates)
        metrics.UNKNOWN_ITEMS.labels("gateway").inc(unknown or 0)
        return EventsAccepted(accepted=queued, unknown_items=unknown, duplicates=duplicates)

    @app.post(
        "/recommend",
        response_model=RecommendResponse,
        tags=["serving"],
        dependencies=[require("read")],
        responses=error_responses(400, 401, 403, 413, 422, 429, 503),
    )
    async def recommend(body: RecommendRequest, state: StateDep) -> RecommendResponse:
        return RecommendResponse.model_validate(
            await state["generator"].post("/v1/recommend", body.model_dump())
        )

    @app.post(
        "/generate",
        response_model=GenerateResponse,
        tags=["serving"],
        responses={**SSE_OK, **error_responses(400, 401, 403, 404, 413, 422, 429, 503)},
        dependencies=[require("read")],
    )
    async def generate(body: GenerateRequest, state: StateDep, request: Request) -> Any:
        if body.stream:
            return EventStreamResponse(await state["generator"].stream("/v1/generate", body.model_dump()))
        call = state["generator"].post("/v1/generate", body.model_dump())
        return GenerateResponse.model_validate(await cancel_on_disconnect(request, call))

    @app.delete(
        "/users/{user_id}",
        response_model=UserForgotten,
        tags=["users"],
        dependencies=[require("admin")],
        responses=error_responses(401, 403, 422, 429, 503),
    )
    async def forget(user_id: Annotated[Id, Path()], state: StateDep) -> UserForgotten:
        """Remove the user's history, state, tokens and de-duplication keys; queued events of the user
        are dropped by the workers (the right to be forgotten)."""
        try:
            removed = await forget_user(state["redis"], state["keys"], user_id)
        except RedisError as exc:
            raise StoreUnavailable(f"could not forget the user: {exc}") from exc
        return UserForgotten(user_id=user_id, keys_removed=removed)

    @app.get(
        "/users/{user_id}",
        response_model=UserInfo,
        tags=["users"],
        dependencies=[require("read")],
        responses=error_responses(401, 403, 404, 422, 429, 503),
    )
    async def user(user_id: Annotated[Id, Path()], state: StateDep) -> UserInfo:
        try:
            raw = await read_user_info(state["redis"], state["keys"], user_id)
        except RedisError as exc:
            raise StoreUnavailable(f"could not read the user: {exc}") from exc
        seen, (version, updated_at, n_events) = raw["seen"], raw["emb"]
        if not seen and version is None:
            raise UserNotFound(f"user_id {user_id!r} has no applied events")
        updated = float(updated_at) if updated_at else None
        return UserInfo(
            user_id=user_id,
            events_seen=int(seen.get("n_events", 0)),
            last_event_time=float(seen["last_event_time"]) if "last_event_time" in seen else None,
            unknown_items=int(seen.get("unknown_items", 0)),
            embedding_model_version=version,
            embedding_updated_at=updated,
            embedding_age_s=None if updated is None else time.time() - updated,
            embedding_n_events=int(n_events) if n_events else None,
        )


def main() -> None:
    settings = get_settings()
    serve(create_app(settings), host=settings.host, port=settings.port)


if __name__ == "__main__":
    main()
