"""Building and initialising the USER-LLM model that fine-tuning trains and evaluation reloads.

USER-LLM (Ning, Liu et al., 2024, arXiv 2402.13598) Sec. 3-4: a pretrained user encoder, a fresh
Perceiver, the backbone with fresh adapters (gated cross-attention, soft prompt or PPlug) and task
heads; the strategy (models/strategies.py) decides what trains. The initialisations here are ours,
each behind a `FinetuneConfig` switch and documented in docs/results.md:

  - `encoder_heads`: factorised heads whose output embeddings start as the encoder's own next-event
    item / category heads (the encoder already knows the catalogue; the LLM learns to point into it);
  - `head_center`: heads read the change the user context makes to the prompt's last hidden state;
  - `head_bias_prior`: head biases = log label frequencies (step 0 ranks by popularity);
  - `gate_init`, `head_init_std`: non-zero gates / small random heads so the gates get a gradient at
    step 0 (zero gates AND zero heads would leave each other without one);
  - per-group LR multipliers for the freshly initialised parts (`new_lr_mult`, `head_lr_mult`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from models.backbone import backbone_id, load_backbone
from models.checkpoint import Checkpoint, CheckpointError, load_state_strict
from models.heads import gather_last_hidden
from models.lower_layers import split_layer
from models.personalized import PersonalizedLM, UserLLMConfig
from models.strategies import apply_strategy
from models.user_encoder import UserEncoderConfig
from training.config import FinetuneConfig
from training.corpus import Corpus
from training.data import Example
from training.tasks import TaskRunner, build_config, default_backbone_dir

__all__ = [
    "build_model",
    "frozen_below_split",
    "init_bias_prior",
    "init_head_centers",
    "init_heads_from_encoder",
    "init_skip_from_encoder",
    "load_userllm",
    "split_new_parameters",
]


# --- initialisations ---


def _encoder_head_pairs(model: PersonalizedLM) -> tuple[tuple[Any, torch.nn.Linear], ...]:
    encoder_heads = model.tower.encoder.heads
    return ((model.item_head, encoder_heads["item"]), (model.category_head, encoder_heads["category"]))


@torch.no_grad()
def init_skip_from_encoder(model: PersonalizedLM) -> None:
    """Heads' user skip (reading the last-event token) := the encoder's next-event item / category
    heads, and the next-item bias := the encoder's: at step 0 next-item scores equal the sequence-only
    model's plus the LLM path (zero at init), which fine-tuning then learns."""
    for head, source in _encoder_head_pairs(model):
        assert head.user_proj is not None
        if head.user_proj.weight.shape != source.weight.shape:
            raise ValueError(
                f"encoder head {tuple(source.weight.shape)} != skip {tuple(head.user_proj.weight.shape)}"
            )
        head.user_proj.weight.copy_(source.weight)
        head.proj.bias.copy_(source.bias)


@torch.no_grad()
def init_heads_from_encoder(model: PersonalizedLM) -> None:
    """Factorised heads' output embeddings and biases := the encoder's next-event heads (De = D)."""
    for head, source in _encoder_head_pairs(model):
        if head.in_proj is None or head.proj.weight.shape != source.weight.shape:
            raise ValueError(
                f"encoder_heads needs factorised heads of the encoder's shape {tuple(source.weight.shape)}, "
                f"got {tuple(head.proj.weight.shape)}"
            )
        head.proj.weight.copy_(source.weight)
        head.proj.bias.copy_(source.bias)


@torch.no_grad()
def init_head_centers(runner: TaskRunner) -> None:
    """Each head's `center` := the bare backbone's last hidden state on that head's task prompt."""
    model = runner.model
    for task, head in (("next_item", model.item_head), ("favourite_category", model.category_head)):
        if head.center is None:
            continue
        ids, mask = runner.fixed_prompt(task, 1)
        hidden = model.llm(ids, mask, user_context=None, logits_to_keep=1).hidden_states  # (1, S, Dl)
        head.center.copy_(gather_last_hidden(hidden, mask)[0].to(head.center))


@torch.no_grad()
def init_bias_prior(runner: TaskRunner, pools: dict[str, list[Example]]) -> None:
    """Head bias = log frequency of each label in the training pool (+0.5 smoothing, centred): the
    untrained model then scores most-popular next items / the majority favourite genre."""
    heads = {"next_item": runner.model.item_head, "favourite_category": runner.model.category_head}
    for task, head in heads.items():
        if task not in pools:
            continue
        labels = runner.labels(pools[task], task).cpu()
        counts = torch.bincount(labels, minlength=head.proj.bias.numel())[: head.proj.bias.numel()].double()
        log_prior = (counts + 0.5).log()
        log_prior[:2] = log_prior[2:].min()  # pad / unknown: never targets
        head.proj.bias.copy_((log_prior - log_prior.mean()).to(head.proj.bias))


