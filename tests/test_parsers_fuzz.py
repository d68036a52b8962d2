"""Property tests (hypothesis) of the two parsers that take outside data: `gateway.parse_events` (any
JSON body of POST /events) and `streams.decode_entry` (any fields of a Redis stream entry).

Followed: the hypothesis docs ("What you can generate and how": `st.recursive` for JSON values,
`st.from_regex`), with `derandomize=True` so that a run is reproducible.
"""

from __future__ import annotations

import asyncio
import json
import math

import pytest
from fastapi.exceptions import RequestValidationError
from hypothesis import given, settings
from hypothesis import strategies as st

from service.errors import ValidationErrorEnvelope, install_error_handlers
from service.gateway import parse_events
from service.schemas import EventIn
from service.streams import _fields, decode_entry

SETTINGS = settings(max_examples=400, deadline=None, derandomize=True, database=None)
EVENT_FIELDS = ["user_id", "item_id", "timestamp", "event_type", "rating", "text", "event_id"]

# --- strategies ---

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and ±Infinity too: Python's json module (and so FastAPI) reads them
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.sampled_from(EVENT_FIELDS), inner, max_size=5)
    ),
    max_leaves=20,
)
field_values = {
    "user_id": st.from_regex(r"[a-z0-9]{1,6}", fullmatch=True) | st.integers(-5, 2**54) | json_scalars,
    "item_id": st.integers(0, 50) | st.floats(0, 50) | json_scalars,
    "timestamp": st.floats(-1, 4e10) | st.integers(-1, 4 * 10**10) | json_scalars,
    "event_type": st.sampled_from(["rating", "view", "click", "purchase", "review", "poem"]),
    "rating": st.none() | st.floats(-1, 11) | json_scalars,
    "text": st.none() | st.text(max_size=20),
    "event_id": st.none() | st.text(max_size=10),
}
event_like = st.fixed_dictionaries(
    {"user_id": field_values["user_id"], "item_id": field_values["item_id"]},
    optional={
        **{k: v for k, v in field_values.items() if k not in ("user_id", "item_id")},
        "colour": json_scalars,
    },
)
bodies = (
    json_values
    | event_like
    | st.builds(lambda events: {"events": events}, st.lists(event_like | json_values, max_size=4))
)


def render_422(exc: RequestValidationError) -> dict:
    """The body the apps answer for `exc` (their error handler, as installed)."""
    from fastapi import FastAPI

    app = FastAPI()
    install_error_handlers(app)
    handler = app.exception_handlers[RequestValidationError]
    response = asyncio.run(handler(None, exc))  # type: ignore[arg-type]
    assert response.status_code == 422
    return json.loads(response.body)


# --- gateway.parse_events ---


@SETTINGS
@given(body=bodies)
def test_parse_events_takes_any_json_or_raises_a_validation_error(body) -> None:
    try:
        events = parse_events(body)
    except RequestValidationError as exc:
        rendered = ValidationErrorEnvelope.model_validate(render_422(exc))
        assert all(f.field and f.field in rendered.detail for f in rendered.fields), rendered
        return
    assert events and all(isinstance(e, EventIn) for e in events)
    for e in events:
        assert math.isfinite(e.timestamp) and 0 <= e.timestamp
        assert e.rating is None or 0 <= e.rating <= 10
        assert e.rating is not None or e.event_type != "rating"


def test_parse_events_names_the_field_of_the_batch() -> None:
    good = {"user_id": "u", "item_id": 1, "timestamp": 1, "rating": 4}
    with pytest.raises(RequestValidationError) as info:
        parse_events({"events": [good, {**good, "timestamp": float("nan")}]})
    assert [f["field"] for f in render_422(info.value)["fields"]] == ["events.1.timestamp"]


# --- streams.decode_entry ---

field_bytes = st.binary(max_size=12) | st.sampled_from(
    [b"", b"nan", b"inf", b"-inf", b"1e999", b"3.5", b"12", b"rating", b"\xff\xfe"]
)
entry_fields = st.none() | st.dictionaries(
    st.sampled_from([b"u", b"i", b"t", b"y", b"r", b"x", b"e"]) | st.binary(max_size=3),
    field_bytes,
    max_size=9,
)
entry_ids = st.builds(lambda ms, seq: f"{ms}-{seq}", st.integers(0, 2**48), st.integers(0, 99))


@SETTINGS
@given(entry_id=entry_ids | entry_ids.map(str.encode), fields=entry_fields)
def test_decode_entry_never_raises(entry_id, fields) -> None:
    event = decode_entry("s0", entry_id, fields)
    assert event.entry_id == (entry_id.decode() if isinstance(entry_id, bytes) else entry_id)
    if event.error is not None:  # undecodable: kept whole for the dead-letter stream
        assert event.raw is not None and len(event.raw) == len(fields or {})
        json.dumps(event.raw)
        return
    assert fields and {b"u", b"i", b"t", b"y", b"r", b"x", b"e"} <= fields.keys()
    assert math.isfinite(event.timestamp)
    assert event.rating is None or math.isfinite(event.rating)
    json.loads(event.packed())


@SETTINGS
@given(body=event_like)
def test_published_events_decode_to_themselves(body) -> None:
    try:
        [event] = parse_events(body)
    except RequestValidationError:
        return
    fields = {k.encode(): v.encode() for k, v in _fields(event).items()}
    decoded = decode_entry("s0", b"1-0", fields)
    assert decoded.error is None
    assert (decoded.user_id, decoded.item_id, decoded.timestamp, decoded.event_type, decoded.rating) == (
        event.user_id,
        event.item_id,
        event.timestamp,
        event.event_type,
        event.rating,
    )
    assert decoded.text == (event.text or None) and decoded.event_id == event.event_id


@pytest.mark.parametrize("field, value", [(b"t", b"nan"), (b"t", b"inf"), (b"r", b"nan"), (b"r", b"-inf")])
def test_decode_entry_rejects_numbers_that_are_not_finite(field: bytes, value: bytes) -> None:
    fields = {b"u": b"u1", b"i": b"3", b"t": b"10.0", b"y": b"rating", b"r": b"4.0", b"x": b"", b"e": b""}
    event = decode_entry("s0", b"1-0", {**fields, field: value})
    assert event.error is not None and "finite" in event.error


def test_decode_entry_keeps_every_undecodable_field() -> None:
    event = decode_entry("s0", b"1-0", {b"\x80": b"a", b"\x81": b"\xff"})  # were both "\ufffd"
    assert event.error is not None and len(event.raw or {}) == 2
    assert {k.encode(errors="surrogateescape") for k in event.raw or {}} == {b"\x80", b"\x81"}
