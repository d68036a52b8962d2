"""The generation server with USERLLM_ENGINE=vllm, in process (its lifespan starts vLLM) against a
real Redis: /v1/info names the engine; a user whose tokens are cached gets a personalized greedy chat
answer decoded by vLLM from the soft prompt, a cold-start user another one, each the text the PyTorch
engine decodes greedily for the same user and prompt (the two engines' log-probs agree to ~1e-4 here,
tests_vllm/test_vllm_engine.py, far from any tie on these prompts); the streamed pieces add up to the
same text; /v1/recommend and genre still score on the PyTorch path.

Repetition penalty 1.0: with the served default (1.1) this prompt's greedy answer is the same with
and without the user's tokens on both engines, so it could not show that the tokens reach vLLM."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (make test-vllm builds its environment)")

import pytest_asyncio  # noqa: E402

from models.generation import SamplingParams  # noqa: E402
from service.engine import GenerateJob, UserInput  # noqa: E402
from tests_vllm.conftest import served_generator, vllm_settings  # noqa: E402

pytestmark = pytest.mark.asyncio(loop_scope="module")
CHAT = {"task": "chat", "prompt": "Suggest a film for tonight.", "max_new_tokens": 12, "temperature": 0,
        "repetition_penalty": 1.0}  # fmt: skip
TOKENS = np.random.default_rng(7).standard_normal((16, 32)).astype(np.float16)  # u1's cached user tokens


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(checkpoint_dir, backbone_dir, torch_engine, redis_url):
    """The generator app with the vLLM engine, and a user "u1" with cached tokens."""
    settings = vllm_settings(
        checkpoint_dir, backbone_dir, redis_url=redis_url, key_prefix=f"ullmvllm-{uuid.uuid4().hex[:8]}"
    )
    assert TOKENS.shape == torch_engine.user_token_shape
    async with served_generator(settings, TOKENS, torch_engine.model_version) as client:
        yield client


async def test_info_and_readiness_name_the_vllm_engine(server) -> None:
    info = (await server.get("/v1/info")).json()
    assert info["engine"] == "vllm" and info["mode"] == "soft_prompt"
    assert (await server.get("/readyz")).status_code == 200


async def test_greedy_chat_is_decoded_from_the_users_soft_prompt(server, torch_engine) -> None:
    personal = (await server.post("/v1/generate", json={"user_id": "u1", **CHAT})).json()
    cold = (await server.post("/v1/generate", json={"user_id": "nobody", **CHAT})).json()
    assert personal["personalized"] is True and cold["personalized"] is False
    assert 0 < personal["completion_tokens"] <= 12 and 0 < cold["completion_tokens"] <= 12
    assert personal["text"] != cold["text"]  # the user tokens reach vLLM
    prompt = torch_engine.chat_prompt(CHAT["prompt"])
    params = SamplingParams(max_new_tokens=12, repetition_penalty=1.0)
    expected = torch_engine.generate_batch(
        [GenerateJob(UserInput(TOKENS), prompt, params), GenerateJob(UserInput(None), prompt, params)]
    )
    assert [personal["text"], cold["text"]] == [r.text for r in expected]
    assert [personal["completion_tokens"], cold["completion_tokens"]] == [
        r.completion_tokens for r in expected
    ]
    again = (await server.post("/v1/generate", json={"user_id": "u1", **CHAT})).json()
    assert again["text"] == personal["text"]  # greedy: the same answer


async def test_streamed_pieces_add_up_to_the_answer(server) -> None:
    whole = (await server.post("/v1/generate", json={"user_id": "u1", **CHAT})).json()
    async with server.stream("POST", "/v1/generate", json={"user_id": "u1", **CHAT, "stream": True}) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        raw = (await resp.aread()).decode()
    frames = [f for f in raw.split("\n\n") if f.strip()]
    assert frames[-1].startswith("event: done") and len(frames) > 2
    done = json.loads(frames[-1].split("data: ", 1)[1])
    pieces = "".join(json.loads(f.split("data: ", 1)[1])["text"] for f in frames[:-1])
    assert pieces.strip() == done["text"] == whole["text"]


async def test_recommend_and_genre_stay_on_the_pytorch_path(server) -> None:
    rec = (await server.post("/v1/recommend", json={"user_id": "u1", "k": 3})).json()
    assert rec["personalized"] is True and len(rec["items"]) == 3
    genre = (await server.post("/v1/generate", json={"user_id": "u1", "task": "genre"})).json()
    assert genre["genres"] and genre["completion_tokens"] == 0
