"""Review and chat requests of the generation server: a decode streamed as server-sent events, cancelled
when the client goes away.

Based on: vLLM `entrypoints/utils.py` `with_cancellation` (a request whose client disconnects is
aborted).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from service import metrics
from service.batching import MicroBatcher
from service.engine import GenerateJob, GenerateResult
from service.schemas import GenerateResponse
from service.sse import sse


async def stream_events(
    decoder: MicroBatcher[GenerateJob, GenerateResult], job: GenerateJob, info: dict[str, Any]
) -> AsyncIterator[bytes]:
    """SSE of one decode: text pieces as they come, then `done` with the response, or one `error`.
    Leaving early (the client went away) cancels the decode: it stops at its next step."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str] = asyncio.Queue()

    def on_text(piece: str) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, piece)

    job.on_text = on_text
    task = asyncio.create_task(decoder.submit(job))
    try:
        while not (task.done() and queue.empty()):
            try:
                yield sse({"text": await asyncio.wait_for(queue.get(), 0.05)})
            except TimeoutError:
                continue
        try:
            result = task.result()
        except Exception as exc:
            yield sse({"error": type(exc).__name__, "detail": str(exc)}, event="error")
            return
        metrics.GENERATED_TOKENS.inc(result.completion_tokens)
        body = GenerateResponse(
            **info,
            text=result.text,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
        )
        yield sse(body.model_dump(), event="done")
    finally:
        task.cancel()  # no-op once the decode is done
