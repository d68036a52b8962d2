"""Builders shared by the training tests: a tiny random Llama saved with the real SmolLM2 tokenizer
(its chat template), and tiny pretrained encoders on the vendored ml-latest-small or the Amazon fixture."""

from __future__ import annotations

from pathlib import Path

import torch

from models.backbone import tiny_llama
from training.config import TrainConfig
from training.pretrain import main as pretrain

AMAZON = dict(
    dataset="amazon-2018", path="tests/fixtures/data/amazon-2018", category="Magazine_Subscriptions"
)


def write_tiny_backbone(
    folder: Path, tokenizer_dir: Path, *, max_positions: int = 256, head_scale: float = 1.0
) -> Path:
    """A seeded 2-layer Llama with the real tokenizer's vocabulary, saved with that tokenizer.

    `head_scale` multiplies the output layer: > 1 makes the next-token distributions peaked like a
    trained LM's (a random one spreads its mass over the whole vocabulary)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    torch.manual_seed(0)
    model = tiny_llama(vocab_size=len(tokenizer), num_layers=2, max_position_embeddings=max_positions)
    with torch.no_grad():
        model.lm_head.weight.mul_(head_scale)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_backbone_or_skip(folder: Path, **kwargs: float) -> Path:
    """`write_tiny_backbone` with the converted backbone's tokenizer; skips the test without it."""
    import pytest

    from training.tasks import default_backbone_dir

    real = Path(default_backbone_dir())
    if not (real / "tokenizer_config.json").is_file():
        pytest.skip(f"backbone folder {real} not prepared (make backbone)")
    return write_tiny_backbone(folder, real, **kwargs)  # type: ignore[arg-type]


def pretrain_tiny_encoder(root: Path, *, steps: int = 2, **data: str) -> Path:
    """A tiny encoder checkpoint at root/encoder (ml-latest-small, 12 users, unless `data` says otherwise)."""
    pretrain(TrainConfig.tiny(out_dir=str(root / "encoder"), run_dir=str(root / "run"), steps=steps, **data))
    return root / "encoder"
