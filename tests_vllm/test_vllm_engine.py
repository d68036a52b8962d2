"""The vLLM engine against the PyTorch engine on the same soft-prompt checkpoint (real SmolLM2-135M,
float32 on both sides): next-token distributions, not strings.

vLLM decodes greedily with its top-20 raw log-probs at every step; the PyTorch model is run once over
the prompt plus vLLM's tokens (teacher forcing) with the same user context. At every step: at least
18 of vLLM's top 20 tokens are in the PyTorch top 20, and the log-probs of vLLM's top 20 differ by at
most TOL. Negative controls keep the test able to fail: another user's PyTorch distribution, and the
bare backbone's, differ from vLLM's by far more than TOL. PPlug's [instruction, personal] prefix goes
through the same `decode` on a PPlug adapter around the same backbone.

TOL: float32 on both sides, but vLLM's CPU attention and fused kernels sum in other orders than
PyTorch's SDPA; measured here (docs/vllm.md) the largest difference is far below it.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (make test-vllm builds its environment)")

import pytest_asyncio  # noqa: E402
import torch  # noqa: E402

from models.generation import SamplingParams  # noqa: E402
from models.prompt_embeds import context_prompt_embeds  # noqa: E402
from models.userllm import LLMAdapterConfig, UserContext, UserLLM  # noqa: E402
from service.engine import GenerateJob, TorchEngine, UserInput  # noqa: E402
from service.vllm_engine import VllmEngine  # noqa: E402
from tests_vllm.conftest import vllm_settings  # noqa: E402

pytestmark = pytest.mark.asyncio(loop_scope="module")
log = logging.getLogger("userllm.test_vllm")  # the measured differences (make test-vllm shows INFO)

TOL = 5e-4  # max |log-prob difference| over vLLM's top-20 tokens, nats (measured: <= 6.3e-5)
TOP_K = 20
MIN_OVERLAP = 18  # of the top 20
STEPS = 8
PROMPTS = ["Recommend a movie for a rainy evening.", "Write one sentence about space travel."]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def vllm_engine(torch_engine, checkpoint_dir, backbone_dir):
    engine = VllmEngine.start(torch_engine, vllm_settings(checkpoint_dir, backbone_dir))
    yield engine
    await engine.stop()


def user(seed: int, engine: TorchEngine) -> UserInput:
    g = np.random.default_rng(seed)
    return UserInput(g.standard_normal(engine.user_token_shape).astype(np.float16))


def torch_logprobs(
    llm: UserLLM, context: UserContext | None, prompt: list[int], tokens: list[int]
) -> torch.Tensor:
    """(n, V) PyTorch log-probs of the next token after the prompt and after each of `tokens[:-1]`."""
    ids = torch.tensor([prompt + tokens])
    with torch.inference_mode():
        logits = llm(ids, None, user_context=context).logits[0].float()  # (S + n, V)
    return logits.log_softmax(-1)[len(prompt) - 1 : len(prompt) - 1 + len(tokens)]


def soft_context(engine: TorchEngine, u: UserInput) -> UserContext | None:
    if u.user_tokens is None:
        return None
    tokens = torch.from_numpy(u.user_tokens.astype(np.float32))[None]  # (1, L, Du), fp16 values as cached
    return engine.model.context_from_tokens(tokens, torch.ones(tokens.shape[:2], dtype=torch.bool))


def compare(vllm_top: list[dict[int, float]], reference: torch.Tensor) -> tuple[float, int]:
    """(max |log-prob difference| over vLLM's top tokens, smallest top-k overlap) over the steps."""
    worst, overlap = 0.0, TOP_K
    for step, top in enumerate(vllm_top):
        ids = torch.tensor(list(top))
        diff = (torch.tensor(list(top.values())) - reference[step, ids]).abs().max().item()
        worst = max(worst, diff)
        theirs = set(reference[step].topk(TOP_K).indices.tolist())
        overlap = min(overlap, len(theirs & set(top)))
    return worst, overlap


async def decode(engine: VllmEngine, prompt: list[int], embeds: torch.Tensor | None):
    out = await engine.decode(prompt, embeds, SamplingParams(max_new_tokens=STEPS), logprobs=TOP_K)
    assert out.token_ids and len(out.logprobs) >= len(out.token_ids)
    return out


async def test_soft_prompt_distributions_match_the_pytorch_engine(vllm_engine, torch_engine) -> None:
    llm = torch_engine.model.llm
    users = [user(1, torch_engine), user(2, torch_engine)]
    for text in PROMPTS:
        prompt = torch_engine.chat_prompt(text)
        for i, u in enumerate(users):
            job = GenerateJob(u, prompt, SamplingParams(max_new_tokens=STEPS))
            embeds = await vllm_engine.loop.embed(job)
            assert embeds is not None and embeds.shape[0] == torch_engine.user_token_shape[0] + len(prompt)
            out = await decode(vllm_engine, prompt, embeds)
            steps = out.logprobs[: len(out.token_ids)]
            worst, overlap = compare(
                steps, torch_logprobs(llm, soft_context(torch_engine, u), prompt, out.token_ids)
            )
            log.info("soft prompt, user %d, %r: max |dlogp| %.2e, overlap %d", i, text, worst, overlap)
            assert worst <= TOL and overlap >= MIN_OVERLAP
            # negative controls: the other user, and no user at all, are far from vLLM's distribution
            other = soft_context(torch_engine, users[1 - i])
            far = [compare(steps, torch_logprobs(llm, c, prompt, out.token_ids))[0] for c in (other, None)]
            log.info("  against the other user: %.2e, against no user: %.2e", *far)
            assert min(far) > 50 * TOL


async def test_cold_start_users_decode_the_bare_backbone_from_token_ids(vllm_engine, torch_engine) -> None:
    prompt = torch_engine.chat_prompt(PROMPTS[0])
    job = GenerateJob(UserInput(None), prompt, SamplingParams(max_new_tokens=STEPS))
    assert await vllm_engine.loop.embed(job) is None  # plain token ids, no prompt embeddings
    out = await decode(vllm_engine, prompt, None)
    worst, overlap = compare(
        out.logprobs[: len(out.token_ids)],
        torch_logprobs(torch_engine.model.llm, None, prompt, out.token_ids),
    )
    log.info("cold start: max |dlogp| %.2e, top-%d overlap %d", worst, TOP_K, overlap)
    assert worst <= TOL and overlap >= MIN_OVERLAP


async def test_pplug_prefix_distributions_match(vllm_engine, torch_engine) -> None:
    """PPlug's prefix on the same backbone: one user with history, one without (personal slot masked)."""
    backbone = torch_engine.model.llm.backbone
    torch.manual_seed(3)
    pplug = UserLLM(LLMAdapterConfig(mode="pplug"), backbone).eval()
    g = torch.Generator().manual_seed(4)
    x = torch.nn.functional.normalize(torch.randn(2, 384, generator=g), dim=-1)  # input embeddings
    history = torch.nn.functional.normalize(torch.randn(2, 6, 384, generator=g), dim=-1)
    mask = torch.tensor([[True] * 6, [False] * 6])
    prompt = torch_engine.chat_prompt(PROMPTS[1])
    with torch.inference_mode():
        context = pplug.prepare_pplug_context(x, history, mask)
        embeds = context_prompt_embeds(pplug, [prompt, prompt], context)
    assert [e.shape[0] - len(prompt) for e in embeds] == [2, 1]  # [instruction, personal] / [instruction]
    for row in range(2):
        out = await decode(vllm_engine, prompt, embeds[row])
        ref = torch_logprobs(pplug, context.select(torch.tensor([row])), prompt, out.token_ids)
        worst, overlap = compare(out.logprobs[: len(out.token_ids)], ref)
        log.info("pplug row %d: max |dlogp| %.2e, top-%d overlap %d", row, worst, TOP_K, overlap)
        assert worst <= TOL and overlap >= MIN_OVERLAP


async def test_generate_streams_and_a_cancelled_call_aborts_in_vllm(vllm_engine, torch_engine) -> None:
    prompt = torch_engine.chat_prompt("Count from one to one hundred in words, separated by commas.")
    pieces: list[str] = []
    full = await vllm_engine.generate(
        GenerateJob(user(5, torch_engine), prompt, SamplingParams(max_new_tokens=48), on_text=pieces.append)
    )
    assert full.completion_tokens == 48 and "".join(pieces).strip() == full.text  # the precondition below
    started = asyncio.Event()
    seen: list[str] = []

    def on_text(piece: str) -> None:
        seen.append(piece)
        started.set()

    job = GenerateJob(user(5, torch_engine), prompt, SamplingParams(max_new_tokens=48), on_text=on_text)
    task = asyncio.create_task(vllm_engine.generate(job))
    await asyncio.wait_for(started.wait(), 60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):
        if vllm_engine.llm.get_num_unfinished_requests() == 0:
            break
        await asyncio.sleep(0.05)
    assert vllm_engine.llm.get_num_unfinished_requests() == 0
    assert len(seen) < len(pieces) and vllm_engine.active == 0
