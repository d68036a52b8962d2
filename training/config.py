"""Training configuration: one frozen dataclass per job, `--key=value` overrides, seeding, LR schedule.

All knobs sit at the top of a dataclass with a comment each (nanoGPT `train.py` spirit); `--key=value`
overrides are type-checked against the fields (training/overrides.py). `get_lr` is nanoGPT's linear
warmup + cosine decay to `min_lr`; `seed_everything` mirrors litgpt's (python, numpy, torch).

References: nanoGPT `train.py` / `configurator.py`; litgpt `args.py`, `finetune/full.py`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from training.overrides import ConfigError, apply_overrides, parse_overrides

__all__ = [
    "CheckFailed",
    "ConfigError",
    "EvalConfig",
    "FinetuneConfig",
    "TextPromptConfig",
    "TrainConfig",
    "apply_overrides",
    "get_lr",
    "parse_overrides",
    "seed_everything",
]


class CheckFailed(Exception):
    """A command's quality check failed (e.g. text-check: generated text misses a fluency target)."""


# --- configs ---


def default_run_dir(out_dir: str, fallback: str) -> str:
    """`runs/<name of out_dir>` for an output under the current directory; beside the output
    (`<its parent>/runs/<name>`) for one elsewhere, so logs and resume state never land in the
    current directory (the repository) while the checkpoint goes somewhere else."""
    out = Path(out_dir)
    name = out.name or fallback
    inside = not out.is_absolute() and ".." not in out.parts
    if not inside:
        try:
            out.resolve().relative_to(Path.cwd().resolve())
            inside = True
        except ValueError:
            inside = False
    return f"runs/{name}" if inside else str(out.parent / "runs" / name)


