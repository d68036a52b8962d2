"""Review, chat and suggest requests of the generation server: the prompt's token limits, and streaming a
decode as server-sent events, cancelled when the client goes away.

Prompts are limited in tokens, not only characters: a 4,000-character chat prompt can be 12,000 tokens
(emoji), longer than the backbone's context, and one long prefill holds up every other request of the
engine loop. `max_prompt_tokens` bounds it, and prompt + max_new_tokens must fit the model's context.

Based on: vLLM `entrypoints/openai/serving_engine.py` `_validate_input` (prompt + max_tokens checked
against the context after tokenization; 400 there) and `entrypoints/utils.py` `with_cancellation` (a
request whose client disconnects is aborted).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from models.generation import SamplingParams
from service import metrics
from service.engine import GenerateJob, GenerateResult, TorchEngine
from service.errors import PromptTooLong, ServiceError
from service.schemas import GenerateRequest, GenerateResponse
from service.settings import Settings
from service.sse import sse

log = logging.getLogger("userllm.generator")


def decode_inputs(
    engine: TorchEngine, settings: Settings, body: GenerateRequest, suggested: str | None = None
) -> tuple[list[int], SamplingParams]:
    """Prompt token ids and sampling settings of a review / chat / suggest request (`suggested`: the item
    a suggest request is given; None: its question alone); 422 `PromptTooLong` when the prompt is over
    `max_prompt_tokens` or prompt + max_new_tokens exceed the model's context."""
    if body.task == "review":
        prompt, field = engine.review_prompt(body.item_id or "", body.rating), "item_id"
    elif body.task == "suggest":
        prompt, field = engine.suggest_prompt(body.prompt or "", suggested), "prompt"
    else:
        prompt, field = engine.chat_prompt(body.prompt or ""), "prompt"
    max_new_tokens = min(body.max_new_tokens, settings.max_new_tokens_limit)
    if len(prompt) > settings.max_prompt_tokens:
        raise PromptTooLong(
            f"the prompt is {len(prompt):,} tokens long (chat template included); "
            f"the limit is {settings.max_prompt_tokens:,}",
            field,
        )
    if len(prompt) + max_new_tokens > engine.max_context:
        raise PromptTooLong(
            f"the prompt ({len(prompt):,} tokens) + max_new_tokens ({max_new_tokens}) exceed the model's "
            f"context of {engine.max_context:,} tokens",
            field,
        )
    params = SamplingParams(
        max_new_tokens=max_new_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        repetition_penalty=body.repetition_penalty,
    )
    return prompt, params


async def stream_events(
    run: Callable[[GenerateJob], Coroutine[Any, Any, GenerateResult]],
    job: GenerateJob,
    info: dict[str, Any],
    rid: str,
) -> AsyncIterator[bytes]:
    """SSE of one decode: text pieces as they come, then `done` with the response, or one `error`
    (a ServiceError's message; any other error as "internal error", its text logged under `rid`).
    Leaving early (the client went away) cancels the decode: it stops at its next step."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str] = asyncio.Queue()

    def on_text(piece: str) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, piece)

    job.on_text = on_text
    task = asyncio.create_task(run(job))
    try:
        while not (task.done() and queue.empty()):
            try:
                yield sse({"text": await asyncio.wait_for(queue.get(), 0.05)})
            except TimeoutError:
                continue
        try:
            result = task.result()
        except ServiceError as exc:
            yield sse({"error": type(exc).__name__, "detail": exc.message, "request_id": rid}, event="error")
            return
        except Exception:
            log.exception("generation failed (request %s)", rid)
            error = {"error": "InternalError", "detail": "internal error", "request_id": rid}
            yield sse(error, event="error")
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
