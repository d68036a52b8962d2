"""PPlug served online: the worker caches a user's history as sentence embeddings (all-MiniLM-L6-v2,
real), the generation server weighs them against each request's input text, through the gateway on a
real Redis, with a tiny PPlug checkpoint (untrained aggregator: the answers depend on the user)."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import torch
from asgi_lifespan import LifespanManager
from llm_fixtures import real_backbone_dir  # noqa: F401
from service_fixtures import WINDOW, build_tiny_stack

from models.pplug import REVIEW_QUERY, SentenceEncoder, item_text
from service import gateway, generator
from service.engine import TorchEngine, UserInput
from service.keys import Keys
from service.pplug_runtime import PPlugRuntime, load_user_runtime
from service.redis_conn import create_redis
from service.settings import Settings
from service.streams import ensure_groups, read_new
from service.user_store import StoredEvent, read_tokens
from service.worker import EncoderWorker

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def pplug_stack(tmp_path_factory, real_backbone_dir):  # noqa: F811
    return build_tiny_stack(tmp_path_factory.mktemp("pplug"), real_backbone_dir, mode="pplug")


@pytest.fixture(scope="module")
def runtime(pplug_stack) -> PPlugRuntime:
    loaded = load_user_runtime(pplug_stack[1])
    assert isinstance(loaded, PPlugRuntime)
    return loaded


def history(items: list[int]) -> list[StoredEvent]:
    return [StoredEvent(f"e{n}", str(i), 1000.0 + n, "rating", 4.0, None) for n, i in enumerate(items)]


def test_the_cached_vectors_are_the_newest_items_texts_as_training_embeds_them(runtime) -> None:
    items = [1 + i % 12 for i in range(WINDOW + 5)]
    encoded = runtime.encode_full([history(items)])[0]
    newest = [str(i) for i in items[-WINDOW:]]
    assert encoded.user_tokens.shape == (WINDOW, 384) and encoded.user_tokens.dtype == np.float16
    assert encoded.n_events == WINDOW and encoded.state is None and encoded.mode == "full"
    texts = [item_text(runtime.codec.title(i), runtime._categories(i)) for i in newest]
    assert texts[0] == f"Movie {newest[0]} ({runtime.codec.catalogue[newest[0]]['categories'][0]})"
    with torch.inference_mode():
        expected = SentenceEncoder().encode(texts).numpy()
    np.testing.assert_allclose(encoded.user_tokens.astype(np.float32), expected, atol=2e-3)
    assert len(runtime._items) == 12  # each item embedded once
    assert runtime.accepts((3, 384)) and not runtime.accepts((WINDOW + 1, 384))
    assert not runtime.accepts((16, 32))  # the user tokens of another mode


def test_the_engine_weighs_the_history_by_the_requests_input(pplug_stack) -> None:
    backbone, ckpt = pplug_stack
    engine = TorchEngine.load(ckpt, backbone, "cpu")
    assert isinstance(engine.tower, PPlugRuntime)
    user = UserInput(engine.tower.encode_full([history([1, 2, 3, 4, 5, 6])])[0].user_tokens)
    cold = UserInput(None)
    review = engine._context([user, cold], queries=[REVIEW_QUERY, REVIEW_QUERY])
    expected = engine.model.llm.prepare_pplug_context(
        engine.tower.queries([REVIEW_QUERY]), torch.from_numpy(user.user_tokens.astype(np.float32))[None]
    )
    torch.testing.assert_close(review.prefix[:1], expected.prefix)
    assert review.prefix_mask.tolist() == [[True, True], [True, False]]  # the cold row: no personal slot
    other = engine._context([user], queries=["Which action movie should I watch?"])
    assert not torch.allclose(other.prefix[0, 1], review.prefix[0, 1])  # input-aware aggregation
    scores, _ = engine._score([user, cold], "next_item")
    assert not torch.allclose(scores[0], scores[1])  # the history changes the recommendation
    alone, _ = engine._score([cold], "next_item")  # a cold user scores the same alone as in a batch
    torch.testing.assert_close(alone[0], scores[1], atol=1e-4, rtol=1e-4)


@pytest.fixture
def settings(pplug_stack, redis_url, key_prefix, clean_redis) -> Settings:
    backbone, ckpt = pplug_stack
    return Settings(
        redis_url=redis_url, key_prefix=key_prefix, num_shards=2, backbone_dir=backbone,
        checkpoint_dir=ckpt.parent, device="cpu", max_wait_ms=2, auth_disabled=True,
    )  # fmt: skip


async def test_events_to_personalized_answers_through_the_stack(settings, runtime) -> None:
    async with LifespanManager(generator.create_app(settings)) as gen:
        transport = httpx.ASGITransport(app=gen.app)
        async with LifespanManager(gateway.create_app(settings, generator_transport=transport)) as gw:
            redis = create_redis(settings.redis_url, "test")
            keys = Keys(settings.key_prefix, settings.num_shards)
            await ensure_groups(redis, keys)
            worker = EncoderWorker(redis, keys, runtime, consumer="test", block_ms=10)
            gw_transport = httpx.ASGITransport(app=gw.app)
            async with httpx.AsyncClient(transport=gw_transport, base_url="http://gw") as c:
                body = {"events": [{"user_id": "ana", "item_id": str(i), "timestamp": 100 + i, "rating": 5}
                                   for i in (3, 6, 9, 12, 15)]}  # fmt: skip
                assert (await c.post("/events", json=body)).status_code == 202
                while batch := await read_new(redis, keys, "test", count=100, block_ms=10):
                    await worker.process(batch)
                cached = await read_tokens(redis, keys, "ana")
                assert cached is not None and cached.user_tokens.shape == (5, 384)
                np.testing.assert_array_equal(
                    cached.user_tokens, runtime.item_vectors(["3", "6", "9", "12", "15"])
                )
                ana = (await c.post("/recommend", json={"user_id": "ana", "k": 5})).json()
                cold = (await c.post("/recommend", json={"user_id": "nobody", "k": 5})).json()
                assert ana["personalized"] and not cold["personalized"]
                assert [i["score"] for i in ana["items"]] != [i["score"] for i in cold["items"]]
                assert not {i["item_id"] for i in ana["items"]} & {"3", "6", "9", "12", "15"}  # seen
                review = await c.post("/generate", json={"user_id": "ana", "task": "review", "item_id": "2",
                                                         "max_new_tokens": 6, "temperature": 0})  # fmt: skip
                assert review.status_code == 200 and review.json()["personalized"]
                assert review.json()["completion_tokens"] >= 1
            await redis.aclose()


def test_the_served_model_is_chosen_by_configuration(tmp_path, monkeypatch) -> None:
    from pydantic import ValidationError

    monkeypatch.delenv("USERLLM_MODEL", raising=False)
    assert Settings(checkpoint_dir=tmp_path).userllm_checkpoint == tmp_path / "userllm"
    monkeypatch.setenv("USERLLM_MODEL", "pplug")
    assert Settings(checkpoint_dir=tmp_path).userllm_checkpoint == tmp_path / "pplug"
    with pytest.raises(ValidationError, match="model"):
        Settings(model="../elsewhere")


def test_the_stack_names_the_training_command_of_a_missing_pplug_checkpoint(tmp_path, monkeypatch, capsys):
    from service import stack
    from service.settings import get_settings

    monkeypatch.setenv("USERLLM_CHECKPOINT_DIR", str(tmp_path))
    monkeypatch.setenv("USERLLM_MODEL", "pplug")
    get_settings.cache_clear()
    try:
        assert stack.main([]) == 2
    finally:
        get_settings.cache_clear()
    err = capsys.readouterr().err
    assert f"no USER-LLM checkpoint at {tmp_path / 'pplug'}" in err and "`make train-pplug`" in err
