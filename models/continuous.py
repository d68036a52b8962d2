"""Iteration-level (continuous) batching of generation: requests join a running decode at the next
step and leave it as soon as they finish, instead of a batch that starts together and ends with its
slowest request.

`DecodeBatch` holds the rows being decoded (KV cache, attention mask, user context, sampling state).
`join` prefills new left-padded prompts and merges them into the batch: the shorter of the two KV
caches gets empty (masked) columns so both have the same length, then rows are concatenated; the
user contexts (cross-attention K/V, or the soft-prompt / PPlug prefix) are concatenated alike. With a
prefix the cache holds the prefix first, so the empty columns go right after it, where the text's
left padding is. `step` samples each row's next token from its pending logits, drops the rows that
finished (EOS, `max_new_tokens`) or were cancelled, and runs one forward pass for the others.
A row decodes the same tokens as `models.generation.stream_generate` would give it alone (greedy, or
sampled with its own seeded generator), wherever it joins (tests/test_continuous.py).

Based on: Orca (Yu et al., OSDI 2022, iteration-level scheduling) and the padded "concatenate /
filter" batches of Hugging Face text-generation-inference's first Python server (no paged memory).

Shapes: B rows, T cache columns (prefix P + text), V vocab.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import DynamicCache

from models.generation import SamplingParams, _eos_ids, penalize_repetition, sample_next
from models.userllm import UserContext, UserLLM

__all__ = ["DecodeBatch", "Emitted", "cat_contexts"]


@dataclass
class _Row:
    key: Hashable
    params: SamplingParams
    generator: torch.Generator | None
    count: int = 0  # tokens emitted


@dataclass(frozen=True)
class Emitted:
    """What one step gave a row: its new token (None when it ended without one) and whether it ended."""

    key: Hashable
    token: int | None
    finished: bool


def _insert_columns(t: Tensor, n: int, at: int, dim: int) -> Tensor:
    """`t` with `n` zero (False) slices inserted before index `at` of `dim`."""
    if n == 0:
        return t
    shape = list(t.shape)
    shape[dim] = n
    head, tail = t.narrow(dim, 0, at), t.narrow(dim, at, t.shape[dim] - at)
    return torch.cat([head, t.new_zeros(shape), tail], dim=dim)


def cat_contexts(a: UserContext | None, b: UserContext | None) -> UserContext | None:
    """Rows of `a` then rows of `b` (both None, or both with the same fields)."""
    if a is None or b is None:
        if a is not b:
            raise ValueError("cannot join rows with a user context and rows without one")
        return None

    def cat(x: Tensor | None, y: Tensor | None) -> Tensor | None:
        return None if x is None or y is None else torch.cat([x, y])

    kv = tuple(
        (torch.cat([ka, kb]), torch.cat([va, vb])) for (ka, va), (kb, vb) in zip(a.kv, b.kv, strict=True)
    )
    return UserContext(
        kv, cat(a.kv_mask, b.kv_mask), cat(a.prefix, b.prefix), cat(a.prefix_mask, b.prefix_mask),
        cat(a.user_summary, b.user_summary),
    )  # fmt: skip


class DecodeBatch:
    """The rows a model is decoding, for one thread (not thread-safe)."""

    def __init__(
        self, llm: UserLLM, *, pad_token_id: int = 0, eos_token_id: int | Sequence[int] | None = None
    ) -> None:
        self.llm = llm
        self.pad_token_id = pad_token_id
        self.eos = _eos_ids(llm, eos_token_id)
        self.rows: list[_Row] = []
        self.cache: DynamicCache | None = None  # (B, H, T, Dh) per layer
        self.mask: Tensor | None = None  # (B, T - P) bool over the text columns of the cache
        self.context: UserContext | None = None
        self.logits: Tensor | None = None  # (B, V) each row's next-token logits, not sampled yet
        self.seen: Tensor | None = None  # (B, V) bool: prompt + output tokens (repetition penalty)

    def __len__(self) -> int:
        return len(self.rows)

    def _prefix_len(self) -> int:
        ctx = self.context
        return 0 if ctx is None or ctx.prefix is None else int(ctx.prefix.shape[1])

    @torch.inference_mode()
    def join(
        self,
        keys: Sequence[Hashable],
        input_ids: Tensor,
        attention_mask: Tensor,
        params: Sequence[SamplingParams],
        context: UserContext | None,
    ) -> None:
        """Prefill new rows and add them to the batch; their first tokens come with the next `step`.

        Args:
            keys: one hashable per new row (how `step` names it).
            input_ids: (N, S) left-padded prompts; attention_mask (N, S), True = real token.
            params: N sampling settings.
            context: the new rows' user context (None only if the batch has none either).
        """
        if not (len(keys) == input_ids.shape[0] == len(params)):
            raise ValueError(f"{len(keys)} keys, {input_ids.shape[0]} prompts and {len(params)} params")
        device = input_ids.device
        mask = attention_mask.bool()
        out = self.llm(input_ids, mask, user_context=context, use_cache=True, logits_to_keep=1)
        logits = out.logits[:, -1]  # (N, V)
        seen = torch.zeros_like(logits, dtype=torch.bool)  # (N, V)
        rows_idx, cols = mask.nonzero(as_tuple=True)
        seen[rows_idx, input_ids[rows_idx, cols]] = True
        rows = [
            _Row(k, p, torch.Generator(device=device).manual_seed(p.seed)
                 if p.seed is not None and p.temperature > 0 else None)
            for k, p in zip(keys, params, strict=True)
        ]  # fmt: skip
        cache = out.past_key_values
        assert isinstance(cache, DynamicCache)
        if not self.rows:
            self.rows, self.cache, self.mask, self.context = rows, cache, mask, context
            self.logits, self.seen = logits, seen
            return
        assert self.cache is not None and self.mask is not None and self.logits is not None
        assert self.seen is not None
        prefix = self._prefix_len()
        width = max(self.mask.shape[1], mask.shape[1])
        pad_old, pad_new = width - self.mask.shape[1], width - mask.shape[1]
        merged = DynamicCache()
        for i, (old, new) in enumerate(zip(self.cache.layers, cache.layers, strict=True)):
            merged.update(
                torch.cat([_insert_columns(old.keys, pad_old, prefix, 2),
                           _insert_columns(new.keys, pad_new, prefix, 2)]),
                torch.cat([_insert_columns(old.values, pad_old, prefix, 2),
                           _insert_columns(new.values, pad_new, prefix, 2)]),
                i,
            )  # fmt: skip
        self.cache = merged
        self.mask = torch.cat(
            [_insert_columns(self.mask, pad_old, 0, 1), _insert_columns(mask, pad_new, 0, 1)]
        )
        self.context = cat_contexts(self.context, context)
        self.logits = torch.cat([self.logits, logits])
        self.seen = torch.cat([self.seen, seen])
        self.rows += rows

    def drop(self, keys: set[Hashable]) -> None:
        """Remove rows (finished or cancelled) and the text columns no remaining row uses."""
        keep = [i for i, r in enumerate(self.rows) if r.key not in keys]
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self.cache = self.mask = self.context = self.logits = self.seen = None
            return
        assert self.cache is not None and self.mask is not None and self.logits is not None
        assert self.seen is not None
        index = torch.tensor(keep, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        first = int(mask.any(0).nonzero()[0])  # leading columns that are padding in every kept row
        prefix = self._prefix_len()
        cols = torch.cat([torch.arange(prefix), prefix + torch.arange(first, mask.shape[1])]).to(index.device)
        cache = DynamicCache()
        for i, layer in enumerate(self.cache.layers):
            cache.update(
                layer.keys.index_select(0, index).index_select(2, cols),
                layer.values.index_select(0, index).index_select(2, cols),
                i,
            )
        self.cache, self.mask = cache, mask[:, first:]
        self.context = None if self.context is None else self.context.select(index)
        self.logits, self.seen = self.logits.index_select(0, index), self.seen.index_select(0, index)

    @torch.inference_mode()
    def step(self, cancelled: set[Hashable] | None = None) -> list[Emitted]:
        """One token for every row: sample, drop the rows that ended (EOS, `max_new_tokens`, or in
        `cancelled`: those end without a token), then one forward pass for the rows left."""
        if cancelled:
            self.drop(cancelled)
        if not self.rows:
            return []
        assert self.logits is not None and self.seen is not None and self.mask is not None
        penalties = torch.tensor([r.params.repetition_penalty for r in self.rows], device=self.logits.device)
        logits = self.logits
        if bool((penalties > 1).any()):
            logits = penalize_repetition(logits, self.seen, penalties)
        tokens = sample_next(logits, [r.params for r in self.rows], [r.generator for r in self.rows]).tolist()
        emitted, ended = [], set()
        for row, tok in zip(self.rows, tokens, strict=True):
            if row.params.max_new_tokens == 0 or tok in self.eos:
                emitted.append(Emitted(row.key, None, True))
                ended.add(row.key)
                continue
            row.count += 1
            done = row.count >= row.params.max_new_tokens
            emitted.append(Emitted(row.key, tok, done))
            if done:
                ended.add(row.key)
        device = self.seen.device
        self.seen[torch.arange(len(tokens), device=device), torch.tensor(tokens, device=device)] = True
        fed = {e.key: e.token for e in emitted}
        self.drop(ended)
        if self.rows:
            assert self.mask is not None
            feed = torch.tensor([[fed[r.key]] for r in self.rows], device=self.mask.device)  # (B, 1)
            self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=1)
            out = self.llm(
                feed, self.mask, user_context=self.context, past_key_values=self.cache, use_cache=True,
                logits_to_keep=1,
            )  # fmt: skip
            self.cache = out.past_key_values  # type: ignore[assignment]
            self.logits = out.logits[:, -1]
        return emitted
