"""Request and response bodies of the public API (pydantic v2)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Id = Field(min_length=1, max_length=128, pattern=r"^[^\s{}]+$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- events ---


class EventIn(Strict):
    """One user event. `rating` or `event_type` says what happened; `timestamp` is unix seconds."""

    user_id: str = Id
    item_id: str = Id
    timestamp: float = Field(ge=0, le=32503680000, description="unix seconds (UTC)")
    event_type: Literal["rating", "view", "click", "purchase", "review"] = "rating"
    rating: float | None = Field(None, ge=0, le=10)
    text: str | None = Field(None, max_length=20_000)
    event_id: str | None = Field(None, min_length=1, max_length=128, description="client id, idempotency")

    @field_validator("user_id", "item_id", mode="before")
    @classmethod
    def _ints_as_strings(cls, value: object) -> object:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _rating_needs_type(self) -> EventIn:
        if self.event_type == "rating" and self.rating is None:
            raise ValueError("rating is required when event_type is 'rating'")
        return self


class EventBatch(Strict):
    events: list[EventIn] = Field(min_length=1, max_length=1000)


class EventsAccepted(BaseModel):
    accepted: int
    unknown_items: int | None = Field(
        description="events whose item is not in the model's catalogue (kept); null while the catalogue "
        "is unavailable (generation server down; the worker still counts them per user)"
    )
    duplicates: int = Field(description="events whose event_id was seen before (not queued again)")


# --- recommend ---


class RecommendRequest(Strict):
    user_id: str = Id
    k: int = Field(10, ge=1, le=100)
    exclude_seen: bool = True


class RecommendedItem(BaseModel):
    item_id: str
    title: str
    score: float
    rank: int


class EmbeddingInfo(BaseModel):
    personalized: bool = Field(description="false when the user has no events: a non-personalized answer")
    model_version: str
    updated_at: float | None = None


class RecommendResponse(EmbeddingInfo):
    user_id: str
    items: list[RecommendedItem]


# --- generate ---


class GenerateRequest(Strict):
    user_id: str = Id
    task: Literal["genre", "review", "chat"]
    prompt: str | None = Field(
        None,
        max_length=4000,
        description="task 'chat': the message, at most 4,000 characters and, once in the chat template, "
        "USERLLM_MAX_PROMPT_TOKENS tokens (default 1,024), with prompt + max_new_tokens within the model's "
        "context; 422 naming `prompt` otherwise",
    )
    item_id: str | None = Field(None, min_length=1, max_length=128)
    rating: float | None = Field(None, ge=0, le=10, description="task 'review': the rating to write for")
    max_new_tokens: int = Field(64, ge=1, le=256)
    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float = Field(0.9, gt=0, le=1)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    repetition_penalty: float = Field(  # default = models.generation.SERVED_REPETITION_PENALTY (tested)
        1.1, ge=1, le=2, description="> 1 discourages tokens already in the prompt or the output (CTRL)"
    )
    stream: bool = False

    @field_validator("item_id", mode="before")
    @classmethod
    def _int_item(cls, value: object) -> object:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _task_inputs(self) -> GenerateRequest:
        if self.task == "review" and self.item_id is None:
            raise ValueError("item_id is required for task 'review'")
        if self.task == "chat" and not self.prompt:
            raise ValueError("prompt is required for task 'chat'")
        return self


class GenerateResponse(EmbeddingInfo):
    user_id: str
    task: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    genres: list[tuple[str, float]] | None = Field(None, description="task 'genre': top genres + probability")


# --- users ---


class UserInfo(BaseModel):
    user_id: str
    events_seen: int
    last_event_time: float | None
    unknown_items: int
    embedding_model_version: str | None
    embedding_updated_at: float | None
    embedding_age_s: float | None
    embedding_n_events: int | None


class UserForgotten(BaseModel):
    user_id: str
    keys_removed: int = Field(description="Redis keys removed (history, state, tokens, de-duplication)")
