"""USER-LLM's cross-attention decoder inside vLLM (experimental): vLLM's Llama with a gated
cross-attention block before each decoder layer that has one in the checkpoint, attending to the
request's user tokens through vLLM's `CrossAttention` (`AttentionType.ENCODER_DECODER`: keys and values
of the user tokens are computed at prefill and kept in vLLM's cross-attention KV cache).

The user tokens enter as the encoder input of an encoder-decoder request, a "user" modality item of
shape (L, Du): `{"encoder_prompt": {"prompt_token_ids": [0], "multi_modal_data": {"user": tokens}},
"decoder_prompt": {"prompt_token_ids": prompt}}`; the encoder is the identity. The block computes what
models/cross_attention.py computes (same parameter names). vLLM's cross-attention has no key mask, so
a user without tokens is sent as zeros: with no biases their values are 0, the attention output is
exactly 0, and the block then also drops its FFN term for those tokens, which is what the PyTorch
block does for a row whose mask is all False (the bare backbone). The model folder comes from
`vllm_userllm.export`.

Based on: vllm-project/bart-plugin `bart.py` (BartCrossAttention, EncDecMultiModalProcessor, the text
"modality" parser) and vLLM's `whisper.py`; Flamingo / flamingo-pytorch gated cross-attention.

Shapes: N scheduled tokens, M user tokens of the scheduled requests, D hidden, Du user-token dim.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.layers.attention.cross_attention import CrossAttention
from vllm.model_executor.models.interfaces import SupportsMultiModal
from vllm.model_executor.models.llama import LlamaForCausalLM
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.parse import MultiModalDataParser, ProcessorBatchItems
from vllm.multimodal.processing import BaseProcessingInfo, EncDecMultiModalProcessor, PromptReplacement
from vllm.multimodal.processing.dummy_inputs import BaseDummyInputsBuilder
from vllm.v1.attention.backend import AttentionType

MODALITY = "user"


def _spec(config: Any) -> dict[str, Any]:
    return dict(config.userllm)  # written by vllm_userllm.export


class GatedCrossAttention(nn.Module):
    """x + tanh(attn_gate) * o_proj(xattn(norm(x), user tokens)), then + tanh(ff_gate) * mlp(x) for the
    tokens of requests with a user (a zero attention output marks a user without tokens)."""

    def __init__(self, *, dim: int, dim_context: int, heads: int, dim_head: int, ff_mult: int,
                 cache_config: Any, prefix: str) -> None:  # fmt: skip
        super().__init__()
        inner = heads * dim_head
        self.norm = nn.LayerNorm(dim)
        self.q_proj = nn.Linear(dim, inner, bias=False)
        self.k_proj = nn.Linear(dim_context, inner, bias=False)
        self.v_proj = nn.Linear(dim_context, inner, bias=False)
        self.o_proj = nn.Linear(inner, dim, bias=False)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.mlp = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, dim * ff_mult, bias=False), nn.GELU(),
            nn.Linear(dim * ff_mult, dim, bias=False),
        )  # fmt: skip
        self.ff_gate = nn.Parameter(torch.zeros(1))
        self.attn = CrossAttention(
            heads, dim_head, dim_head**-0.5, num_kv_heads=heads, cache_config=cache_config,
            prefix=f"{prefix}.attn", attn_type=AttentionType.ENCODER_DECODER,
        )  # fmt: skip

    def forward(self, x: torch.Tensor, user_tokens: torch.Tensor | None) -> torch.Tensor:
        """x (N, D); user_tokens (M, Du) at prefill, None at decode steps (keys/values are cached)."""
        q = self.q_proj(self.norm(x))  # (N, H*Dh)
        k = v = None
        if user_tokens is not None:
            k, v = self.k_proj(user_tokens), self.v_proj(user_tokens)  # (M, H*Dh)
        out = self.attn(q, k, v)  # (N, H*Dh); exactly 0 for a request whose user tokens are all 0
        has_user = (out != 0).any(dim=-1, keepdim=True).to(x.dtype)  # (N, 1)
        x = x + self.attn_gate.tanh() * self.o_proj(out)
        return x + self.ff_gate.tanh() * self.mlp(x) * has_user


# --- the "user" modality: one (L, Du) tensor per request ---


class UserTokenItems(ProcessorBatchItems[torch.Tensor]):
    """Passed straight to the model as `user_tokens` (1, L, Du): there is no HF processor to call."""

    def __init__(self, data: Any) -> None:
        super().__init__([data] if isinstance(data, torch.Tensor) else list(data), MODALITY)

    def get_processor_data(self) -> Mapping[str, object]:
        return {}

    def get_passthrough_data(self) -> Mapping[str, object]:
        return {"user_tokens": torch.stack([torch.as_tensor(t) for t in self.get_all()])}


class UserDataParser(MultiModalDataParser):
    def _get_subparsers(self) -> Mapping[str, Any]:
        return {MODALITY: UserTokenItems}


class UserProcessingInfo(BaseProcessingInfo):
    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {MODALITY: 1}

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        return {MODALITY: int(_spec(self.get_hf_config())["num_user_tokens"])}

    def get_data_parser(self) -> MultiModalDataParser:
        return UserDataParser()


class UserDummyInputsBuilder(BaseDummyInputsBuilder[UserProcessingInfo]):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return ""

    def get_dummy_mm_data(self, seq_len: int, mm_counts: Mapping[str, int], mm_options: Any = None) -> Any:
        spec = _spec(self.info.get_hf_config())
        if not mm_counts.get(MODALITY, 0):
            return {}
        return {MODALITY: torch.zeros(spec["num_user_tokens"], spec["dim_user"])}


class UserMultiModalProcessor(EncDecMultiModalProcessor[UserProcessingInfo]):
    def create_encoder_prompt(self, prompt: Any, mm_items: Any) -> list[int]:
        return [0]

    def create_decoder_prompt(self, prompt: Any, mm_items: Any) -> Any:
        return prompt

    def build_data_parser(self) -> MultiModalDataParser:
        return UserDataParser()

    def _get_mm_fields_config(self, hf_inputs: Any, hf_processor_mm_kwargs: Any) -> Mapping[str, Any]:
        return dict(user_tokens=MultiModalFieldConfig.batched(MODALITY))

    def _get_prompt_updates(
        self, mm_items: Any, hf_processor_mm_kwargs: Any, out_mm_kwargs: Any
    ) -> Sequence[Any]:
        n = int(_spec(self.info.get_hf_config())["num_user_tokens"])
        return [PromptReplacement(modality=MODALITY, target=[0], replacement=[0] * n)]


# --- the model ---


@MULTIMODAL_REGISTRY.register_processor(
    UserMultiModalProcessor, info=UserProcessingInfo, dummy_inputs=UserDummyInputsBuilder
)
class UserLLMCrossAttentionForCausalLM(LlamaForCausalLM, SupportsMultiModal):
    """vLLM's Llama + `xattn.{i}` blocks run before decoder layer i."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        config = vllm_config.model_config.hf_config
        spec = _spec(config)
        self.xattn = nn.ModuleDict(
            {
                str(i): GatedCrossAttention(
                    dim=config.hidden_size,
                    dim_context=spec["dim_user"],
                    heads=spec["heads"],
                    dim_head=spec["dim_head"],
                    ff_mult=spec["ff_mult"],
                    cache_config=vllm_config.cache_config,
                    prefix=f"{prefix}xattn.{i}",
                )  # fmt: skip
                for i in spec["cross_attn_layers"]
            }
        )

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        return None

    def get_language_model(self) -> nn.Module:
        return self.model

    def embed_input_ids(self, input_ids: torch.Tensor, multimodal_embeddings: Any = None,
                        is_multimodal: Any = None) -> torch.Tensor:  # fmt: skip
        return self.model.embed_input_ids(input_ids)

    def embed_multimodal(self, **kwargs: object) -> list[torch.Tensor]:
        """The encoder: the identity over each request's (L, Du) user tokens."""
        tokens = kwargs.get("user_tokens")
        if tokens is None:
            return []
        rows = list(tokens) if isinstance(tokens, list | tuple) else list(tokens.unbind(0))
        return [t.reshape(-1, t.shape[-1]).to(self.lm_head.weight.dtype) for t in rows]

    def forward(  # type: ignore[override]
        self, input_ids: torch.Tensor | None, positions: torch.Tensor, intermediate_tensors: Any = None,
        inputs_embeds: torch.Tensor | None = None, encoder_outputs: list[torch.Tensor] | None = None,
        **kwargs: object,
    ) -> torch.Tensor:  # fmt: skip
        user_tokens = torch.cat(encoder_outputs) if encoder_outputs else None  # (M, Du) at prefill
        hidden = inputs_embeds if inputs_embeds is not None else self.model.embed_input_ids(input_ids)
        residual = None
        for i, layer in enumerate(self.model.layers):
            block = self.xattn[str(i)] if str(i) in self.xattn else None
            if block is not None:
                if residual is not None:
                    hidden, residual = hidden + residual, None
                hidden = block(hidden, user_tokens)
            hidden, residual = layer(positions, hidden, residual)
        hidden, _ = self.model.norm(hidden, residual)
        return hidden