@dataclass(frozen=True)
class TrainConfig:
    """Self-supervised next-event pretraining of the user encoder (also the base of fine-tuning)."""

    recipe: str = ""  # the named recipe the run started from (training/recipes.py; "" = none)
    # data
    dataset: str = "movielens-latest"  # data set name (training/data/registry.py)
    path: str | None = None  # data directory or file; None = the vendored ml-latest-small
    category: str | None = None  # Amazon category / Google Local state, when the data set needs one
    max_users: int = 0  # keep only the first N users (0 = all); for smoke tests and quick runs
    window: int = 50  # events per training window = encoder positions (paper: 50)
    stride: int = 50  # step between training windows of one user's history
    sampling: Literal["windows", "users", "last"] = "windows"  # pretrain-encoder: each epoch reads every
    # stride window, one randomly placed window per user, or each user's newest window (window_sampler.py)
    recent_events: int = 0  # pretrain-encoder: > 0 = windows over each user's newest N training events
    # only (SASRec+ trains on each user's newest 200); 0 = the whole training timeline
    side_loss_weight: float = 1.0  # pretrain-encoder: weight of each side feature's next-event loss
    # (category, rating, length) against the item loss's 1: 1 = the paper's mean over features, 0 = item only
    select_by: Literal["loss", "ndcg"] = "loss"  # the checkpoint kept: lowest validation loss or highest
    # validation next-item NDCG@10 excluding the history (what `/recommend` serves; SASRec+'s choice);
    # finetune with "ndcg" also validates the model before its first step
    # output
    out_dir: str = "checkpoints/encoder"  # checkpoint directory (best validation weights)
    run_dir: str | None = None  # log.jsonl, trainer_state.pt, last/; None = default_run_dir(out_dir)
    resume: bool = False  # continue from run_dir/trainer_state.pt
    # optimisation
    seed: int = 1337  # seeds python, numpy and torch before model init, and the batch order
    steps: int = 2000  # optimiser steps in total (ignored when epochs > 0)
    epochs: float = 0.0  # > 0: steps = ceil(epochs * batches per epoch)
    batch_size: int = 64  # windows (or examples) per step
    lr: float = 1e-3  # peak learning rate
    min_lr: float = 1e-4  # final learning rate of the cosine decay
    warmup: int = 100  # linear warmup steps
    weight_decay: float = 0.01  # AdamW weight decay on matrices (not on norms, biases, embeddings)
    beta2: float = 0.99  # AdamW beta2 (nanoGPT uses 0.99 for small models)
    grad_clip: float = 1.0  # clip the gradient norm at this value (0 = off)
    ema_decay: float = 0.0  # > 0: validate and keep an exponential moving average of the weights with
    # this decay per step (training/weight_average.py); 0 = the raw weights
    # logging and checkpoints
    log_interval: int = 50  # steps between log lines (stdout and log.jsonl)
    eval_interval: int = 250  # steps between validations; best validation loss is saved to out_dir
    save_interval: int = 500  # steps between resume states (run_dir/trainer_state.pt + run_dir/last/)
    eval_users: int = 0  # validation users used during training (0 = all)
    progress: bool = True  # tqdm progress bar
    threads: int = 0  # torch CPU threads (0 = torch's default); 1 avoids thrashing on a shared machine
    device: Literal["cpu", "cuda"] = "cpu"  # "cuda": cuda:LOCAL_RANK under torchrun, bf16 autocast, NCCL
    # encoder size (paper defaults)
    d_model: int = 128  # encoder width D
    n_layers: int = 6  # Transformer blocks
    n_heads: int = 4  # attention heads
    mlp_ratio: int = 4  # Transformer MLP width = mlp_ratio * d_model (SASRec's point-wise FFN: 1)
    tie_item_head: bool = False  # next-item logits through the item input embeddings (SASRec's sharing)
    tied_head_init: Literal["std", "orthogonal"] = "std"  # the tied head's projection: like the other
    # weights, or orthogonal (scores start at SASRec's scale; models/tied_head.py)
    fusion_init: Literal["std", "orthogonal"] = "std"  # the early-fusion projection: like the other weights,
    # or orthogonal x sqrt(d_model) (event vectors start at SASRec's e_i sqrt(D); models/user_encoder.py)
    positions: Literal["learned", "rotary"] = "learned"  # encoder positions: learned absolute, or rotary
    # (relative, recency-aware; the key/value cache stays valid)
    init_std: float = 0.0  # > 0: encoder weights ~ N(0, init_std) (GPT-2 / SASRec+: 0.02); 0 = PyTorch's
    seen_bias: bool = False  # learn a score for items already in the history (models/seen_bias.py)
    dropout: float = 0.2  # embedding, attention and residual dropout
    fusion: Literal["early", "late"] = "early"  # event feature fusion (models/event_embedding.py)
    item_dim: int = 64  # item id embedding width
    category_dim: int = 32  # genre/category embedding width
    rating_dim: int = 16  # rating embedding width
    length_dim: int = 0  # > 0: an event feature of this width, the length bucket of the event's review
    # text (models/vocab.py `length_bucket`; Amazon reviews, docs/text.md); 0 = no such feature

    def __post_init__(self) -> None:
        positive = ("window", "stride", "batch_size", "log_interval", "eval_interval", "save_interval")
        for name in (*positive, "d_model", "n_layers", "n_heads", "mlp_ratio", "item_dim", "category_dim",
                     "rating_dim"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.steps < 1 and self.epochs <= 0:
            raise ConfigError("set steps >= 1 or epochs > 0")
        if not 0.0 <= self.min_lr <= self.lr:
            raise ConfigError(f"need 0 <= min_lr <= lr, got min_lr={self.min_lr}, lr={self.lr}")
        if self.warmup < 0 or self.max_users < 0 or self.eval_users < 0 or self.length_dim < 0:
            raise ConfigError("warmup, max_users, eval_users and length_dim must be >= 0")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.recent_events < 0:
            raise ConfigError(f"recent_events must be >= 0, got {self.recent_events}")
        if self.side_loss_weight < 0:
            raise ConfigError(f"side_loss_weight must be >= 0, got {self.side_loss_weight}")
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model {self.d_model} must be divisible by n_heads {self.n_heads}")

    @property
    def resolved_run_dir(self) -> str:
        """Where logs and resume state go."""
        return self.run_dir or default_run_dir(self.out_dir, "run")

    @classmethod
    def tiny(cls, **overrides: Any) -> TrainConfig:
        """A seconds-long CPU configuration for tests."""
        base: dict[str, Any] = dict(
            max_users=12, window=16, stride=16, steps=6, batch_size=8, warmup=2, log_interval=2,
            eval_interval=3, save_interval=3, d_model=32, n_layers=2, n_heads=4, item_dim=16,
            category_dim=8, rating_dim=8, dropout=0.0, progress=False,
        )  # fmt: skip
        return cls(**(base | overrides))


@dataclass(frozen=True)
class FinetuneConfig(TrainConfig):
    """Fine-tuning of USER-LLM (pretrained encoder + Perceiver + LLM) on the downstream tasks."""

    encoder_dir: str = "checkpoints/encoder"  # pretrained encoder checkpoint (pretrain-encoder output)
    backbone_dir: str | None = None  # HF causal-LM folder; None = $USERLLM_BACKBONE_DIR
    mode: Literal["cross_attention", "soft_prompt", "pplug"] = "cross_attention"  # LLM contextualization
    strategy: Literal["full", "enc", "lora", "proj"] = "enc"  # which parameters train (models/strategies.py)
    tasks: str = "next_item,favourite_category"  # comma-separated: next_item, favourite_category, review,
    # and the language tasks taste, suggest, generic (training/text_tasks.py)
    cross_attn_every_n_layers: int = 6  # gated cross-attention before every n-th decoder layer
    cross_attn_layers: str = ""  # layer indices overriding every_n, e.g. "-4,-3,-2,-1" (negative: from the
    # top); the frozen layers below the first one then run once per fixed prompt (models/lower_layers.py)
    num_user_tokens: int = 16  # Perceiver latents L
    use_perceiver: bool = True  # False: every encoder output is a user token (ablation "all 50"; offline)
    encoder_init: Literal["pretrained", "random"] = "pretrained"  # "random": ablation without pretraining
    max_prompt_tokens: int = 48  # instruction prompt length cap (tokens)
    max_review_tokens: int = 48  # review target length cap (tokens)
    text_batch_size: int = 0  # batch size of the language tasks taste, suggest, generic (0 = batch_size)
    backbone_dtype: Literal["float32", "bfloat16"] = "float32"  # backbone weights dtype during training
    # initialisation and learning rates of the freshly added parts (defaults = the original recipe)
    new_lr_mult: float = 1.0  # LR multiplier for the Perceiver and the LLM adapters (encoder: lr)
    head_lr_mult: float = 1.0  # LR multiplier for the heads (Adam moves a logit by ~lr * |h|_1 per step)
    head_init_std: float = 0.0  # head weights ~ N(0, std); 0 = zeros (uniform scores at step 0)
    gate_init: float = 0.0  # initial value of the cross-attention tanh gates (0 = identity at start)
    head_user_skip: bool = False  # heads also read the last-event token (skip connection; not in the paper)
    encoder_heads: bool = False  # factorised heads: LLM state -> encoder width -> the pretrained encoder's
    # next-event item / category output embeddings (copied, then trained); False = fresh Linear(Dl, N)
    head_center: bool = False  # heads read h - (bare backbone's h on the same prompt) (models/heads.py)
    perceiver_recency: bool = False  # Perceiver inputs get a learned embedding of each event's age
    user_input: Literal["embeddings", "text", "none"] = "embeddings"  # "text": history in the prompt (the
    # text-prompt baseline, no user tokens); "none": the non-personalised baseline
    text_events: int = 50  # user_input "text": newest events rendered into the prompt
    text_tokens: int = 1024  # user_input "text": prompt budget (the oldest events are dropped to fit)
    last_event_token: bool = False  # user_tokens += the encoder's state at the newest event (cross-attended)
    distill: float = 0.0  # a: next-item loss = (1 - a) CE + a KL(pretrained encoder || model) (distill.py)
    distill_temperature: float = 1.0  # temperature T of the distillation term
    head_bias_prior: bool = False  # head biases := log label frequencies (step 0 = most-popular / majority)
    out_dir: str = "checkpoints/userllm"  # USER-LLM checkpoint directory
    steps: int = 300
    batch_size: int = 16
    lr: float = 3e-4
    min_lr: float = 3e-5
    warmup: int = 30
    log_interval: int = 10
    eval_interval: int = 100
    save_interval: int = 100
    eval_users: int = 64
    dropout: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.distill <= 1.0 or self.distill_temperature <= 0:
            raise ConfigError("distill must be in [0, 1] and distill_temperature > 0")
        if self.text_batch_size < 0:
            raise ConfigError(f"text_batch_size must be >= 0, got {self.text_batch_size}")
        if self.new_lr_mult <= 0 or self.head_lr_mult <= 0 or self.head_init_std < 0:
            raise ConfigError("new_lr_mult and head_lr_mult must be > 0, head_init_std >= 0")
        try:
            _ = self.cross_attn_layer_ids
        except ValueError:
            raise ConfigError(
                f"cross_attn_layers must be comma-separated integers, got {self.cross_attn_layers!r}"
            ) from None
        if self.select_by == "ndcg" and "next_item" not in self.task_list:
            raise ConfigError(f"select_by=ndcg needs the next_item task, tasks are {self.tasks!r}")
        known = ("next_item", "favourite_category", "review", "taste", "suggest", "generic")
        unknown = set(self.task_list) - set(known)
        if unknown or not self.task_list:
            raise ConfigError(f"tasks: unknown {sorted(unknown)}; use {', '.join(known)}")

    @property
    def task_list(self) -> tuple[str, ...]:
        return tuple(t.strip() for t in self.tasks.split(",") if t.strip())

    @property
    def cross_attn_layer_ids(self) -> tuple[int, ...]:
        return tuple(int(i) for i in self.cross_attn_layers.split(",") if i.strip())


@dataclass(frozen=True)
class EvalConfig:
    """Offline evaluation and baselines on the leave-last-out split."""

    dataset: str = "movielens-latest"  # data set name (training/data/registry.py)
    path: str | None = None  # data directory or file; None = the vendored ml-latest-small
    category: str | None = None  # Amazon category / Google Local state
    max_users: int = 0  # first N users only (0 = all)
    checkpoint: str = "checkpoints/encoder"  # encoder or userllm checkpoint directory
    out_dir: str = "results/eval"  # results.json, results.md, plots
    split: Literal["test", "valid"] = "test"  # held-out target: last event (test) or the one before
    batch_size: int = 128  # users per forward pass
    ks: str = "1,5,10"  # cut-offs of Recall@K (NDCG is reported at the largest)
    label: str = ""  # name of this run in tables (default: derived from the checkpoint)
    group: str = ""  # table of the report this row goes to ("" = the data set's main table, e.g. "ablations")
    max_review_examples: int = 64  # users whose review is generated for ROUGE (review task only)
    text_users: int = 48  # USER-LLM checkpoints: users of the text report (fluency, personalization,
    # samples; training/text_eval.py); 0 = no text report
    seed: int = 1337  # seeds sampling and subsets
    history_events: int = 0  # > 0: the models read only the newest N events of each history (what the
    # worker's sliding window gives a user past the encoder window; service/encoding.py); 0 = the window

    def __post_init__(self) -> None:
        if self.history_events < 0:
            raise ConfigError(f"history_events must be >= 0, got {self.history_events}")
        if not self.k_list or min(self.k_list) < 1:
            raise ConfigError(f"ks must be positive integers, got {self.ks!r}")
        if self.batch_size < 1 or self.max_users < 0 or self.text_users < 0:
            raise ConfigError("batch_size must be >= 1, max_users and text_users >= 0")

    @property
    def k_list(self) -> tuple[int, ...]:
        try:
            return tuple(sorted({int(k) for k in self.ks.split(",") if k.strip()}))
        except ValueError as exc:
            raise ConfigError(f"ks must be comma-separated integers, got {self.ks!r}") from exc


@dataclass(frozen=True)
class TextPromptConfig:
    """Text-prompt baseline: the frozen backbone reads the history as text; heads train on its features."""

    # data (the encoder's vocabulary and split, so the rows compare with USER-LLM's)
    dataset: str = "movielens-latest"  # data set name (training/data/registry.py)
    path: str | None = None  # data directory or file; None = the vendored ml-latest-small
    category: str | None = None  # Amazon category / Google Local state
    max_users: int = 0  # first N users only (0 = all)
    encoder_dir: str = "checkpoints/encoder"  # pretrained encoder: vocabulary + head initialisation
    backbone_dir: str | None = None  # HF causal-LM folder; None = $USERLLM_BACKBONE_DIR
    # output
    out_dir: str = "results/text-prompt"  # results.json, results.md, plots
    run_dir: str | None = None  # feature cache, log.jsonl, heads.pt; None = default_run_dir(out_dir)
    label: str = ""  # name of this run in tables ("" = text-prompt (frozen backbone, history as text))
    ks: str = "1,5,10"  # cut-offs of Recall@K (NDCG is reported at the largest)
    # prompts and features
    max_events: int = 50  # newest history events rendered into the prompt (the encoder's window)
    max_prompt_tokens: int = 1024  # chat-prompt cap; the oldest events are dropped until it fits
    cuts_per_user: int = 4  # training prompts per user: evenly spaced cuts of the train timeline
    batch_size: int = 4  # histories per backbone forward pass (each with its K task prompts)
    backbone_dtype: Literal["float32", "bfloat16"] = "float32"  # bfloat16: ~3x faster on CPUs with AMX
    # heads (trained on the cached features)
    epochs: int = 30  # passes over the training features; the best validation loss per head is kept
    distill: float = 0.0  # next-item distillation weight from the pretrained encoder, as finetune --distill
    lr: float = 1e-3  # AdamW learning rate
    weight_decay: float = 0.01  # AdamW weight decay on matrices
    seed: int = 1337  # seeds python, numpy, torch and the batch order
    threads: int = 0  # torch CPU threads (0 = torch's default); 1 on a shared machine
    progress: bool = True  # tqdm progress bars

    def __post_init__(self) -> None:
        for name in ("max_events", "cuts_per_user", "batch_size", "epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_prompt_tokens < 32:
            raise ConfigError(f"max_prompt_tokens must be >= 32, got {self.max_prompt_tokens}")
        if self.lr <= 0 or self.weight_decay < 0 or self.max_users < 0 or self.threads < 0:
            raise ConfigError("need lr > 0, weight_decay >= 0, max_users >= 0 and threads >= 0")
        if not 0.0 <= self.distill <= 1.0:
            raise ConfigError(f"distill must be in [0, 1], got {self.distill}")
        _ = self.k_list

    @property
    def k_list(self) -> tuple[int, ...]:
        return EvalConfig(ks=self.ks).k_list  # the same parsing and checks as evaluation

    @property
    def resolved_run_dir(self) -> str:
        return self.run_dir or default_run_dir(self.out_dir, "text-prompt")

    @classmethod
    def tiny(cls, **overrides: Any) -> TextPromptConfig:
        """A seconds-long CPU configuration for tests (a tiny backbone with >= 256 positions)."""
        base: dict[str, Any] = dict(
            max_users=12, max_prompt_tokens=200, epochs=3, batch_size=4, progress=False
        )
        return cls(**(base | overrides))


# --- seeding and schedule ---


def seed_everything(seed: int) -> None:
    """Seed python `random`, numpy and torch (CPU and CUDA). Call before building the model."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_lr(step: int, cfg: TrainConfig, total_steps: int | None = None) -> float:
    """Learning rate at `step` (0-based): linear warmup to `lr`, cosine decay to `min_lr` at the end.

    `total_steps` defaults to `cfg.steps` (pass the resolved count when training by epochs).
    """
    total = cfg.steps if total_steps is None else total_steps
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / (cfg.warmup + 1)
    if step >= total:
        return cfg.min_lr
    progress = (step - cfg.warmup) / max(1, total - cfg.warmup)  # 0 -> 1
    coeff = 0.5 * (1.0 + math.cos(math.pi * progress))  # 1 -> 0
    return cfg.min_lr + coeff * (cfg.lr - cfg.min_lr)
