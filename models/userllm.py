"""The LLM side of USER-LLM: a Hugging Face decoder contextualized by user tokens.

Three modes (USER-LLM, arXiv 2402.13598, section 3.2; PPlug, Liu et al. ACL 2025):
  - "cross_attention": gated cross-attention blocks (zero-init tanh gates, Flamingo) inserted before
    every `cross_attn_every_n_layers`-th decoder layer, placed like open_flamingo `flamingo_lm.py`
    (a wrapper runs the block, then the original layer).
  - "soft_prompt": user tokens projected to the embedding space and prepended to the input embeddings.
  - "pplug": a (B, 2, Dl) prefix [instruction, personal embedding] from `PPlugAggregator`, prepended the
    same way to a frozen LLM.

User conditioning is an explicit argument: `prepare_user_context` computes a `UserContext` once per
sequence (cross-attention K/V per block, or the prefix embeddings) and every `forward` call receives it.
Nothing per-user is stored on a module (unlike open_flamingo's `condition_vis_x`). The context reaches
the wrapped layers through the `**kwargs` that transformers 5 forwards from `LlamaModel.forward` to each
decoder layer; the wrapper pops its key before calling the original layer.

Masks and positions: `attention_mask` (B, S_past + S) covers the text tokens only, like HF generate;
the prefix mask is prepended internally on every call, the prefix embeddings only while the KV cache is
empty (after prefill the prefix lives in the cache). Positions are `cumsum(mask) - 1`, so left padding
gives each row the positions it would have alone.

Shapes: B batch, S text tokens, P prefix tokens, L user tokens, Du user-token dim, Dl LLM hidden dim,
H heads, Dh head dim, V vocab.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import Cache, PreTrainedModel

from models.cross_attention import GatedCrossAttentionBlock
from models.pplug import PPlugAggregator
from models.soft_prompt import SoftPromptProjector

__all__ = ["MODES", "CrossAttnDecoderLayer", "LLMAdapterConfig", "UserContext", "UserLLM", "UserLLMOutput"]

MODES = ("cross_attention", "soft_prompt", "pplug")


@dataclass(frozen=True)
class LLMAdapterConfig:
    """How user conditioning enters the LLM. The LLM's own sizes are read from the backbone."""

    mode: str = "cross_attention"  # one of MODES
    dim_user: int = 128  # Du, width of user_tokens (PerceiverConfig.dim_latent)
    cross_attn_every_n_layers: int = 4  # xattn before layers n-1, 2n-1, ... (30 layers, n=4: 7 blocks)
    cross_attn_layers: tuple[int, ...] = ()  # explicit decoder-layer indices; overrides every_n when set
    heads: int = 8  # cross-attention heads H
    dim_head: int = 64  # cross-attention head dim Dh
    ff_mult: int = 4  # gated FFN hidden width = ff_mult * Dl
    soft_prompt_hidden: int = 0  # soft-prompt projector: 0 = Linear Du->Dl, else MLP with this width
    dim_text: int = 384  # PPlug sentence-embedding width Dt (all-MiniLM-L6-v2)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        for name in ("dim_user", "cross_attn_every_n_layers", "heads", "dim_head", "ff_mult", "dim_text"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.soft_prompt_hidden < 0:
            raise ValueError("soft_prompt_hidden must be >= 0")
        layers = tuple(self.cross_attn_layers)
        if any(i < 0 for i in layers) or list(layers) != sorted(set(layers)):
            raise ValueError(f"cross_attn_layers must be sorted, unique and >= 0, got {layers}")
        object.__setattr__(self, "cross_attn_layers", layers)  # lists from JSON become tuples

    def layer_ids(self, num_layers: int) -> tuple[int, ...]:
        """Decoder-layer indices that get a cross-attention block, for a backbone of `num_layers`."""
        if self.mode != "cross_attention":
            return ()
        if self.cross_attn_layers:
            if self.cross_attn_layers[-1] >= num_layers:
                raise ValueError(f"cross_attn_layers {self.cross_attn_layers} out of range for {num_layers}")
            return self.cross_attn_layers
        n = self.cross_attn_every_n_layers
        return tuple(i for i in range(num_layers) if (i + 1) % n == 0)

    @classmethod
    def tiny(cls, mode: str = "cross_attention") -> LLMAdapterConfig:
        return cls(
            mode=mode, dim_user=32, cross_attn_every_n_layers=1, heads=2, dim_head=8, ff_mult=2, dim_text=24
        )


