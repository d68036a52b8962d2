"""Fixtures of the opt-in vLLM tests (`make test-vllm`, run by the vLLM environment's python): the
real backbone, a soft-prompt checkpoint on it, the PyTorch engine on that checkpoint, and one vLLM
engine per module (its engine core starts once: tens of seconds on CPU). Nothing is downloaded
(HF_HUB_OFFLINE=1). Test modules skip themselves where vllm is not importable."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

from service.engine import TorchEngine  # noqa: E402
from service.settings import Settings  # noqa: E402
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
