"""Request and response bodies of the public API (pydantic v2).

Request bodies are strict (no unknown fields, no "5" for 5 or 1 for true): what they accept is what their
published JSON schema says, rules across fields included (`if`/`then` in the schema).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    StringConstraints,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)

# An id has no whitespace, no control character and no brace. The characters are spelled out: `\s` is
# not the same set in pydantic's regex engine (Unicode White_Space, with U+0085) and in the JSON Schema
# one clients and validators use (ECMA-262, without U+0085, with U+FEFF).
ID_PATTERN = r"^[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff{}]+$"
MAX_INT_ID = 2**53 - 1  # the largest integer a JSON number carries exactly (JavaScript's MAX_SAFE_INTEGER)
MIN_TEMPERATURE = 1e-4  # sampling temperatures below this decode greedily
_ID_STRING = {"type": "string", "minLength": 1, "maxLength": 128, "pattern": ID_PATTERN}


def _whole_as_int(value: object) -> object:
    """A float with no fractional part is an integer, as in JSON Schema (`3.0` -> 3)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _int_as_string(value: object) -> object:
    """An integer id in [0, MAX_INT_ID] is taken as its decimal string (`3` -> "3")."""
    value = _whole_as_int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_INT_ID:
        return str(value)
    return value


Int = Annotated[int, BeforeValidator(_whole_as_int)]
Id = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=ID_PATTERN)]
IdOrInt = Annotated[
    Id,
    BeforeValidator(_int_as_string),
    WithJsonSchema({"anyOf": [_ID_STRING, {"type": "integer", "minimum": 0, "maximum": MAX_INT_ID}]}),
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# --- events ---


class EventIn(Strict):
    """One user event. `rating` or `event_type` says what happened; `timestamp` is unix seconds."""

    model_config = ConfigDict(
        json_schema_extra={  # holds when event_type is absent (its default) or "rating"
            "if": {"properties": {"event_type": {"const": "rating"}}},
            "then": {"required": ["rating"], "properties": {"rating": {"type": "number"}}},
        }
    )

    user_id: IdOrInt
    item_id: IdOrInt
    timestamp: float = Field(ge=0, le=32503680000, description="unix seconds (UTC)")
    event_type: Literal["rating", "view", "click", "purchase", "review"] = "rating"
    rating: float | None = Field(None, ge=0, le=10, validate_default=True)
    text: str | None = Field(None, max_length=20_000)
    event_id: str | None = Field(None, min_length=1, max_length=128, description="client id, idempotency")

    @field_validator("rating")
    @classmethod
    def _rating_needs_type(cls, rating: float | None, info: ValidationInfo) -> float | None:
        if rating is None and info.data.get("event_type") == "rating":
            raise ValueError("rating is required when event_type is 'rating'")
        return rating


class EventBatch(Strict):
    events: list[EventIn] = Field(min_length=1, max_length=1000)


# The body of POST /events as published: one event or a batch. The route parses it with
# `gateway.parse_events`, whose errors name the field inside the event or the batch.
EventsBody = Annotated[Any, PlainValidator(lambda body: body, json_schema_input_type=EventIn | EventBatch)]


class EventsAccepted(BaseModel):
    accepted: int
    unknown_items: int | None = Field(
        description="events whose item is not in the model's catalogue (kept); null while the catalogue "
        "is unavailable (generation server down; the worker still counts them per user)"
    )
    duplicates: int = Field(description="events whose event_id was seen before (not queued again)")


# --- recommend ---


class RecommendRequest(Strict):
    user_id: Id
    k: Int = Field(10, ge=1, le=100)
    exclude_seen: bool = Field(
        True,
        description="leave out items in the user's history; false: rank them too, with the encoder's "
        "learned seen-item score when the checkpoint has one",
    )


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
    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                {
                    "if": {"properties": {"task": {"const": "review"}}},
                    "then": {"required": ["item_id"], "properties": {"item_id": {"not": {"type": "null"}}}},
                },
                {
                    "if": {"properties": {"task": {"const": "chat"}}},
                    "then": {
                        "required": ["prompt"],
                        "properties": {"prompt": {"type": "string", "minLength": 1}},
                    },
                },
            ]
        }
    )

    user_id: Id
    task: Literal["genre", "review", "chat", "suggest"] = Field(
        description="'genre': the favourite genres (category head); 'review': a review of `item_id`; "
        "'chat': an answer to `prompt`; 'suggest': the item the next-item head ranks first for the user "
        "(history excluded), and the LLM's answer to `prompt` (default: \"Suggest a movie for me tonight "
        "and say why.\") given that item's catalogue entry"
    )
    prompt: str | None = Field(
        None,
        max_length=4000,
        validate_default=True,
        description="task 'chat' (required) and 'suggest' (optional): the message, at most 4,000 characters "
        "and, once in the chat template, USERLLM_MAX_PROMPT_TOKENS tokens (default 1,024), with prompt + "
        "max_new_tokens within the model's context; 422 naming `prompt` otherwise",
    )
    item_id: IdOrInt | None = Field(None, validate_default=True)
    rating: float | None = Field(None, ge=0, le=10, description="task 'review': the rating to write for")
    max_new_tokens: Int = Field(64, ge=1, le=256)
    temperature: float = Field(0.7, ge=0, le=2, description=f"0 (or below {MIN_TEMPERATURE}): greedy")
    top_p: float = Field(0.9, gt=0, le=1)
    # constraints before the validator: after it, pydantic publishes them as "ge"/"le" inside the anyOf
    seed: Annotated[int, Field(ge=0, le=2**31 - 1), BeforeValidator(_whole_as_int)] | None = None
    repetition_penalty: float = Field(  # default = models.generation.SERVED_REPETITION_PENALTY (tested)
        1.1, ge=1, le=2, description="> 1 discourages tokens already in the prompt or the output (CTRL)"
    )
    stream: bool = False

    @field_validator("temperature")
    @classmethod
    def _tiny_is_greedy(cls, temperature: float) -> float:
        # logits / 1e-108 overflow float32 (NaN probabilities); greedy is the limit of a small temperature
        return 0.0 if temperature < MIN_TEMPERATURE else temperature

    @field_validator("prompt")
    @classmethod
    def _chat_needs_prompt(cls, prompt: str | None, info: ValidationInfo) -> str | None:
        if not prompt and info.data.get("task") == "chat":
            raise ValueError("prompt is required for task 'chat'")
        return prompt

    @field_validator("item_id")
    @classmethod
    def _review_needs_item(cls, item_id: str | None, info: ValidationInfo) -> str | None:
        if item_id is None and info.data.get("task") == "review":
            raise ValueError("item_id is required for task 'review'")
        return item_id


