"""Cross-attention inside vLLM (the `vllm_userllm` general plugin, experimental) against the PyTorch
model on the same cross-attention checkpoint (real SmolLM2-135M, gates open, float32 on both sides).

The checkpoint is exported to a vLLM model folder (`vllm_userllm.export`), vLLM loads it through the
plugin's entry point (installed with the project: `make vllm-env`), and two users decode at once (their
user tokens are the encoder input of an encoder-decoder request, cached per request by vLLM's
cross-attention). As in test_vllm_engine.py: vLLM's top-20 log-probs of every greedy step against the
PyTorch model run over the prompt plus vLLM's tokens with the user's context; the other user's and the
bare backbone's distributions are far from it.
"""

from __future__ import annotations

import asyncio
import logging
from importlib.metadata import entry_points

import numpy as np
import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (make test-vllm builds its environment)")

import pytest_asyncio  # noqa: E402
import torch  # noqa: E402

from models.backbone import load_backbone  # noqa: E402
from models.checkpoint import load_checkpoint  # noqa: E402
from models.personalized import PersonalizedLM, UserLLMConfig  # noqa: E402
from tests_vllm.checkpoints import build_cross_attention_checkpoint  # noqa: E402
from tests_vllm.test_vllm_engine import MIN_OVERLAP, STEPS, TOL, TOP_K, compare, torch_logprobs  # noqa: E402
from vllm_userllm.export import export  # noqa: E402

pytestmark = pytest.mark.asyncio(loop_scope="module")
log = logging.getLogger("userllm.test_vllm")


@pytest.fixture(scope="module")
def xattn(tmp_path_factory, backbone_dir):
    """(PyTorch model, exported vLLM folder) of one cross-attention checkpoint."""
    if not any(e.value == "vllm_userllm:register" for e in entry_points(group="vllm.general_plugins")):
        pytest.fail(
            "the vllm_userllm plugin is not installed in this environment (make vllm-env installs it)"
        )
    root = tmp_path_factory.mktemp("xattn")
    ck_dir = build_cross_attention_checkpoint(root / "userllm", backbone_dir)
    ck = load_checkpoint(ck_dir)
    backbone, tokenizer = load_backbone(backbone_dir)
    model = PersonalizedLM(UserLLMConfig(**ck.config), backbone).eval()
    model.load_checkpoint_state(ck)
    return model, tokenizer, export(ck_dir, backbone_dir, root / "vllm")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def llm(xattn, backbone_dir):
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    args = AsyncEngineArgs(
        model=str(xattn[2]), tokenizer=str(backbone_dir), dtype="float32", enforce_eager=True,
        max_model_len=512, kv_cache_memory_bytes=2**29, max_num_seqs=4, max_logprobs=TOP_K, seed=0,
        generation_config="vllm", disable_log_stats=True,
    )  # fmt: skip
    engine = AsyncLLM.from_engine_args(args)
    yield engine
    engine.shutdown()


async def decode(llm, prompt: list[int], tokens: np.ndarray, request_id: str):
    from vllm import SamplingParams

    request = {
        "encoder_prompt": {"prompt_token_ids": [0], "multi_modal_data": {"user": torch.from_numpy(tokens)}},
        "decoder_prompt": {"prompt_token_ids": prompt},
    }
    final = None
    async for out in llm.generate(
        request, SamplingParams(max_tokens=STEPS, temperature=0, logprobs=TOP_K), request_id
    ):
        final = out
    assert final is not None
    return final.outputs[0]


async def test_cross_attention_distributions_match_the_pytorch_model(xattn, llm) -> None:
    model, tokenizer, _ = xattn
    shape = (model.config.tower.num_user_tokens, model.config.tower.dim_user)
    users = [np.random.default_rng(seed).standard_normal(shape).astype(np.float32) for seed in (7, 8)]
    chat = [{"role": "user", "content": "Suggest a film for tonight."}]
    encoded = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True)
    prompt = list(encoded["input_ids"])
    outs = await asyncio.gather(*(decode(llm, prompt, u, f"xattn-{i}") for i, u in enumerate(users)))

    def context(tokens: np.ndarray):
        t = torch.from_numpy(tokens)[None]  # (1, L, Du)
        return model.context_from_tokens(t, torch.ones(t.shape[:2], dtype=torch.bool))

    for i, out in enumerate(outs):
        steps = [{int(t): float(lp.logprob) for t, lp in top.items()} for top in out.logprobs][
            : len(out.token_ids)
        ]
        worst, overlap = compare(
            steps, torch_logprobs(model.llm, context(users[i]), prompt, list(out.token_ids))
        )
        far = [
            compare(steps, torch_logprobs(model.llm, c, prompt, list(out.token_ids)))[0]
            for c in (context(users[1 - i]), None)
        ]
        log.info("cross-attention user %d: max |dlogp| %.2e, overlap %d; other user %.2e, bare %.2e",
                 i, worst, overlap, *far)  # fmt: skip
        assert worst <= TOL and overlap >= MIN_OVERLAP
        assert min(far) > 20 * TOL