def split_new_parameters(
    optimizer: torch.optim.Optimizer, model: PersonalizedLM, cfg: FinetuneConfig
) -> None:
    """Give the freshly initialised parameters groups of their own: Perceiver + LLM adapters get
    `lr_mult` = cfg.new_lr_mult, the heads cfg.head_lr_mult; the encoder (and for "full" / "lora"
    the LLM) keep 1. No-op with the defaults (1, 1)."""
    if cfg.new_lr_mult == 1.0 and cfg.head_lr_mult == 1.0:
        return
    perceiver = model.tower.perceiver
    mult = {id(p): cfg.new_lr_mult for p in (perceiver.parameters() if perceiver is not None else ())}
    mult |= {
        id(p): cfg.new_lr_mult for n, p in model.llm.named_parameters() if model.llm.is_adapter_parameter(n)
    }
    mult |= {id(p): cfg.head_lr_mult for h in (model.item_head, model.category_head) for p in h.parameters()}
    groups = []
    for group in optimizer.param_groups:
        params = group.pop("params")
        for m in dict.fromkeys([1.0, cfg.new_lr_mult, cfg.head_lr_mult]):
            chosen = [p for p in params if mult.get(id(p), 1.0) == m]
            if chosen:
                groups.append({**group, "params": chosen, "lr_mult": m})
    optimizer.param_groups.clear()
    for group in groups:
        optimizer.add_param_group(group)


# --- build and reload ---


def resolve_layers(layers: tuple[int, ...], num_layers: int) -> tuple[int, ...]:
    """Decoder-layer indices with negatives counted from the top (-1 = the last layer), sorted."""
    resolved = sorted({i + num_layers if i < 0 else i for i in layers})
    if resolved and not 0 <= resolved[0] <= resolved[-1] < num_layers:
        raise ValueError(f"cross_attn_layers {layers} out of range for a backbone of {num_layers} layers")
    return tuple(resolved)


def build_model(
    cfg: FinetuneConfig, encoder_ck: Checkpoint, corpus: Corpus
) -> tuple[PersonalizedLM, Any, str]:
    """Backbone + pretrained encoder -> PersonalizedLM with the strategy applied; (model, tokenizer, dir)."""
    backbone_dir = cfg.backbone_dir or default_backbone_dir()
    backbone, tokenizer = load_backbone(backbone_dir, dtype=getattr(torch, cfg.backbone_dtype))
    config = build_config(
        encoder=UserEncoderConfig(**encoder_ck.config["encoder"]), corpus=corpus, mode=cfg.mode,
        strategy=cfg.strategy, num_user_tokens=cfg.num_user_tokens, every_n=cfg.cross_attn_every_n_layers,
        backbone=Path(backbone_dir).name, head_user_skip=cfg.head_user_skip, use_perceiver=cfg.use_perceiver,
        cross_attn_layers=resolve_layers(cfg.cross_attn_layer_ids, backbone.config.num_hidden_layers),
        encoder_heads=cfg.encoder_heads,
        head_center=cfg.head_center, perceiver_recency=cfg.perceiver_recency,
        last_event_token=cfg.last_event_token, backbone_dtype=cfg.backbone_dtype,
        prompt_tokens=cfg.max_prompt_tokens,
    )  # fmt: skip
    model = PersonalizedLM(config, backbone)
    for head in (model.item_head, model.category_head):
        weight = head.in_proj.weight if head.in_proj is not None else head.proj.weight
        if cfg.head_init_std > 0:  # small random weights: the gates get a gradient from step 0
            torch.nn.init.normal_(weight, std=cfg.head_init_std)
        else:  # default: start at uniform scores
            torch.nn.init.zeros_(weight)
        torch.nn.init.zeros_(head.proj.bias)
    with torch.no_grad():  # zero gates get no gradient while the heads are zero; gate_init > 0 opens them
        for block in model.llm.cross_attn_blocks():
            block.attn_gate.fill_(cfg.gate_init)
            block.ff_gate.fill_(cfg.gate_init)
    if cfg.encoder_init == "pretrained":  # "random": the ablation keeps the fresh initialisation
        load_state_strict(model.tower.encoder, encoder_ck.state_dict)
    if cfg.encoder_heads:  # after loading the encoder: its next-event heads seed the output embeddings
        init_heads_from_encoder(model)
    if cfg.head_user_skip:  # the skip starts as the pretrained encoder's own next-event heads
        init_skip_from_encoder(model)
    heads = torch.nn.ModuleList([model.item_head, model.category_head])
    apply_strategy(
        llm=model.llm, encoder=model.tower.encoder, perceiver=model.tower.perceiver, strategy=cfg.strategy,
        heads=heads,
    )  # fmt: skip
    return model, tokenizer, backbone_dir


def load_userllm(ck: Checkpoint, backbone_dir: str | None = None) -> tuple[PersonalizedLM, Any]:
    """Rebuild a fine-tuned model from its checkpoint; refuses a backbone whose id differs."""
    directory = backbone_dir or ck.manifest.get("backbone_dir") or default_backbone_dir()
    if not Path(directory).is_dir():
        directory = default_backbone_dir()
    expected = ck.manifest.get("backbone_id")
    if expected and backbone_id(directory) != expected:
        raise CheckpointError(
            f"backbone {directory} has id {backbone_id(directory)}, checkpoint wants {expected}"
        )
    config = UserLLMConfig(**ck.config)
    backbone, tokenizer = load_backbone(directory, dtype=getattr(torch, config.backbone_dtype))
    model = PersonalizedLM(config, backbone)
    model.load_checkpoint_state(ck)
    return model.eval(), tokenizer


def frozen_below_split(model: PersonalizedLM) -> bool:
    """True when the embeddings and every layer below the first cross-attention block are frozen, so
    their states on a fixed prompt never change during training (TaskRunner.reuse_lower)."""
    k = split_layer(model.llm)
    decoder = model.llm.backbone.model
    lower = [decoder.embed_tokens, *decoder.layers[:k]]
    return k > 0 and not any(p.requires_grad for m in lower for p in m.parameters())
