"""The whole USER-LLM model: user tower (encoder + Perceiver) + contextualized LLM + task heads.

USER-LLM (arXiv 2402.13598): user_tokens from the tower condition the LLM (gated cross-attention,
or soft prompt); a next-item head scores the whole catalogue and a category head predicts the
favourite genre from the LLM's last hidden state; review text comes from the LM head.

Checkpoint (`models/checkpoint.py` directory, kind "userllm"): weights prefixed `tower.` (always all
of them: the worker loads this part alone), `item_head.`, `category_head.`, and `llm.` for what the
strategy trained (adapters; LoRA; every LLM weight for "full"). `config.json` is
`asdict(UserLLMConfig)`; the frozen backbone is not stored, its id and hash are in the manifest.

Shapes: B batch, T events, S text tokens, L user tokens, Du user-token width, Dl LLM width, I items,
C categories.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from torch import Tensor, nn
from transformers import PreTrainedModel

from models.checkpoint import Checkpoint, CheckpointError, load_state_strict
from models.heads import CategoryHead, NextItemHead
from models.lower_layers import forward_from_lower
from models.strategies import STRATEGIES, add_lora
from models.user_tower import UserTower, UserTowerConfig
from models.userllm import LLMAdapterConfig, UserContext, UserLLM, UserLLMOutput


@dataclass(frozen=True)
class UserLLMConfig:
    """Everything needed to rebuild the model around a backbone."""

    tower: UserTowerConfig = field(default_factory=UserTowerConfig)  # encoder + Perceiver
    llm: LLMAdapterConfig = field(default_factory=LLMAdapterConfig)  # how user tokens enter the LLM
    num_items: int = 2  # I, item vocabulary size (pad + unk + items): NextItemHead width
    num_categories: int = 2  # C, category vocabulary size: CategoryHead width
    strategy: str = "enc"  # full | enc | lora | proj (which weights the checkpoint carries)
    lora_rank: int = 8  # LoRA rank when strategy == "lora"
    # heads also read the last-event user token directly (needs tower.append_last_event; a skip
    # connection that is not in the USER-LLM paper, see models/heads.py)
    head_user_skip: bool = False
    head_dim: int = 0  # > 0: factorised heads through a head_dim output embedding (models/heads.py)
    head_center: bool = False  # heads read h minus the bare backbone's state on the same prompt
    backbone: str = "smollm2-135m-instruct"  # name of the backbone folder this was trained on
    backbone_dtype: str = "float32"  # dtype the backbone ran in during training (serving loads it so)
    prompt_tokens: int = 0  # the scoring prompts keep their last N tokens, as in training (0 = all)

    def __post_init__(self) -> None:
        if isinstance(self.tower, Mapping):
            object.__setattr__(self, "tower", UserTowerConfig(**self.tower))
        if isinstance(self.llm, Mapping):
            object.__setattr__(self, "llm", LLMAdapterConfig(**self.llm))
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.llm.mode != "pplug" and self.llm.dim_user != self.tower.dim_user:
            raise ValueError(
                f"llm.dim_user {self.llm.dim_user} != tower user-token width {self.tower.dim_user}"
            )
        if self.head_user_skip and not self.tower.append_last_event:
            raise ValueError("head_user_skip needs tower.append_last_event=True")
        if self.backbone_dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"backbone_dtype: float32, bfloat16 or float16, not {self.backbone_dtype!r}")
        if self.prompt_tokens < 0:
            raise ValueError(f"prompt_tokens must be >= 0, got {self.prompt_tokens}")
        if self.head_dim < 0:
            raise ValueError(f"head_dim must be >= 0, got {self.head_dim}")
        if self.num_items < 3 or self.num_categories < 2:
            raise ValueError("num_items must be >= 3 and num_categories >= 2 (pad, unk, ...)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def tiny(cls, mode: str = "cross_attention", **overrides: Any) -> UserLLMConfig:
        base: dict[str, Any] = dict(
            tower=UserTowerConfig.tiny(), llm=LLMAdapterConfig.tiny(mode), num_items=20, num_categories=6
        )
        return cls(**(base | overrides))


class PersonalizedLM(nn.Module):
    """UserTower + UserLLM + heads; every per-user tensor is passed explicitly."""

    def __init__(self, config: UserLLMConfig, backbone: PreTrainedModel) -> None:
        super().__init__()
        self.config = config
        self.tower = UserTower(config.tower)
        self.llm = UserLLM(config.llm, backbone)
        if config.strategy == "lora":
            add_lora(self.llm, rank=config.lora_rank)
        dim = self.llm.dim_model
        dim_user = config.tower.dim_user if config.head_user_skip else 0
        shared = dict(dim_model=dim, dim_user=dim_user, dim_embed=config.head_dim, center=config.head_center)
        self.item_head = NextItemHead(num_items=config.num_items, **shared)
        self.category_head = CategoryHead(num_categories=config.num_categories, **shared)
        param = next(backbone.parameters())
        self.tower.to(device=param.device)  # float32: user_tokens are cast when entering the LLM
        for head in (self.item_head, self.category_head):  # heads read the backbone's hidden states
            head.to(device=param.device, dtype=param.dtype)

    def user_context(self, features: Mapping[str, Tensor], mask: Tensor) -> UserContext:
        """Events (B, T) -> per-request LLM conditioning (computed once per sequence).

        Users with no events get an all-False token mask: the LLM then behaves as the bare backbone.
        """
        out = self.tower(features, mask)
        has_events = mask.any(dim=1, keepdim=True)  # (B, 1)
        return self.context_from_tokens(out.user_tokens, out.user_mask & has_events)

    def context_from_tokens(self, user_tokens: Tensor, user_mask: Tensor) -> UserContext:
        """user_tokens (B, L, Du) + mask (B, L) (all False = no user) -> LLM conditioning; with
        `head_user_skip`, also the last-event token (zeros for users without events) for the heads."""
        context = self.llm.prepare_user_context(user_tokens, user_mask)
        if not self.config.head_user_skip:
            return context
        summary = user_tokens[:, -1] * user_mask[:, -1:].to(user_tokens.dtype)  # (B, Du)
        return replace(context, user_summary=summary)

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, user_context: UserContext | None, **kwargs: Any
    ) -> UserLLMOutput:
        """(B, S) prompt ids -> UserLLMOutput (logits (B, S, V), hidden_states (B, S, Dl), cache)."""
        return self.llm(input_ids, attention_mask, user_context=user_context, **kwargs)

    def score(
        self, input_ids: Tensor, attention_mask: Tensor, user_context: UserContext | None,
        lower: Tensor | None = None, seen: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        """Next-item (B, I) and favourite-category (B, C) logits at the prompt's last real token.

        `lower` (B, S, Dl): the prompt's states below the first cross-attention layer
        (models/lower_layers.py), computed once; the lower layers are then skipped.
        `seen` (B, T): the item ids of each user's history (0 = padding); when the tower's encoder has a
        seen bias (models/seen_bias.py) its learned score is added to those items' next-item logits.
        """
        if lower is not None:
            hidden = forward_from_lower(self.llm, lower, attention_mask, user_context)  # (B, S, Dl)
        else:
            hidden = self.llm(
                input_ids, attention_mask, user_context=user_context, logits_to_keep=1
            ).hidden_states
        summary = user_context.user_summary if user_context is not None else None
        items = self.item_head(hidden, attention_mask, summary)
        seen_bias = self.tower.encoder.seen_bias
        if seen is not None and seen_bias is not None:
            items = seen_bias(items.float(), seen.to(items.device)).to(items.dtype)
        return items, self.category_head(hidden, attention_mask, summary)

    # --- checkpoint ---

    def checkpoint_state(self) -> dict[str, Tensor]:
        """Weights the userllm checkpoint stores (see the module docstring)."""
        full = self.config.strategy == "full"
        llm_keys = {
            f"llm.{n}"
            for n, _ in self.llm.named_parameters()
            if full or self.llm.is_adapter_parameter(n) or "lora_" in n
        }
        keep = ("tower.", "item_head.", "category_head.")
        return {k: v for k, v in self.state_dict().items() if k.startswith(keep) or k in llm_keys}

    def load_checkpoint_state(self, checkpoint: Checkpoint) -> None:
        """Strictly load a userllm checkpoint: every stored key must exist with its shape, and the
        tower, heads and adapters must all be present."""
        load_state_strict(self, checkpoint.state_dict, subset=True)
        expected = set(self.checkpoint_state())
        missing = sorted(expected - set(checkpoint.state_dict))
        if missing:
            raise CheckpointError(f"{checkpoint.path}: missing keys {missing[:10]}")
