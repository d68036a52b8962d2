"""The engine interface the generation server's routes call: score, encode, generate, health.

Two implementations: `EngineLoop` (service/scheduler.py; one thread runs the PyTorch engine for every
job) and `VllmEngine` (service/vllm_engine.py; decoding in vLLM, scoring and encoding on an
`EngineLoop`). `USERLLM_ENGINE` picks one (service/generator.py); the routes see only this protocol.

Based on: vLLM's `EngineClient` (`vllm/engine/protocol.py`), the only thing its HTTP layer sees.
"""

from __future__ import annotations

from typing import Protocol

from service.encoding import Encoded
from service.engine import GenerateJob, GenerateResult, ScoreJob, ScoreResult
from service.user_store import StoredEvent


class EngineClient(Protocol):
    """What the routes need from an engine; every call is awaited on the server's event loop."""

    @property
    def alive(self) -> bool:
        """False once the engine stopped or died (/readyz answers 503)."""
        ...

    async def score(self, job: ScoreJob) -> ScoreResult:
        """Next-item and genre scores of one user (batched with concurrent calls)."""
        ...

    async def encode(self, history: list[StoredEvent]) -> Encoded:
        """User tokens recomputed from a stored history (a cache miss)."""
        ...

    async def generate(self, job: GenerateJob) -> GenerateResult:
        """Decode `job`, passing text pieces to `job.on_text` as they come; cancelling the call stops
        the decode (a waiting job never starts, a running one stops at its next step)."""
        ...

    async def stop(self) -> None:
        """Stop the engine; queued and running requests fail with 503 `EngineUnavailable`."""
        ...
