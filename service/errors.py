"""One error hierarchy and one JSON envelope: `{"error": <class name>, "detail": <message>}`, with
`fields` ([{"field", "message", "type"}]) when a request field is invalid.

An unexpected exception answers 500 `{"error": "InternalError", "detail": "internal error",
"request_id": ...}`; its text goes to the log under that request id, never to the client. Redis
unreachable (a redis `ConnectionError` or `TimeoutError`) in any request answers 503 `StoreUnavailable`
with `Retry-After`.

Based on: polar `exceptions.py` + `exception_handlers.py`; vLLM `api_server.py` (503 on a dead engine).
"""

from __future__ import annotations

import logging
from typing import Any

import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.request_id import HEADER, request_id

log = logging.getLogger("userllm.errors")

STORE_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


class ServiceError(Exception):
    """Base of every error the API returns on purpose."""

    status_code = 500

    def __init__(
        self,
        message: str,
        status_code: int | None = None,
        *,
        headers: dict[str, str] | None = None,
        fields: list[dict[str, str]] | None = None,
    ):
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code
        self.headers = headers or {}
        self.fields = fields


class UserNotFound(ServiceError):
    status_code = 404


class ItemNotFound(ServiceError):
    status_code = 404


class PromptTooLong(ServiceError):
    """A prompt over the token limit, or too long for the model's context with `max_new_tokens`."""

    status_code = 422

    def __init__(self, message: str, field: str = "prompt"):
        super().__init__(message, fields=[{"field": field, "message": message, "type": "prompt_too_long"}])


class ClientDisconnected(ServiceError):
    """The client closed the connection before the answer (nginx's 499; nobody reads the body)."""

    status_code = 499


class EngineOverloaded(ServiceError):
    status_code = 503

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class Backlogged(ServiceError):
    """The event streams hold more unapplied entries than `max_backlog`: accepting more could lose them."""

    status_code = 503

    def __init__(self, message: str, retry_after_s: int = 5):
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class EngineUnavailable(ServiceError):
    status_code = 503

    def __init__(self, message: str, retry_after_s: int = 5):
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class StoreUnavailable(EngineUnavailable):
    """Redis is unreachable."""


def envelope(error: str, detail: Any) -> dict[str, Any]:
    return {"error": error, "detail": detail}


def _field_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        out.append({"field": ".".join(loc) or "body", "message": err.get("msg", ""), "type": err.get("type")})
    return out


async def _service_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    body = envelope(type(exc).__name__, exc.message)
    if exc.fields is not None:
        body["fields"] = exc.fields
    return JSONResponse(body, exc.status_code, headers=exc.headers)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    fields = _field_errors(exc)
    detail = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
    body = envelope("ValidationError", detail)
    body["fields"] = jsonable_encoder(fields)
    return JSONResponse(body, 422)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    name = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "HTTPError")
    return JSONResponse(envelope(name, exc.detail), exc.status_code, headers=getattr(exc, "headers", None))


async def _store_error(request: Request, exc: Exception) -> JSONResponse:
    log.warning("redis unreachable (request %s): %s: %s", request_id(request), type(exc).__name__, exc)
    return await _service_error(request, StoreUnavailable("the user store is unavailable; retry later"))


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's outermost middleware calls this, outside the request-id middleware: it sets the
    header itself (and re-raises `exc` afterwards, for the server's own log)."""
    rid = request_id(request)
    log.error("unhandled error in %s %s (request %s)", request.method, request.url.path, rid, exc_info=exc)
    body = envelope("InternalError", "internal error")
    body["request_id"] = rid
    return JSONResponse(body, 500, headers={HEADER: rid})


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for error in STORE_ERRORS:
        app.add_exception_handler(error, _store_error)
    app.add_exception_handler(Exception, _unhandled)
