"""Batched token generation for different users: one prefill, then one-token steps on the KV cache.

The user context (cross-attention K/V, or the soft-prompt / PPlug prefix) is computed once per call and
reused at every step; the prompts are left-padded so every row's next token sits at the last position.
Greedy when `temperature == 0`, else temperature + top-p (nucleus) sampling with a per-request
`torch.Generator` seeded by `seed`, so a request samples the same tokens whatever batch it is in. An
optional repetition penalty (CTRL) lowers the logits of tokens already in the prompt or the output. A row
whose request was cancelled stops before the next step, and the call ends when every row has stopped.

References: nanoGPT `GPT.generate`; HF `GenerationMixin` (left padding, positions from the mask,
`TopPLogitsWarper`); Holtzman et al. 2020 (nucleus sampling); vLLM `SamplingParams` (per-request seed).

Shapes: B batch, S prompt tokens, V vocab, L user tokens, Du user-token dim.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from models.userllm import UserContext, UserLLM

__all__ = [
    "SERVED_REPETITION_PENALTY",
    "SamplingParams",
    "generate",
    "left_pad",
    "penalize_repetition",
    "sample_next",
    "stream_generate",
]


@dataclass(frozen=True)
class SamplingParams:
    """Per-request decoding settings."""

    max_new_tokens: int = 32  # generated tokens at most (EOS excluded)
    temperature: float = 0.0  # 0 = greedy (argmax); > 0 divides the logits
    top_p: float = 1.0  # nucleus mass kept when sampling; 1 = no truncation
    seed: int | None = None  # seeds this request's torch.Generator; None = the global RNG
    # > 1 lowers the logits of tokens already in the prompt or the output (CTRL; vLLM's semantics)
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if self.repetition_penalty < 1.0:
            raise ValueError(f"repetition_penalty must be >= 1, got {self.repetition_penalty}")
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


SERVED_REPETITION_PENALTY = 1.1  # the service's default (service/schemas.py) and the text evaluation's


# --- helpers ---


def penalize_repetition(logits: Tensor, seen: Tensor, penalties: Tensor) -> Tensor:
    """CTRL's repetition penalty (Keskar et al. 2019; HF `RepetitionPenaltyLogitsProcessor`, vLLM
    `repetition_penalty`): the logit of every seen token is divided by the row's penalty when positive,
    multiplied when negative.

    Args:
        logits: (B, V) next-token logits.
        seen: (B, V) bool, tokens of the row's prompt and output so far.
        penalties: (B,) penalties >= 1 (1 = no change).
    """
    p = penalties.to(logits.dtype)[:, None]  # (B, 1)
    penalized = torch.where(logits > 0, logits / p, logits * p)  # (B, V)
    return torch.where(seen, penalized, logits)


def left_pad(sequences: Sequence[Sequence[int]], *, pad_token_id: int) -> tuple[Tensor, Tensor]:
    """Left-pad token lists -> input_ids (B, S) long and attention_mask (B, S) bool."""
    if not sequences or any(len(s) == 0 for s in sequences):
        raise ValueError("need at least one sequence, none of them empty")
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(sequences), width, dtype=torch.bool)
    for i, seq in enumerate(sequences):
        input_ids[i, width - len(seq) :] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[i, width - len(seq) :] = True
    return input_ids, mask


def sample_next(
    logits: Tensor, params: Sequence[SamplingParams], generators: Sequence[torch.Generator | None]
) -> Tensor:
    """Pick one token per row.

    Args:
        logits: (B, V) next-token logits.
        params: B sampling settings.
        generators: B generators (None = global RNG), used only by sampled rows.

    Returns:
        (B,) long token ids.
    """
    tokens = logits.argmax(dim=-1)  # (B,) greedy for every row; sampled rows are overwritten
    for i, p in enumerate(params):
        if p.temperature == 0:
            continue
        probs = (logits[i].float() / p.temperature).softmax(dim=-1)  # (V,)
        if p.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)  # (V,), (V,)
            keep = sorted_probs.cumsum(-1) - sorted_probs < p.top_p  # mass before each token
            keep[0] = True  # the top token always (a top_p below float32's range rounds to 0)
            sorted_probs = sorted_probs * keep
            choice = torch.multinomial(sorted_probs, 1, generator=generators[i])  # (1,)
            tokens[i] = order[choice[0]]
        else:
            tokens[i] = torch.multinomial(probs, 1, generator=generators[i])[0]
    return tokens


def _eos_ids(llm: UserLLM, eos_token_id: int | Sequence[int] | None) -> set[int]:
    if eos_token_id is None:
        eos_token_id = llm.backbone.config.eos_token_id
    if eos_token_id is None:
        return set()
    return {int(eos_token_id)} if isinstance(eos_token_id, int) else {int(t) for t in eos_token_id}


# --- generation ---


@torch.inference_mode()
def stream_generate(
    llm: UserLLM,
    input_ids: Tensor,
    attention_mask: Tensor,
    *,
    user_tokens: Tensor | None = None,
    user_mask: Tensor | None = None,
    user_context: UserContext | None = None,
    params: SamplingParams | Sequence[SamplingParams] = SamplingParams(),
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int = 0,
    cancelled: Callable[[int], bool] | None = None,
) -> Iterator[list[int | None]]:
    """Generate for a left-padded batch, yielding each step's new token per row.

    Args:
        llm: the contextualized LLM (eval mode).
        input_ids: (B, S) left-padded prompts.
        attention_mask: (B, S), 1/True = real token.
        user_tokens: (B, L, Du) and user_mask (B, L): turned into a context once, here.
        user_context: a ready context instead (e.g. PPlug); None with no user_tokens = bare backbone.
        params: one SamplingParams for all rows, or one per row.
        eos_token_id: stop ids (default: the backbone config's); EOS ends a row and is not yielded.
        pad_token_id: fed to finished rows (their outputs are ignored).
        cancelled: `cancelled(i)` is True once row i's request was cancelled; asked before every
            forward pass after the prefill, a cancelled row finishes as at EOS (no more tokens), and the
            call returns without another forward pass once every row has finished.

    Yields:
        A list of B entries per step: the new token id, or None for rows already finished.
    """
    batch = input_ids.shape[0]
    rows = [params] * batch if isinstance(params, SamplingParams) else list(params)
    if len(rows) != batch:
        raise ValueError(f"got {len(rows)} SamplingParams for {batch} rows")
    if user_tokens is not None:
        if user_context is not None:
            raise ValueError("pass user_tokens or user_context, not both")
        user_context = llm.prepare_user_context(user_tokens, user_mask)  # once per call, reused every step
    if all(p.max_new_tokens == 0 for p in rows):
        return
    device = input_ids.device
    generators = [
        torch.Generator(device=device).manual_seed(p.seed)
        if p.seed is not None and p.temperature > 0
        else None
        for p in rows
    ]
    eos = _eos_ids(llm, eos_token_id)
    mask = attention_mask.bool()  # (B, S)
    out = llm(input_ids, mask, user_context=user_context, use_cache=True, logits_to_keep=1)
    counts = [0] * batch
    finished = [p.max_new_tokens == 0 for p in rows]
    penalties = torch.tensor([p.repetition_penalty for p in rows], device=device)  # (B,)
    seen = None
    if bool((penalties > 1).any()):
        vocab = out.logits.shape[-1]
        seen = torch.zeros(batch, vocab, dtype=torch.bool, device=device)  # (B, V)
        rows_idx, cols = mask.nonzero(as_tuple=True)
        seen[rows_idx, input_ids[rows_idx, cols]] = True  # the prompt's real tokens
    while True:
        logits = out.logits[:, -1]  # (B, V)
        if seen is not None:
            logits = penalize_repetition(logits, seen, penalties)
        tokens = sample_next(logits, rows, generators).tolist()  # B ints
        if seen is not None:
            seen[torch.arange(batch, device=device), torch.tensor(tokens, device=device)] = True
        step: list[int | None] = []
        for i, tok in enumerate(tokens):
            if finished[i] or tok in eos:
                finished[i] = True
                step.append(None)
                continue
            step.append(tok)
            counts[i] += 1
            finished[i] = counts[i] >= rows[i].max_new_tokens
        if any(t is not None for t in step):
            yield step
        if cancelled is not None:
            finished = [f or cancelled(i) for i, f in enumerate(finished)]
        if all(finished):
            return
        feed = torch.tensor([pad_token_id if t is None else t for t in step], device=device)[
            :, None
        ]  # (B, 1)
        mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)  # (B, S_past + 1)
        out = llm(
            feed,
            mask,
            user_context=user_context,
            past_key_values=out.past_key_values,
            use_cache=True,
            logits_to_keep=1,
        )


def generate(
    llm: UserLLM,
    input_ids: Tensor,
    attention_mask: Tensor,
    *,
    user_tokens: Tensor | None = None,
    user_mask: Tensor | None = None,
    user_context: UserContext | None = None,
    params: SamplingParams | Sequence[SamplingParams] = SamplingParams(),
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int = 0,
) -> list[list[int]]:
    """`stream_generate` collected: the new token ids of each row (EOS excluded). Same arguments."""
    result: list[list[int]] = [[] for _ in range(input_ids.shape[0])]
    for step in stream_generate(
        llm,
        input_ids,
        attention_mask,
        user_tokens=user_tokens,
        user_mask=user_mask,
        user_context=user_context,
        params=params,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    ):
        for row, tok in zip(result, step, strict=True):
            if tok is not None:
                row.append(tok)
    return result
