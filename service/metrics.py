"""Prometheus metrics (prefix `userllm_`), defined once at module level.

Based on: polar `observability/http_metrics.py` (deny list, explicit buckets); vLLM `metrics.py`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from prometheus_client import Counter, Gauge, Histogram
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
EXCLUDED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

REQUEST_DURATION = Histogram(
    "userllm_request_duration_seconds",
    "HTTP request duration by route template",
    ["service", "route", "method", "status"],
    buckets=LATENCY_BUCKETS,
)
EVENTS_ACCEPTED = Counter("userllm_events_accepted_total", "events queued by the gateway")
EVENTS_DUPLICATE = Counter("userllm_events_duplicate_total", "events dropped for a repeated event_id")
UNKNOWN_ITEMS = Counter(
    "userllm_unknown_items_total", "accepted events whose item is not in the catalogue", ["service"]
)
CACHE_HITS = Counter("userllm_cache_hits_total", "user_tokens served from Redis")
CACHE_MISSES = Counter(
    "userllm_cache_misses_total", "user_tokens missing, stale or of another model_version", ["reason"]
)
BATCH_SIZE = Histogram(
    "userllm_batch_size",
    "requests per engine batch",
    ["kind"],
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64),
)
GENERATED_TOKENS = Counter("userllm_generated_tokens_total", "tokens generated")
STREAM_LAG = Histogram(
    "userllm_stream_lag_seconds", "event queued -> user_tokens written", buckets=LATENCY_BUCKETS
)
WORKER_EVENTS = Counter("userllm_worker_events_total", "events applied by workers", ["outcome"])
WORKER_UPDATES = Counter("userllm_worker_user_updates_total", "user_tokens updates", ["mode"])
WORKER_BATCH_SECONDS = Histogram(
    "userllm_worker_batch_seconds", "time to apply one micro-batch", buckets=LATENCY_BUCKETS
)
CORRUPT_RECORDS = Counter(
    "userllm_corrupt_records_total",
    "stored values that did not decode or verify (never served; recomputed or dead-lettered)",
    ["service", "kind"],
)
WORKER_REDIS_ERRORS = Counter(
    "userllm_worker_redis_errors_total", "Redis connection errors the worker backed off from"
)
STREAM_TRIMMED = Counter("userllm_stream_trimmed_total", "acknowledged stream entries trimmed")
QUEUE_DEPTH = Gauge("userllm_engine_queue_depth", "requests waiting for the engine")
CANCELLED = Counter(
    "userllm_engine_cancelled_total", "engine jobs cancelled by their caller (the client went away)", ["kind"]
)


def route_template(request: Request) -> str:
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match == Match.FULL:
            return str(getattr(route, "path", request.url.path))
    return "unmatched"


def request_metrics_middleware(
    service: str,
) -> Callable[[Request, Callable[[Request], Awaitable[Response]]], Awaitable[Response]]:
    async def middleware(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if request.url.path in EXCLUDED_PATHS:
            return await call_next(request)
        start = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            REQUEST_DURATION.labels(service, route_template(request), request.method, str(status)).observe(
                time.perf_counter() - start
            )

    return middleware