@dataclass(frozen=True)
class UserContext:
    """Per-request user conditioning, computed once per sequence and passed to every forward call."""

    kv: tuple[tuple[Tensor, Tensor], ...] = ()  # per cross-attention block: (k, v), each (B, H, L, Dh)
    kv_mask: Tensor | None = None  # (B, L) bool, True = real user token
    prefix: Tensor | None = None  # (B, P, Dl) soft-prompt / PPlug prefix embeddings
    prefix_mask: Tensor | None = None  # (B, P) bool, True = real prefix slot
    user_summary: Tensor | None = None  # (B, Du) masked mean of user_tokens, for heads with a user skip

    def select(self, index: Tensor) -> UserContext:
        """The context of a subset of rows (e.g. the unfinished requests of a batch)."""

        def pick(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.index_select(0, index)

        kv = tuple((k.index_select(0, index), v.index_select(0, index)) for k, v in self.kv)
        return UserContext(
            kv, pick(self.kv_mask), pick(self.prefix), pick(self.prefix_mask), pick(self.user_summary)
        )


@dataclass
class UserLLMOutput:
    """Output of `UserLLM.forward`; prefix positions are stripped, so S matches `input_ids`."""

    logits: Tensor  # (B, S, V), or (B, logits_to_keep, V)
    hidden_states: Tensor  # (B, S, Dl) last layer, after the final norm
    past_key_values: Cache | None = None  # includes the prefix positions


class CrossAttnDecoderLayer(nn.Module):
    """open_flamingo-style wrapper: gated cross-attention on the hidden states, then the original layer."""

    def __init__(self, *, cross_attn: GatedCrossAttentionBlock, decoder_layer: nn.Module, slot: int) -> None:
        super().__init__()
        self.cross_attn = cross_attn
        self.decoder_layer = decoder_layer
        self.slot = slot  # index of this block's (k, v) in UserContext.kv
        if hasattr(decoder_layer, "attention_type"):  # models with per-layer masks (Qwen2, Gemma) read it
            self.attention_type = decoder_layer.attention_type

    def forward(
        self, hidden_states: Tensor, *args: Any, user_context: UserContext | None = None, **kwargs: Any
    ) -> Any:
        """hidden_states (B, S, Dl) -> the original layer's output; no-op block without user context."""
        if user_context is not None and user_context.kv:
            hidden_states = self.cross_attn(hidden_states, user_context.kv[self.slot], user_context.kv_mask)
        return self.decoder_layer(hidden_states, *args, **kwargs)


class UserLLM(nn.Module):
    """A HF causal LM (any decoder with `model.model.layers`) plus the adapters of one mode."""

    def __init__(self, config: LLMAdapterConfig, backbone: PreTrainedModel) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        layers = backbone.model.layers
        dim_model = int(backbone.config.hidden_size)
        param = next(backbone.parameters())
        self.cross_attn_layers = config.layer_ids(len(layers))
        for slot, i in enumerate(self.cross_attn_layers):
            block = GatedCrossAttentionBlock(
                dim=dim_model,
                dim_context=config.dim_user,
                heads=config.heads,
                dim_head=config.dim_head,
                ff_mult=config.ff_mult,
            )
            block.to(device=param.device, dtype=param.dtype)
            layers[i] = CrossAttnDecoderLayer(cross_attn=block, decoder_layer=layers[i], slot=slot)
        self.soft_prompt: SoftPromptProjector | None = None
        self.pplug: PPlugAggregator | None = None
        if config.mode == "soft_prompt":
            self.soft_prompt = SoftPromptProjector(
                dim_user=config.dim_user, dim_model=dim_model, hidden=config.soft_prompt_hidden
            )
            self.soft_prompt.to(device=param.device, dtype=param.dtype)
        elif config.mode == "pplug":
            self.pplug = PPlugAggregator(dim_text=config.dim_text, dim_model=dim_model)
            self.pplug.to(device=param.device, dtype=param.dtype)

    # --- structure ---

    @property
    def dim_model(self) -> int:
        """Dl, the backbone's hidden size."""
        return int(self.backbone.config.hidden_size)

    def cross_attn_blocks(self) -> list[GatedCrossAttentionBlock]:
        """The inserted gated cross-attention blocks, in layer order."""
        return [self.backbone.model.layers[i].cross_attn for i in self.cross_attn_layers]

    @staticmethod
    def is_adapter_parameter(name: str) -> bool:
        """True for parameter names (from `named_parameters()`) of the adapters, not the backbone."""
        return name.startswith(("soft_prompt.", "pplug.")) or ".cross_attn." in name

    # --- user context ---

    def prepare_user_context(self, user_tokens: Tensor, user_mask: Tensor | None = None) -> UserContext:
        """Compute the per-sequence conditioning once (cross_attention and soft_prompt modes).

        Args:
            user_tokens: (B, L, Du) Perceiver output.
            user_mask: (B, L) bool, True = real token; None = all real. All False = no user (cold start).

        Returns:
            UserContext with per-block K/V (cross_attention) or the (B, L, Dl) prefix (soft_prompt).
        """
        if user_mask is not None and user_mask.dtype != torch.bool:
            raise ValueError("user_mask must be a bool tensor (True = real user token)")
        param = next(self.backbone.parameters())
        user_tokens = user_tokens.to(device=param.device, dtype=param.dtype)
        if self.config.mode == "cross_attention":
            kv = tuple(block.context_kv(user_tokens) for block in self.cross_attn_blocks())
            return UserContext(kv=kv, kv_mask=user_mask)
        if self.config.mode == "soft_prompt":
            assert self.soft_prompt is not None
            return UserContext(prefix=self.soft_prompt(user_tokens), prefix_mask=user_mask)
        raise ValueError("mode 'pplug' builds its context with prepare_pplug_context")

    def prepare_pplug_context(
        self, input_embedding: Tensor, history_embeddings: Tensor, history_mask: Tensor | None = None
    ) -> UserContext:
        """PPlug context: (B, Dt) input embedding, (B, N, Dt) history, (B, N) mask -> (B, 2, Dl) prefix."""
        if self.pplug is None:
            raise ValueError(f"prepare_pplug_context needs mode 'pplug', not {self.config.mode!r}")
        param = next(self.pplug.parameters())
        prefix, prefix_mask = self.pplug(
            input_embedding.to(param.dtype), history_embeddings.to(param.dtype), history_mask
        )
        return UserContext(prefix=prefix, prefix_mask=prefix_mask)

    # --- forward ---

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        user_context: UserContext | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool = False,
        position_ids: Tensor | None = None,
        logits_to_keep: int = 0,
    ) -> UserLLMOutput:
        """Run the contextualized LLM on new text tokens (a full sequence, a prefill, or a decode step).

        Args:
            input_ids: (B, S) new token ids.
            attention_mask: (B, S_past + S), 1/True = real text token (past text and new tokens);
                None = all real.
            user_context: from `prepare_user_context` / `prepare_pplug_context`, the same on every step
                of a sequence; None = the bare backbone.
            past_key_values: HF cache from the previous call (it includes the prefix positions).
            use_cache: create and return a cache when none is given.
            position_ids: (B, S); default `cumsum(mask) - 1` over prefix + text (explicit positions are
                refused on a prefix prefill, where the fed length is P + S).
            logits_to_keep: 0 = logits at every position, k = only the last k positions.

        Returns:
            UserLLMOutput with logits (B, S or k, V), hidden_states (B, S, Dl), past_key_values.
        """
        decoder = self.backbone.model
        b, s = input_ids.shape
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        prefix = user_context.prefix if user_context is not None else None
        n_prefix = prefix.shape[1] if prefix is not None else 0
        if attention_mask is None:
            text_past = past - n_prefix if past > 0 else 0
            attention_mask = torch.ones(b, text_past + s, dtype=torch.bool, device=input_ids.device)
        mask = attention_mask.bool()  # (B, S_past + S)
        inputs_embeds = decoder.embed_tokens(input_ids)  # (B, S, Dl)
        prepended = 0
        if prefix is not None:
            prefix_mask = user_context.prefix_mask if user_context is not None else None
            if prefix_mask is None:
                prefix_mask = torch.ones(b, n_prefix, dtype=torch.bool, device=mask.device)
            mask = torch.cat([prefix_mask.to(mask.device), mask], dim=1)  # (B, P + S_past + S)
            if past == 0:  # prefill: the prefix enters the cache here
                inputs_embeds = torch.cat(
                    [prefix.to(inputs_embeds.dtype), inputs_embeds], dim=1
                )  # (B, P+S, Dl)
                prepended = n_prefix
        if mask.shape[1] != past + inputs_embeds.shape[1]:
            raise ValueError(
                f"attention_mask covers {mask.shape[1] - n_prefix} text tokens, expected "
                f"{past + inputs_embeds.shape[1] - n_prefix} (past + new)"
            )
        if position_ids is None:
            position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)[
                :, -inputs_embeds.shape[1] :
            ]  # (B, P?+S)
        elif prepended:
            raise ValueError("explicit position_ids are not supported while a prefix is prepended")
        routed = {"user_context": user_context} if self.cross_attn_layers and user_context is not None else {}
        out = decoder(
            inputs_embeds=inputs_embeds,
            attention_mask=mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            **routed,
        )
        hidden = out.last_hidden_state[:, prepended:]  # (B, S, Dl)
        kept = hidden if logits_to_keep == 0 else hidden[:, -logits_to_keep:]
        logits = self.backbone.get_output_embeddings()(kept)  # (B, S or k, V)
        return UserLLMOutput(logits=logits, hidden_states=hidden, past_key_values=out.past_key_values)
