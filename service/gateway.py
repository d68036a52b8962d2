"""Gateway (`python -m service.gateway`): the public REST API on 127.0.0.1:8000.

POST /events queues events on Redis Streams (the encoder workers apply them); POST /recommend and
POST /generate are answered by the generation server (httpx); GET /users/{id} reads Redis.
/healthz does no I/O; /readyz checks Redis and the generation server; /metrics is Prometheus.

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
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import make_asgi_app
from pydantic import ValidationError
from redis.exceptions import RedisError

from service import metrics
from service.errors import (
    EngineUnavailable,
    StoreUnavailable,
    UserNotFound,
    envelope,
    error_responses,
    install_error_handlers,
)
from service.generator_client import GeneratorClient, UpstreamError
from service.keys import Keys
from service.redis_conn import create_redis
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
    UserInfo,
)
from service.serve import serve
from service.settings import Settings, get_settings
from service.streams import publish
from service.user_store import read_user_info

log = logging.getLogger("userllm.gateway")


class State(TypedDict):
    settings: Settings
    redis: aioredis.Redis
    keys: Keys
    generator: GeneratorClient
    catalogue: dict[str, set[str]]  # {"items": ...} once fetched from the generator


def create_app(settings: Settings | None = None, generator_transport: Any = None) -> FastAPI:
    """Build the gateway; `generator_transport` (an httpx transport) lets tests call an in-process
    generation server."""
    settings = settings or get_settings()

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
    app.mount("/metrics", make_asgi_app())
    _routes(app)
    return app


async def _upstream_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, UpstreamError)
    body = envelope(exc.name, exc.body.get("detail", exc.message))
    if "fields" in exc.body:
        body["fields"] = exc.body["fields"]
    return JSONResponse(body, exc.status_code, headers=exc.headers)


async def get_state(request: Request) -> State:
    return cast(State, request.state._state)


StateDep = Annotated[State, Depends(get_state)]


def parse_events(body: Any) -> list[EventIn]:
    """One event object or {"events": [...]}; any invalid event rejects the whole request (422)."""
    try:
        if isinstance(body, dict) and "events" in body:
            return EventBatch.model_validate(body).events
        return [EventIn.model_validate(body)]
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from exc


async def known_items(state: State) -> set[str] | None:
    if "items" not in state["catalogue"]:
        try:
            state["catalogue"]["items"] = set((await state["generator"].get("/v1/info"))["items"])
        except Exception:
            return None
    return state["catalogue"]["items"]


def _routes(app: FastAPI) -> None:
    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses=error_responses(503))
    async def readyz(state: StateDep) -> dict[str, str]:
        try:
            await state["redis"].ping()
        except Exception as exc:
            raise StoreUnavailable(f"redis unreachable: {exc}") from exc
        try:
            ready = await state["generator"].get("/readyz")
        except UpstreamError as exc:
            raise EngineUnavailable(f"generation server not ready: {exc.message}") from exc
        return {"status": "ready", "model_version": str(ready.get("model_version"))}

    @app.post(
        "/events",
        status_code=202,
        response_model=EventsAccepted,
        tags=["events"],
        responses=error_responses(400, 422, 503),
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
        try:
            queued, duplicates = await publish(
                state["redis"], state["keys"], events, maxlen=state["settings"].stream_maxlen
            )
        except Exception as exc:
            raise StoreUnavailable(f"could not queue events: {exc}") from exc
        metrics.EVENTS_ACCEPTED.inc(queued)
        metrics.EVENTS_DUPLICATE.inc(duplicates)
        metrics.UNKNOWN_ITEMS.labels("gateway").inc(unknown or 0)
        return EventsAccepted(accepted=queued, unknown_items=unknown, duplicates=duplicates)

    @app.post(
        "/recommend",
        response_model=RecommendResponse,
        tags=["serving"],
        responses=error_responses(400, 422, 503),
    )
    async def recommend(body: RecommendRequest, state: StateDep) -> RecommendResponse:
        return RecommendResponse.model_validate(
            await state["generator"].post("/v1/recommend", body.model_dump())
        )

    @app.post(
        "/generate",
        response_model=GenerateResponse,
        tags=["serving"],
        responses={**SSE_OK, **error_responses(400, 404, 422, 503)},
    )
    async def generate(body: GenerateRequest, state: StateDep) -> Any:
        if body.stream:
            chunks = await state["generator"].stream("/v1/generate", body.model_dump())
            return StreamingResponse(chunks, media_type="text/event-stream")
        return GenerateResponse.model_validate(
            await state["generator"].post("/v1/generate", body.model_dump())
        )

    @app.get(
        "/users/{user_id}",
        response_model=UserInfo,
        tags=["users"],
        responses=error_responses(404, 422, 503),
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
