"""Training strategies of USER-LLM: which parameters train (Full, Enc, LoRA, Proj).

References: USER-LLM (arXiv 2402.13598) section 4.4 "training strategies"; LoRA (Hu et al. 2021) via
peft `inject_adapter_in_model` on the backbone's self-attention q_proj / v_proj (the cross-attention
blocks also have q_proj / v_proj; the target pattern excludes them); open_flamingo's freezing of the
LM with trainable gated cross-attention. PPlug (Liu et al. ACL 2025) keeps its LLM frozen, so "full"
and "lora" are refused in mode "pplug".

  full   everything trainable
  enc    LLM frozen; encoder, perceiver, adapters (cross-attention / soft prompt / PPlug) trainable
  lora   LLM frozen except LoRA on q_proj/v_proj; encoder, perceiver, adapters trainable
  proj   LLM and encoder frozen; perceiver and adapters trainable
Task heads passed as `heads` always train.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from models.userllm import UserLLM

__all__ = ["LORA_TARGET", "STRATEGIES", "add_lora", "apply_strategy", "has_lora", "lora_disabled"]

STRATEGIES = ("full", "enc", "lora", "proj")
LORA_TARGET = r".*\.self_attn\.(q_proj|v_proj)"  # backbone self-attention only (full match by peft)


def has_lora(module: nn.Module) -> bool:
    """True if LoRA adapters were already injected into `module`."""
    return any("lora_" in name for name, _ in module.named_parameters())


@contextmanager
def lora_disabled(module: nn.Module) -> Iterator[None]:
    """`module` with its LoRA adapters switched off (a LoRA-trained backbone reads as the bare one),
    switched back on afterwards with every `requires_grad` as it was; a no-op without LoRA."""
    if not has_lora(module):
        yield
        return
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in module.modules() if isinstance(m, BaseTunerLayer)]
    trainable = {name: p.requires_grad for name, p in module.named_parameters()}
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)
        for name, p in module.named_parameters():
            p.requires_grad_(trainable[name])


def add_lora(llm: UserLLM, *, rank: int = 8, alpha: int = 16, dropout: float = 0.0) -> None:
    """Inject LoRA adapters into the backbone's self-attention q_proj / v_proj, in place (idempotent)."""
    from peft import LoraConfig, inject_adapter_in_model  # heavy import, only when LoRA is used

    if has_lora(llm.backbone):
        return
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=LORA_TARGET)
    inject_adapter_in_model(config, llm.backbone)


def apply_strategy(
    *,
    llm: UserLLM,
    encoder: nn.Module | None,
    perceiver: nn.Module | None,
    strategy: str,
    heads: nn.Module | None = None,
    lora_rank: int = 8,
    lora_alpha: int = 16,
    lora_dropout: float = 0.0,
) -> list[str]:
    """Set `requires_grad` for a training strategy (and add LoRA for "lora").

    Returns:
        Names of the trainable parameters, prefixed "llm.", "encoder.", "perceiver." or "heads.".
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if llm.config.mode == "pplug" and strategy in ("full", "lora"):
        raise ValueError(f"PPlug keeps the LLM frozen: use 'enc' or 'proj', not {strategy!r}")
    if strategy == "lora":
        add_lora(llm, rank=lora_rank, alpha=lora_alpha, dropout=lora_dropout)

    trainable: list[str] = []
    for name, param in llm.named_parameters():
        if strategy == "full":
            param.requires_grad_(True)
        elif strategy == "lora":
            param.requires_grad_(llm.is_adapter_parameter(name) or "lora_" in name)
        else:
            param.requires_grad_(llm.is_adapter_parameter(name))
        if param.requires_grad:
            trainable.append(f"llm.{name}")
    groups = {
        "encoder": (encoder, strategy != "proj"),
        "perceiver": (perceiver, True),
        "heads": (heads, True),
    }
    for prefix, (module, train) in groups.items():
        if module is None:
            continue
        for name, param in module.named_parameters():
            param.requires_grad_(train)
            if train:
                trainable.append(f"{prefix}.{name}")
    return trainable
