"""Fixtures of the opt-in vLLM tests (`make test-vllm`, run by the vLLM environment's python): the
real backbone, a soft-prompt checkpoint on it, the PyTorch engine on that checkpoint, one vLLM engine
per module (its engine core starts once: tens of seconds on CPU), a Redis, and the generation server
app on the vLLM engine with one stored user (`served_generator`). Nothing is downloaded
(HF_HUB_OFFLINE=1). Test modules skip themselves where vllm is not importable."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from service.engine import TorchEngine  # noqa: E402
from service.settings import Settings  # noqa: E402
from tests.conftest import redis_url  # noqa: E402, F401  (the default suite's real Redis fixture)
from tests_vllm.checkpoints import build_soft_prompt_checkpoint  # noqa: E402

DEFAULT_BACKBONE = Path.home() / ".cache" / "userllm" / "backbones" / "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def backbone_dir() -> Path:
    path = Path(os.environ.get("USERLLM_BACKBONE_DIR", DEFAULT_BACKBONE))
    if not (path / "config.json").is_file():
        pytest.fail(f"no converted backbone in {path}: run `make backbone` or set USERLLM_BACKBONE_DIR")
    return path


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory, backbone_dir: Path) -> Path:
    return build_soft_prompt_checkpoint(tmp_path_factory.mktemp("ckpt") / "userllm", backbone_dir)


@pytest.fixture(scope="session")
def torch_engine(checkpoint_dir: Path, backbone_dir: Path) -> TorchEngine:
    return TorchEngine.load(checkpoint_dir, backbone_dir, "cpu")


def vllm_settings(checkpoint_dir: Path, backbone_dir: Path, **overrides: object) -> Settings:
    """Settings of a small vLLM engine: 8 rows, short prompts, 0.5 GiB of KV cache."""
    base: dict[str, object] = dict(
        engine="vllm",
        backbone_dir=backbone_dir,
        checkpoint_dir=checkpoint_dir.parent,
        device="cpu",
        max_batch_size=8,
        max_prompt_tokens=256,
        max_new_tokens_limit=64,
        vllm_kv_cache_gib=0.5,
        max_wait_ms=2,
    )
    return Settings(**(base | overrides))  # type: ignore[arg-type]


@asynccontextmanager
async def served_generator(
    settings: Settings, user_tokens: np.ndarray, model_version: str, n_events: int = 1
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the generation server app (`settings`, USERLLM_ENGINE=vllm: its lifespan starts
    vLLM) with user "u1" stored in Redis as the worker stores it: `n_events` events and `user_tokens`
    (the user tokens, or a PPlug checkpoint's history embeddings) of `model_version`. Every key of the
    settings' prefix is deleted afterwards."""
    from asgi_lifespan import LifespanManager

    from service import generator
    from service.keys import Keys
    from service.redis_conn import create_redis
    from service.user_store import StoredEvent, UserUpdate, write_updates

    keys = Keys(settings.key_prefix, settings.num_shards)
    redis = create_redis(settings.redis_url, "test")
    events = [StoredEvent(f"e{n}", str(n + 1), 1000.0 + n, "rating", 4.0, None) for n in range(n_events)]
    update = UserUpdate(
        user_id="u1", expected_rev="", add=events, drop=[], user_tokens=user_tokens,
        model_version=model_version, n_events_encoded=n_events, last_event_key=events[-1].key,
        state_kv=None, state_keys=[], n_unknown=0, new_items=[(e.item_id, e.timestamp) for e in events],
    )  # fmt: skip
    assert await write_updates(redis, keys, [update]) == [True]
    app = generator.create_app(settings)
    try:
        async with LifespanManager(app, startup_timeout=600, shutdown_timeout=120) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=300) as client:
                yield client
    finally:
        async for key in redis.scan_iter(match=f"{settings.key_prefix}:*"):
            await redis.delete(key)
        await redis.aclose()
