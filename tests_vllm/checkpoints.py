"""Untrained USER-LLM checkpoints on the real SmolLM2-135M backbone for the vLLM tests, written by the
same code path as training (`PersonalizedLM.checkpoint_state` + `save_checkpoint`), strategy "enc"
(frozen LLM), with the tiny user tower of the service tests:
- soft prompt: a random projection of the user tokens (Linear Du -> Dl) rescaled so that the prefix
  rows have the mean norm of the backbone's token embeddings (the user changes the output, and the
  text stays text-like);
- cross-attention: gated blocks before the last 4 decoder layers, gates opened to 0.5;
- PPlug: the aggregator's projector and instruction embedding as initialised (random)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from models.backbone import backbone_id, load_backbone
from models.checkpoint import save_checkpoint
from models.personalized import PersonalizedLM
from models.userllm import LLMAdapterConfig
from tests.service_fixtures import tiny_config, vocab_and_catalogue


def _save(directory: Path, model: PersonalizedLM, backbone_dir: Path, seed: int) -> Path:
    vocab, catalogue = vocab_and_catalogue()
    save_checkpoint(
        directory,
        model.checkpoint_state(),
        config=model.config.to_dict(),
        kind="userllm",
        trainable_only=True,
        manifest={"backbone_id": backbone_id(backbone_dir), "seed": seed},
        extras={"vocab": vocab, "catalogue": catalogue},
    )
    return directory


def build_cross_attention_checkpoint(directory: Path, backbone_dir: Path, *, seed: int = 0) -> Path:
    """Write the checkpoint to `directory` and return it."""
    torch.manual_seed(seed)
    backbone, _ = load_backbone(backbone_dir)
    base = tiny_config()
    llm = LLMAdapterConfig(
        mode="cross_attention", dim_user=base.tower.dim_user, cross_attn_layers=(26, 27, 28, 29), heads=4,
        dim_head=32, ff_mult=2,
    )  # fmt: skip
    model = PersonalizedLM(dataclasses.replace(base, llm=llm), backbone).eval()
    with torch.no_grad():
        for block in model.llm.cross_attn_blocks():
            block.attn_gate.fill_(0.5)
            block.ff_gate.fill_(0.5)
    return _save(directory, model, backbone_dir, seed)


def build_soft_prompt_checkpoint(directory: Path, backbone_dir: Path, *, seed: int = 0) -> Path:
    """Write the checkpoint to `directory` and return it."""
    torch.manual_seed(seed)
    backbone, _ = load_backbone(backbone_dir)  # float32, as the checkpoint says it was trained
    base = tiny_config()
    config = dataclasses.replace(base, llm=LLMAdapterConfig(mode="soft_prompt", dim_user=base.tower.dim_user))
    model = PersonalizedLM(config, backbone).eval()
    assert model.llm.soft_prompt is not None
    with torch.no_grad():
        probe = torch.randn(64, config.tower.num_user_tokens, config.tower.dim_user)
        prefix_norm = model.llm.soft_prompt(probe).norm(dim=-1).mean()
        token_norm = backbone.get_input_embeddings().weight.norm(dim=-1).mean()
        for p in model.llm.soft_prompt.parameters():
            p.mul_(token_norm / prefix_norm)
    return _save(directory, model, backbone_dir, seed)


def build_pplug_checkpoint(directory: Path, backbone_dir: Path, *, seed: int = 0) -> Path:
    """Write the checkpoint to `directory` and return it."""
    torch.manual_seed(seed)
    backbone, _ = load_backbone(backbone_dir)
    config = dataclasses.replace(tiny_config(), llm=LLMAdapterConfig(mode="pplug"))
    model = PersonalizedLM(config, backbone).eval()
    return _save(directory, model, backbone_dir, seed)
