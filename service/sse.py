"""Server-sent events: token pieces as `data:` lines, then one `event: done` with the full response (or
one `event: error` with the error envelope).

`EventStreamResponse` closes its body iterator as soon as the response ends, also when the client went
away mid-stream: Starlette then cancels the sending task and leaves an iterator suspended at `yield` to
the garbage collector, so the `finally` that stops the work behind the stream would run late.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send


def sse(data: dict[str, Any], event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class EventStreamResponse(StreamingResponse):
    media_type = "text/event-stream"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()
