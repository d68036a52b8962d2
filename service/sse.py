"""Server-sent events: token pieces as `data:` lines, then one `event: done` with the full response."""

from __future__ import annotations

import json
from typing import Any


def sse(data: dict[str, Any], event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
