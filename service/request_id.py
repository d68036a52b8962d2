"""Request ids: every request gets one, the client's `X-Request-ID` when it is short and made of safe
characters, else a new random one. Every response carries it back in `X-Request-ID`, log lines written
while the request runs name it, and the gateway sends it on to the generation server, so the logs of
both processes correlate.

Based on: asgi-correlation-id (a pure ASGI middleware and a context variable, read by a log filter and
by outgoing HTTP calls).
"""

from __future__ import annotations

import logging
import re
import uuid
from contextvars import ContextVar

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "X-Request-ID"
SAFE = re.compile(r"[A-Za-z0-9._:-]{1,64}")  # what a client may choose; anything else is replaced
_SCOPE_KEY = "userllm.request_id"

current: ContextVar[str | None] = ContextVar("userllm_request_id", default=None)  # while a request runs


def request_id(conn: HTTPConnection) -> str:
    """The id the middleware gave this request ("-" for an app without the middleware)."""
    return str(conn.scope.get(_SCOPE_KEY, "-"))


class RequestIdMiddleware:
    """Pure ASGI (streaming responses and disconnects pass through untouched)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get(HEADER, "")
        rid = given if SAFE.fullmatch(given) else uuid.uuid4().hex
        scope[_SCOPE_KEY] = rid

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[HEADER] = rid
            await send(message)

        token = current.set(rid)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            current.reset(token)


class RequestIdLogFilter(logging.Filter):
    """Adds `request_id` ("-" outside a request) to every record, for the log format."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current.get() or "-"
        return True
