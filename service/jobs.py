"""Value types of the generation server's engines: a request's user input, scoring and generation jobs
and their results. Routes build jobs, an engine (service/engine_client.py) runs them."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from models.generation import SamplingParams
from models.pplug import DEFAULT_QUERY


@dataclass
class UserInput:
    """The user side of one request: cached (or recomputed) user tokens, or none (cold start)."""

    user_tokens: np.ndarray | None  # (L, Du) float16; mode pplug: (N, Dt) history embeddings

    @property
    def personalized(self) -> bool:
        return self.user_tokens is not None


ScoreTask = Literal["next_item", "genre"]


@dataclass
class ScoreJob:
    user: UserInput
    k: int
    exclude: set[int] = field(default_factory=set)  # item vocabulary ids not to recommend
    task: ScoreTask = "next_item"  # which instruction is scored (each head was trained on its own)
    seen: set[int] = field(default_factory=set)  # item vocabulary ids of the user's history: they get
    # the encoder's learned seen-item score when the checkpoint has one (TorchEngine.seen_bias)


@dataclass
class ScoreResult:
    items: list[tuple[int, float]]  # (item vocabulary id, score) best first
    categories: list[tuple[int, float]]  # (category vocabulary id, probability) best first


@dataclass
class GenerateJob:
    user: UserInput
    prompt: list[int]
    params: SamplingParams
    on_text: Callable[[str], None] | None = None  # called from the engine thread with each new piece
    query: str = DEFAULT_QUERY  # PPlug's input text x, which weighs the history (mode pplug only)
    cancelled: threading.Event = field(default_factory=threading.Event)  # set: stop at the next step

    def cancel(self) -> None:
        """Stop this job: not started -> never run; decoding -> no forward pass after the current one."""
        self.cancelled.set()


@dataclass
class GenerateResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
