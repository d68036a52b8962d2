"""A client that goes away stops the work done for it.

`cancel_on_disconnect(request, work)` awaits `work` while it watches the request's ASGI `receive` for
`http.disconnect`. When the client leaves first, `work` is cancelled and `ClientDisconnected` (499,
nobody reads it) is raised: a cancelled `EngineLoop.generate` drops or stops its job, and a cancelled
httpx call closes its connection, which the generation server sees as its own client leaving.
Streams get the same from `service.sse.EventStreamResponse`.

Based on: vLLM `entrypoints/utils.py` (`listen_for_disconnect`, `with_cancellation`); Starlette
`StreamingResponse.listen_for_disconnect`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request

from service.errors import ClientDisconnected

R = TypeVar("R")


async def until_disconnected(request: Request) -> None:
    """Return once the client has closed the connection (the request body must be read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def cancel_on_disconnect(request: Request, work: Awaitable[R]) -> R:
    """`await work`, cancelled if the client disconnects first (then `ClientDisconnected` is raised)."""
    task = asyncio.ensure_future(work)
    watch = asyncio.create_task(until_disconnected(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if task.done() or watch.exception() is not None:
            return await task
        task.cancel()
        await asyncio.wait({task})  # let the work unwind: the job is cancelled, the connection closed
        raise ClientDisconnected("the client closed the connection")
    finally:
        watch.cancel()
        task.cancel()  # no-op when done; cancels the work when we are cancelled ourselves
