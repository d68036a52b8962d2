"""Cross-attention inside vLLM (the `vllm_userllm` general plugin, experimental) against the PyTorch
engine on the same cross-attention checkpoint (real SmolLM2-135M, gates open, float32 on both sides).

`VllmEngine` exports the checkpoint into a vLLM model folder (`vllm_userllm.export`, in `cache_dir`),
vLLM loads it through the plugin's entry point (installed with the project: `make vllm-env`), and two
users and a cold-start user decode at once (the user tokens, zeros for the cold one, are the encoder
input of an encoder-decoder request, cached per request by vLLM's cross-attention). As in
test_vllm_engine.py: vLLM's top-20 log-probs of every greedy step against the PyTorch model run over
the prompt plus vLLM's tokens with the user's context (none for the cold user: the bare backbone);
the other contexts' distributions are far from it. Over HTTP, the generation server with
USERLLM_ENGINE=vllm on that checkpoint (real Redis, a user with cached tokens) answers greedy chat
requests with the PyTorch engine's texts.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import numpy as np
import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (make test-vllm builds its environment)")

import pytest_asyncio  # noqa: E402
import torch  # noqa: E402

from models.generation import SamplingParams  # noqa: E402
from service.engine import GenerateJob, TorchEngine, UserInput  # noqa: E402
from service.vllm_engine import VllmEngine  # noqa: E402
from tests_vllm.checkpoints import build_cross_attention_checkpoint  # noqa: E402
from tests_vllm.conftest import served_generator, vllm_settings  # noqa: E402
from tests_vllm.test_vllm_engine import MIN_OVERLAP, STEPS, TOL, TOP_K, compare, torch_logprobs  # noqa: E402

pytestmark = pytest.mark.asyncio(loop_scope="module")
log = logging.getLogger("userllm.test_vllm")
# u1's cached tokens, larger than the unit-normal users above: at unit scale this untrained checkpoint's
# greedy answer to the HTTP test's prompt is the cold start's, so it could not show the tokens arrive
TOKENS_U1 = (8 * np.random.default_rng(11).standard_normal((16, 32))).astype(np.float16)


@pytest.fixture(scope="module")
def xattn(tmp_path_factory, backbone_dir):
    """(checkpoint folder, vLLM model cache folder, PyTorch engine) of one cross-attention checkpoint."""
    root = tmp_path_factory.mktemp("xattn")
    ck_dir = build_cross_attention_checkpoint(root / "userllm", backbone_dir)
    return ck_dir, root / "cache", TorchEngine.load(ck_dir, backbone_dir, "cpu")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engines(xattn, backbone_dir):
    """(PyTorch engine, vLLM engine) on one cross-attention checkpoint."""
    ck_dir, cache_dir, torch_engine = xattn
    engine = VllmEngine.start(torch_engine, vllm_settings(ck_dir, backbone_dir, cache_dir=cache_dir))
    assert (cache_dir / "vllm-models" / torch_engine.model_version / "config.json").is_file()
    yield torch_engine, engine
    await engine.stop()


async def test_cross_attention_distributions_match_the_pytorch_engine(engines) -> None:
    torch_engine, engine = engines
    model = torch_engine.model
    rng = np.random.default_rng(7)
    users = [rng.standard_normal(torch_engine.user_token_shape).astype(np.float16) for _ in range(2)]
    prompt = torch_engine.chat_prompt("Suggest a film for tonight.")
    params = SamplingParams(max_new_tokens=STEPS)
    jobs = [GenerateJob(UserInput(u), prompt, params) for u in (*users, None)]
    outs = await asyncio.gather(
        *(
            engine.decode(prompt, None, params, user_tokens=engine.user_tokens(j), logprobs=TOP_K)
            for j in jobs
        )
    )

    def context(tokens: np.ndarray | None):
        if tokens is None:
            return (
                None  # the PyTorch engine's cold-start rows equal the bare backbone (tests/test_userllm.py)
            )
        t = torch.from_numpy(tokens.astype(np.float32))[None]  # (1, L, Du), the fp16 values as cached
        return model.context_from_tokens(t, torch.ones(t.shape[:2], dtype=torch.bool))

    contexts = [context(u) for u in users] + [None]
    for i, out in enumerate(outs):
        steps = out.logprobs[: len(out.token_ids)]
        worst, overlap = compare(steps, torch_logprobs(model.llm, contexts[i], prompt, out.token_ids))
        far = [
            compare(steps, torch_logprobs(model.llm, c, prompt, out.token_ids))[0]
            for j, c in enumerate(contexts)
            if j != i
        ]
        log.info("cross-attention row %d: max |dlogp| %.2e, overlap %d; other contexts %s",
                 i, worst, overlap, ", ".join(f"{f:.2e}" for f in far))  # fmt: skip
        assert worst <= TOL and overlap >= MIN_OVERLAP
        assert min(far) > 20 * TOL


async def test_generate_serves_cross_attention_users_and_cold_starts(engines) -> None:
    torch_engine, engine = engines
    prompt = torch_engine.chat_prompt("Write one sentence about space travel.")
    params = SamplingParams(max_new_tokens=10, repetition_penalty=1.0)
    user = UserInput(
        np.random.default_rng(9).standard_normal(torch_engine.user_token_shape).astype(np.float16)
    )
    jobs = [GenerateJob(user, prompt, params), GenerateJob(UserInput(None), prompt, params)]
    got = await asyncio.gather(*(engine.generate(j) for j in jobs))
    want = torch_engine.generate_batch([GenerateJob(j.user, j.prompt, j.params) for j in jobs])
    assert [g.text for g in got] == [w.text for w in want] and got[0].completion_tokens > 0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(xattn, backbone_dir, redis_url):
    """The generator app with the vLLM engine on the cross-attention checkpoint; user "u1" has cached
    user tokens."""
    ck_dir, cache_dir, torch_engine = xattn
    assert TOKENS_U1.shape == torch_engine.user_token_shape
    settings = vllm_settings(
        ck_dir, backbone_dir, cache_dir=cache_dir, redis_url=redis_url,
        key_prefix=f"ullmvllm-{uuid.uuid4().hex[:8]}",
    )  # fmt: skip
    async with served_generator(settings, TOKENS_U1, torch_engine.model_version) as client:
        yield client


async def test_generate_over_http_serves_cross_attention_users_from_vllm(server, xattn) -> None:
    torch_engine = xattn[2]
    info = (await server.get("/v1/info")).json()
    assert info["engine"] == "vllm" and info["mode"] == "cross_attention"
    chat = {"task": "chat", "prompt": "Write one sentence about space travel.", "max_new_tokens": 10,
            "temperature": 0, "repetition_penalty": 1.0}  # fmt: skip
    personal = (await server.post("/v1/generate", json={"user_id": "u1", **chat})).json()
    cold = (await server.post("/v1/generate", json={"user_id": "nobody", **chat})).json()
    assert personal["personalized"] is True and cold["personalized"] is False
    params = SamplingParams(max_new_tokens=10, repetition_penalty=1.0)
    prompt = torch_engine.chat_prompt(chat["prompt"])
    jobs = [GenerateJob(UserInput(TOKENS_U1), prompt, params), GenerateJob(UserInput(None), prompt, params)]
    assert [personal["text"], cold["text"]] == [r.text for r in torch_engine.generate_batch(jobs)]
    assert personal["text"] != cold["text"]  # the cached tokens reach vLLM's cross-attention
    rec = (await server.post("/v1/recommend", json={"user_id": "u1", "k": 3})).json()
    assert rec["personalized"] is True and len(rec["items"]) == 3
