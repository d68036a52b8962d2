"""One error hierarchy and one JSON envelope: `{"error": <class name>, "detail": <message>}`; a 422 adds
`"fields": [{"field", "message", "type"}]`. `error_responses()` declares the envelope in the OpenAPI.

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
from pydantic import BaseModel, Field
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


# --- the envelope, as published in the OpenAPI ---


class ErrorEnvelope(BaseModel):
    """The body of every error response."""

    error: str = Field(description="what went wrong, e.g. UserNotFound, EngineUnavailable, ValidationError")
    detail: str = Field(description="a message for humans")


class FieldError(BaseModel):
    field: str = Field(
        description="dotted path of the invalid field, e.g. events.1.timestamp; 'body' for all"
    )
    message: str
    type: str = Field(description="pydantic error type, e.g. missing, greater_than_equal, json_invalid")


class ValidationErrorEnvelope(ErrorEnvelope):
    """A 422: `detail` joins the `fields` as `field: message; ...`."""

    fields: list[FieldError] = Field(min_length=1)


_RETRY_AFTER = {
    "Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}
}
_STATUS = {
    400: ("The body could not be read (e.g. it is not UTF-8)", {}),
    401: ("No API key, or an unknown one (`Authorization: Bearer <key>` or `X-API-Key`)", {}),
    403: ("The API key lacks the route's scope", {}),
    404: ("The user or item is not known", {}),
    413: ("The request body is larger than `USERLLM_MAX_BODY_BYTES`", {}),
    422: ("The request is invalid: `fields` names each invalid field", {}),
    429: ("The API key is past its requests a second; retry after `Retry-After` seconds", _RETRY_AFTER),
    503: (
        "Redis or the engine is unavailable or overloaded; retry after `Retry-After` seconds",
        _RETRY_AFTER,
    ),
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for a route's error statuses, each with the envelope (replaces FastAPI's
    default 422 `HTTPValidationError`, which is not what the handlers below return)."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        description, headers = _STATUS[status]
        model = ValidationErrorEnvelope if status == 422 else ErrorEnvelope
        out[status] = {
            "model": model,
            "description": description,
            **({"headers": headers} if headers else {}),
        }
    return out


def envelope(error: str, detail: Any) -> dict[str, Any]:
    return {"error": error, "detail": detail}


def _field_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":  # loc is ("body", <character offset>): no field to name
            message = f"{err.get('msg', '')}: {err.get('ctx', {}).get('error', '')}"
            out.append({"field": "body", "message": message, "type": "json_invalid"})
            continue
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
    name = {400: "BadRequest", 404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "HTTPError")
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