def _sse_event(name: str, data_schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "if": {"properties": {"event": {"const": name}}},
        "then": {
            "properties": {"data": {"contentMediaType": "application/json", "contentSchema": data_schema}}
        },
    }


# The 200 of POST /generate when `stream` is true, next to the JSON GenerateResponse. `itemSchema` is one
# event (OpenAPI 3.2, as FastAPI writes its own SSE routes); `event` is "message" when the frame has none.
SSE_OK: dict[int | str, dict[str, Any]] = {
    200: {
        "description": 'GenerateResponse; with `stream`, server-sent events: `data: {"text": piece}` frames, '
        "then `event: done` with the GenerateResponse, or `event: error` with the error envelope",
        "content": {
            "text/event-stream": {
                "itemSchema": {
                    "type": "object",
                    "required": ["data"],
                    "properties": {
                        "event": {"enum": ["message", "done", "error"]},
                        "data": {"type": "string", "contentMediaType": "application/json"},
                    },
                    "allOf": [
                        _sse_event(
                            "message",
                            {
                                "type": "object",
                                "required": ["text"],
                                "properties": {"text": {"type": "string"}},
                            },
                        ),
                        _sse_event("done", {"$ref": "#/components/schemas/GenerateResponse"}),
                        _sse_event("error", {"$ref": "#/components/schemas/ErrorEnvelope"}),
                    ],
                }
            }
        },
    }
}


class GenreProbability(BaseModel):
    genre: str
    probability: float = Field(description="0 to 1")


class GenerateResponse(EmbeddingInfo):
    user_id: str
    task: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    genres: list[GenreProbability] | None = Field(
        None, description="task 'genre': the top genres, most probable first"
    )
    item: RecommendedItem | None = Field(
        None, description="task 'suggest': the item the answer is given, ranked first of the unseen items"
    )


class GeneratorInfo(BaseModel):
    """GET /v1/info of the generation server."""

    model_version: str
    device: str
    mode: str = Field(description="how the user tokens reach the LLM, e.g. cross_attention")
    engine: str = Field("torch", description="the generation engine: torch or vllm (USERLLM_ENGINE)")
    items: list[str] = Field(description="the item ids of the model's catalogue")


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
