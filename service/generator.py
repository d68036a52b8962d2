"""Generation server (`python -m service.generator`): USER-LLM behind /v1/recommend and /v1/generate.

Reads user tokens from Redis; tokens of another `model_version`, of another shape or that fail their
checksum are never used (the user's stored history is re-encoded instead and written back); users
with no events get a non-personalized answer. The routes call an `EngineClient`
(service/engine_client.py) chosen by `USERLLM_ENGINE`: `torch` (default) is one engine thread that runs
the model (`EngineLoop`, service/scheduler.py): scoring batches first, then generation with continuous
batching (requests join and leave a running decode step by step), off the event loop; `vllm`
(service/vllm_engine.py) decodes in vLLM and scores on that thread.
CUDA when present, else CPU.
Generation prompts are limited in tokens (`max_prompt_tokens`, and the backbone's context); a client
that goes away cancels its decode, which stops at the next step.

Based on: vLLM `entrypoints/openai/api_server.py` (engine built in the lifespan, 503 when it is dead),
polar's app factory with a typed lifespan state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypedDict, cast

import redis.asyncio as aioredis
from fastapi import Depends, FastAPI, Request
from prometheus_client import make_asgi_app

from models.pplug import DEFAULT_QUERY, REVIEW_QUERY
from service import metrics
from service.disconnect import cancel_on_disconnect
from service.engine import GenerateJob, ScoreJob, TorchEngine, UserInput
from service.engine_client import EngineClient
from service.errors import EngineUnavailable, ItemNotFound, error_responses, install_error_handlers
from service.keys import Keys
from service.redis_conn import create_redis
from service.request_id import RequestIdMiddleware, request_id
from service.scheduler import start_engine_loop
from service.schemas import (
    SSE_OK,
    GenerateRequest,
    GenerateResponse,
    GeneratorInfo,
    GenreProbability,
    RecommendedItem,
    RecommendRequest,
    RecommendResponse,
)
from service.serve import serve
from service.settings import Settings, get_settings
from service.sse import EventStreamResponse
from service.text_generation import decode_inputs, stream_events
from service.user_store import (
    CorruptRecord,
    UserUpdate,
    read_seen_items,
    read_tokens,
    read_users,
    write_updates,
)

log = logging.getLogger("userllm.generator")


class State(TypedDict):
    settings: Settings
    redis: aioredis.Redis
    keys: Keys
    engine: TorchEngine
    runner: EngineClient  # EngineLoop (one thread runs the model) or VllmEngine


def create_app(settings: Settings | None = None, engine: TorchEngine | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[State]:
        redis_url = settings.require_redis_url()
        eng = engine
        if eng is None:
            eng = await asyncio.to_thread(
                TorchEngine.load, settings.userllm_checkpoint, settings.resolved_backbone_dir, settings.device
            )
        warm_up = [ScoreJob(UserInput(None), k=1), ScoreJob(UserInput(None), k=1, task="genre")]
        await asyncio.to_thread(eng.score_batch, warm_up)  # also computes the prompts' lower states
        runner = start_engine(eng, settings)
        redis = create_redis(redis_url, "generator")
        log.info(
            "generator ready: model_version %s on %s, engine %s",
            eng.model_version,
            eng.device,
            settings.engine,
        )
        try:
            yield State(
                settings=settings,
                redis=redis,
                keys=Keys(settings.key_prefix, settings.num_shards),
                engine=eng,
                runner=runner,
            )
        finally:
            await runner.stop()
            await redis.aclose()

    app = FastAPI(title="USER-LLM generation server", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    app.middleware("http")(metrics.request_metrics_middleware("generator"))
    app.add_middleware(RequestIdMiddleware)  # outermost: every response carries the id
    app.mount("/metrics", make_asgi_app())
    _routes(app)
    return app


def start_engine(engine: TorchEngine, settings: Settings) -> EngineClient:
    """The engine `settings.engine` names, started (call on the server's event loop)."""
    if settings.engine == "vllm":
        from service.vllm_engine import VllmEngine  # vLLM itself is imported only there, only now

        return VllmEngine.start(engine, settings)
    return start_engine_loop(engine, settings)


async def get_state(request: Request) -> State:
    return cast(State, request.state._state)


StateDep = Annotated[State, Depends(get_state)]


async def resolve_user(state: State, user_id: str) -> tuple[UserInput, float | None]:
    """Cached user tokens of the loaded model_version, else recomputed from history, else cold start."""
    engine = state["engine"]
    try:
        cached = await read_tokens(state["redis"], state["keys"], user_id)
        reason = "missing" if cached is None else "model_version"
    except CorruptRecord as exc:  # never served: recomputed from the history below and written back
        log.warning("user %s: cached tokens fail their check (%s); recomputing", user_id, exc)
        metrics.CORRUPT_RECORDS.labels("generator", "user_tokens").inc()
        cached, reason = None, "corrupt"
    if cached is not None and cached.model_version == engine.model_version:
        if engine.accepts_tokens(cached.user_tokens.shape):
            metrics.CACHE_HITS.inc()
            return UserInput(cached.user_tokens), cached.updated_at
        reason = "shape"  # same version, other shape: written by something else than this model
    newest = engine.tower.window + 1  # a recompute reads the newest window of events, not all of them
    record = (await read_users(state["redis"], state["keys"], [user_id], newest=newest))[user_id]
    if not record.events:
        metrics.CACHE_MISSES.labels("no_events").inc()
        return UserInput(None), None
    metrics.CACHE_MISSES.labels(reason).inc()
    encoded = await state["runner"].encode(record.events)
    # Write the recomputed tokens back (compare-and-set: a worker's concurrent update wins), so an
    # inactive user is re-encoded once after a model roll-out, not on every request.
    update = UserUpdate(
        user_id=user_id, expected_rev=record.rev, add=[], drop=[], user_tokens=encoded.user_tokens,
        model_version=engine.model_version, n_events_encoded=encoded.n_events,
        last_event_key=record.events[-1].key, state_kv=encoded.state, state_keys=encoded.state_keys,
        n_unknown=0, new_items=[], state_ttl_s=state["settings"].state_ttl_s,
    )  # fmt: skip
    await write_updates(state["redis"], state["keys"], [update])
    return UserInput(encoded.user_tokens), time.time()


async def seen_ids(state: State, user_id: str) -> set[int]:
    """Item vocabulary ids of the user's history (items outside the model's catalogue left out)."""
    items = state["engine"].codec.items
    history = await read_seen_items(state["redis"], state["keys"], user_id)
    return {items.encode(i) for i in history if i in items}


async def suggestion(state: State, user: UserInput, user_id: str) -> RecommendedItem | None:
    """The item a "suggest" request is given: the next-item head's first, the history excluded (None when
    the user has seen every item)."""
    engine = state["engine"]
    scored = await state["runner"].score(ScoreJob(user, k=1, exclude=await seen_ids(state, user_id)))
    if not scored.items:
        return None
    index, score = scored.items[0]
    item_id = engine.codec.items.decode(index)
    return RecommendedItem(item_id=item_id, title=engine.codec.title(item_id), score=score, rank=1)


def _routes(app: FastAPI) -> None:
    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", responses=error_responses(503))
    async def readyz(state: StateDep) -> dict[str, str]:
        try:
            await state["redis"].ping()
        except Exception as exc:
            raise EngineUnavailable(f"redis unreachable: {exc}") from exc
        if not state["runner"].alive:
            raise EngineUnavailable("the engine loop is not running")
        return {"status": "ready", "model_version": state["engine"].model_version}

    @app.get("/v1/info", response_model=GeneratorInfo)
    async def info(state: StateDep) -> GeneratorInfo:
        engine = state["engine"]
        return GeneratorInfo(
            model_version=engine.model_version,
            device=engine.device,
            mode=engine.model.config.llm.mode,
            engine=state["settings"].engine,
            items=list(engine.codec.items.tokens[2:]),
        )

    @app.post("/v1/recommend", response_model=RecommendResponse, responses=error_responses(400, 422, 503))
    async def recommend(body: RecommendRequest, state: StateDep) -> RecommendResponse:
        engine = state["engine"]
        user, updated_at = await resolve_user(state, body.user_id)
        seen: set[int] = set()  # excluded, or scored with the encoder's learned seen-item score
        if body.exclude_seen or engine.seen_bias is not None:
            seen = await seen_ids(state, body.user_id)
        if body.exclude_seen:
            job = ScoreJob(user, k=body.k, exclude=seen)
        else:
            job = ScoreJob(user, k=body.k, seen=seen)
        result = await state["runner"].score(job)
        items = [
            RecommendedItem(
                item_id=(iid := engine.codec.items.decode(idx)),
                title=engine.codec.title(iid),
                score=score,
                rank=rank + 1,
            )
            for rank, (idx, score) in enumerate(result.items)
        ]
        return RecommendResponse(
            user_id=body.user_id,
            items=items,
            personalized=user.personalized,
            model_version=engine.model_version,
            updated_at=updated_at,
        )

    @app.post(
        "/v1/generate",
        response_model=GenerateResponse,
        responses={**SSE_OK, **error_responses(400, 404, 422, 503)},
    )
    async def generate(body: GenerateRequest, state: StateDep, request: Request) -> Any:
        engine = state["engine"]
        if body.item_id is not None and not engine.codec.known(body.item_id):
            raise ItemNotFound(f"item_id {body.item_id!r} is not in the catalogue of {engine.model_version}")
        inputs = None if body.task == "genre" else decode_inputs(engine, state["settings"], body)  # 422 first
        user, updated_at = await resolve_user(state, body.user_id)
        info = dict(
            user_id=body.user_id,
            task=body.task,
            personalized=user.personalized,
            model_version=engine.model_version,
            updated_at=updated_at,
        )
        if inputs is None:  # genre: scored by the category head
            scored = await state["runner"].score(ScoreJob(user, k=1, task="genre"))
            genres = [
                GenreProbability(genre=engine.codec.categories.decode(i), probability=p)
                for i, p in scored.categories
            ]
            return GenerateResponse(
                **info,
                text=genres[0].genre,
                genres=genres,
                prompt_tokens=len(engine.genre_prompt),
                completion_tokens=0,
            )
        if body.task == "suggest":  # grounded in the recommender's first item
            suggested = await suggestion(state, user, body.user_id)
            info["item"] = suggested
            inputs = decode_inputs(engine, state["settings"], body, suggested.item_id if suggested else None)
        query = REVIEW_QUERY if body.task == "review" else body.prompt or DEFAULT_QUERY  # PPlug's input x
        job = GenerateJob(user, *inputs, query=query)
        if body.stream:
            events = stream_events(state["runner"].generate, job, info, request_id(request))
            return EventStreamResponse(events)
        result = await cancel_on_disconnect(request, state["runner"].generate(job))
        metrics.GENERATED_TOKENS.inc(result.completion_tokens)
        return GenerateResponse(
            **info,
            text=result.text,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
        )


def main() -> None:
    settings = get_settings()
    serve(create_app(settings), host=settings.host, port=settings.generator_port)


if __name__ == "__main__":
    main()
