"""USER-LLM downstream tasks on top of `models/personalized.py`: model building, batches, losses, scorers.

USER-LLM (Ning, Liu et al., 2024, arXiv 2402.13598) Sec. 4: next-item prediction (a head over the
whole catalogue on the LLM's last hidden state of a short instruction), favourite genre / category
(a classification head, label = most frequent category of the history, ties to the most recent) and
review generation (LM loss on the review text; the target item's name and rating are in the
instruction). The instruction text comes from `models/prompts.py`, shared with the service.

Shapes: B users, T events, S text tokens, I items, C categories, V LLM vocabulary.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from models.features import collate_events
from models.generation import SERVED_REPETITION_PENALTY, SamplingParams, generate, left_pad
from models.lower_layers import lower_states, split_layer
from models.perceiver import PerceiverConfig
from models.personalized import PersonalizedLM, UserLLMConfig
from models.pplug import DEFAULT_QUERY, REVIEW_QUERY, item_text
from models.prompts import instruction, nouns, prompt_ids
from models.user_encoder import UserEncoderConfig
from models.user_tower import UserTowerConfig
from models.userllm import LLMAdapterConfig, UserContext
from training.corpus import Corpus, encoded, history_items
from training.data import Example, favourite_category, format_rating
from training.distill import EncoderTeacher, distillation_loss
from training.distributed import all_ranks, shard_mean
from training.history_text import fit_history

__all__ = ["TaskRunner", "build_config", "default_backbone_dir", "nouns", "training_examples"]

USER_INPUTS = ("embeddings", "text", "none")
IGNORE = -100  # label of prompt and padding positions in the LM loss


def default_backbone_dir() -> str:
    """$USERLLM_BACKBONE_DIR (exported by the Makefile), else the Makefile's default cache folder."""
    cache = os.environ.get("USERLLM_CACHE_DIR", str(Path.home() / ".cache" / "userllm"))
    return os.environ.get("USERLLM_BACKBONE_DIR", str(Path(cache) / "backbones" / "smollm2-135m-instruct"))


def build_config(
    *, encoder: UserEncoderConfig, corpus: Corpus, mode: str, strategy: str, num_user_tokens: int,
    every_n: int, backbone: str, head_user_skip: bool = False, use_perceiver: bool = True,
    cross_attn_layers: tuple[int, ...] = (), encoder_heads: bool = False, head_center: bool = False,
    perceiver_recency: bool = False, last_event_token: bool = False, backbone_dtype: str = "float32",
    prompt_tokens: int = 0,
) -> UserLLMConfig:  # fmt: skip
    """UserLLMConfig around a pretrained encoder: Perceiver width = encoder width; `encoder_heads`:
    factorised heads as wide as the encoder (initialised from its next-event heads by fine-tuning)."""
    d = encoder.d_model
    perceiver = PerceiverConfig(
        num_latents=num_user_tokens, dim_latent=d, heads=4, dim_head=d // 4,
        recency_positions=encoder.window if perceiver_recency else 0,
    )  # fmt: skip
    tower = UserTowerConfig(
        encoder=encoder,
        perceiver=perceiver,
        append_last_event=head_user_skip or last_event_token,
        use_perceiver=use_perceiver,
    )
    llm = LLMAdapterConfig(
        mode=mode, dim_user=tower.dim_user, cross_attn_every_n_layers=every_n, heads=8, dim_head=64,
        cross_attn_layers=cross_attn_layers,
    )  # fmt: skip
    return UserLLMConfig(
        tower=tower, llm=llm, num_items=len(corpus.vocabs["item"]),
        num_categories=max(2, len(corpus.vocabs["category"])), strategy=strategy, backbone=backbone,
        head_user_skip=head_user_skip, head_dim=d if encoder_heads else 0, head_center=head_center,
        backbone_dtype=backbone_dtype, prompt_tokens=prompt_tokens,
    )  # fmt: skip


def training_examples(corpus: Corpus, window: int) -> list[Example]:
    """Every (history, next event) cut of the TRAIN timelines, history cut to the last `window` events."""
    out = []
    for user, events in corpus.splits.train.items():
        for t in range(1, len(events)):
            out.append(Example(user, tuple(events[max(0, t - window) : t]), events[t]))
    return out


@dataclass
class TaskRunner:
    """Prompts, batches and losses of the tasks for one model, tokenizer and corpus."""

    model: PersonalizedLM
    tokenizer: Any
    corpus: Corpus
    max_prompt_tokens: int = 48
    max_review_tokens: int = 48
    reuse_lower: bool = False  # reuse the fixed prompts' states below the first cross-attention layer
    # (models/lower_layers.py); only while those layers are frozen
    user_input: str = "embeddings"  # how the user reaches the LLM: "embeddings" (user tokens / PPlug),
    # "text" (the text-prompt baseline: the history rendered into the prompt) or "none" (not at all)
    text_events: int = 50  # "text": newest events rendered
    text_tokens: int = 1024  # "text": prompt budget in tokens (the oldest events are dropped to fit)
    teacher: EncoderTeacher | None = None  # next-item distillation from the sequence model (distill.py)
    distill: float = 0.0  # weight a of the distillation term (0 = plain cross-entropy)
    distill_temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.user_input not in USER_INPUTS:
            raise ValueError(f"user_input must be one of {USER_INPUTS}, got {self.user_input!r}")
        self._lower: dict[str, Tensor] = {}
        self._sentence: Any = None
        self._text_cache: dict[str, Tensor] = {}
        self.noun, self.category_noun = nouns(self.corpus.dataset.name)
        self.window = self.model.config.tower.encoder.window
        self.texts = {
            "next_item": instruction("next_item", noun=self.noun),
            "favourite_category": instruction("genre", category=self.category_noun),
        }
        self.prompts = {
            task: prompt_ids(self.tokenizer, instruction(key, noun=self.noun, category=self.category_noun))[
                -self.max_prompt_tokens :
            ]
            for task, key in (("next_item", "next_item"), ("favourite_category", "genre"))
        }

    @property
    def device(self) -> torch.device:
        return next(self.model.llm.backbone.parameters()).device

    # --- inputs ---

    def context(self, examples: Sequence[Example], text: str = "") -> UserContext | None:
        """Per-example conditioning: user_tokens of the history, or (mode "pplug") the PPlug prefix of
        the history items' texts weighted by their similarity to the instruction `text`; None unless
        `user_input` is "embeddings"."""
        if self.user_input != "embeddings":
            return None
        if self.model.config.llm.mode == "pplug":
            return self.pplug_context(examples, text)
        seqs = [encoded(ex.history, self.corpus.vocabs, self.window) for ex in examples]
        features, mask = collate_events(seqs, max_len=self.window)
        return self.model.user_context(
            {k: v.to(self.device) for k, v in features.items()}, mask.to(self.device)
        )

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> Tensor:
        """Frozen all-MiniLM-L6-v2 sentence embeddings (B, Dt), cached per text."""
        from models.pplug import SentenceEncoder  # loaded only in PPlug mode

        if self._sentence is None:
            self._sentence = SentenceEncoder()
        missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if missing:
            for t, e in zip(missing, self._sentence.encode(missing), strict=True):
                self._text_cache[t] = e
        return torch.stack([self._text_cache[t] for t in texts]).to(self.device)

    def item_text(self, item_id: str) -> str:
        entry = self.corpus.catalogue.get(item_id) or {}
        return item_text(str(entry.get("title") or item_id), entry.get("categories") or [])

    def pplug_context(self, examples: Sequence[Example], text: str) -> UserContext:
        histories = [[self.item_text(e.item) for e in ex.history[-self.window :]] for ex in examples]
        width = max(1, max(len(h) for h in histories))
        dim = self.model.config.llm.dim_text
        history = torch.zeros(len(examples), width, dim, device=self.device)  # (B, N, Dt)
        mask = torch.zeros(len(examples), width, dtype=torch.bool, device=self.device)  # (B, N)
        for b, texts in enumerate(histories):
            if texts:
                history[b, : len(texts)] = self.embed_texts(texts)
                mask[b, : len(texts)] = True
        query = self.embed_texts([text or DEFAULT_QUERY] * len(examples))  # (B, Dt)
        return self.model.llm.prepare_pplug_context(query, history, mask)

    def fixed_prompt(self, task: str, batch: int) -> tuple[Tensor, Tensor]:
        ids = torch.tensor(self.prompts[task], device=self.device).expand(batch, -1)  # (B, S)
        return ids, torch.ones_like(ids, dtype=torch.bool)

    def lower(self, task: str, batch: int) -> Tensor | None:
        """(B, S, Dl) states of the task's fixed prompt below the first cross-attention layer, computed
        once; None when the user context enters at the input (nothing to reuse)."""
        if split_layer(self.model.llm) == 0:
            return None
        if task not in self._lower:
            with torch.no_grad():
                self._lower[task] = lower_states(self.model.llm, *self.fixed_prompt(task, 1))  # (1, S, Dl)
        return self._lower[task].expand(batch, -1, -1)

    def with_history(self, ex: Example, key: str, **kwargs: Any) -> list[int]:
        """The prompt of instruction `key` with the history text before it (user_input "text")."""
        prompts, _ = fit_history(
            self.tokenizer, self.corpus, ex.history, [(key, {"noun": self.noun, **kwargs})],
            max_events=self.text_events, max_prompt_tokens=self.text_tokens,
        )  # fmt: skip
        return prompts[0]

    def review_prompt(self, ex: Example) -> list[int]:
        item = self.corpus.catalogue.get(ex.target.item) or {}
        title = item.get("title") or ex.target.item
        rating = format_rating(ex.target.rating) or ""
        if self.user_input == "text":
            return self.with_history(ex, "review", title=title, rating=rating)
        return prompt_ids(self.tokenizer, instruction("review", noun=self.noun, title=title, rating=rating))

    # --- losses ---

    def scores(self, examples: Sequence[Example], task: str) -> Tensor:
        """(B, I) next-item or (B, C) category logits (pad / unknown ids get -inf); next-item logits carry
        the encoder's seen bias over the whole history when it has one (`PersonalizedLM.score`)."""
        seen = None
        if task == "next_item" and self.model.tower.encoder.seen_bias is not None:
            seen = history_items([ex.history for ex in examples], self.corpus.vocabs["item"])
        if self.user_input == "text":  # one prompt per user: left-padded, the whole LLM runs
            key = "next_item" if task == "next_item" else "genre"
            prompts = [self.with_history(ex, key, category=self.category_noun) for ex in examples]
            ids, mask = (
                t.to(self.device) for t in left_pad(prompts, pad_token_id=self.tokenizer.pad_token_id)
            )
            items, categories = self.model.score(ids, mask, None, seen=seen)
        else:
            ids, mask = self.fixed_prompt(task, len(examples))
            lower = self.lower(task, len(examples)) if self.reuse_lower else None
            context = self.context(examples, self.texts[task])
            items, categories = self.model.score(ids, mask, context, lower, seen=seen)
        logits = (items if task == "next_item" else categories).float()
        logits[:, :2] = -torch.inf
        return logits

    def labels(self, examples: Sequence[Example], task: str) -> Tensor:
        if task == "next_item":
            ids = [self.corpus.vocabs["item"].encode(ex.target.item) for ex in examples]
        else:
            ids = [self.corpus.vocabs["category"].encode(favourite_category(ex.history)) for ex in examples]
        return torch.tensor(ids, device=self.device)

    def loss(self, examples: Sequence[Example], task: str, *, distill: bool = True) -> Tensor:
        """Mean cross-entropy of one task over the batch (unknown labels ignored), mixed with the
        distillation term when a teacher is set and `distill` (validation reports plain CE). In a
        data-parallel step each mean is over the global batch (training/distributed.py)."""
        if task == "review":
            return self.review_loss(examples)
        labels = self.labels(examples, task)
        labels = torch.where(labels < 2, torch.full_like(labels, IGNORE), labels)
        logits = self.scores(examples, task).clamp(min=-1e4)  # finite at pad / unknown
        ignored = bool((labels == IGNORE).all())
        if all_ranks(ignored):
            return logits.sum() * 0.0
        loss = logits.sum() * 0.0 if ignored else F.cross_entropy(logits, labels, ignore_index=IGNORE)
        loss = shard_mean(loss, (labels != IGNORE).sum())
        if distill and task == "next_item" and self.teacher is not None and self.distill > 0:
            soft = distillation_loss(
                logits, self.teacher.logits(examples, self.device), temperature=self.distill_temperature
            )
            loss = (1 - self.distill) * loss + self.distill * shard_mean(soft, len(examples))
        return loss

    def review_loss(self, examples: Sequence[Example]) -> Tensor:
        """LM loss on the review tokens only (prompt positions ignored), left-padded batch."""
        eos = self.tokenizer.eos_token_id
        seqs, targets = [], []
        for ex in examples:
            prompt = self.review_prompt(ex)
            text = self.tokenizer(ex.target.text or "", add_special_tokens=False)["input_ids"]
            text = [*text[: self.max_review_tokens], eos]
            seqs.append(prompt + text)
            targets.append([IGNORE] * len(prompt) + text)
        ids, mask = left_pad(seqs, pad_token_id=self.tokenizer.pad_token_id)
        labels = torch.full_like(ids, IGNORE)
        for i, target in enumerate(targets):
            labels[i, ids.shape[1] - len(target) :] = torch.tensor(target)
        contexts = self.context(examples, REVIEW_QUERY)
        out = self.model(ids.to(self.device), mask.to(self.device), contexts)
        logits = out.logits[:, :-1].float()  # (B, S - 1, V) predicts token t + 1
        targets = labels[:, 1:].to(self.device)
        loss = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE)
        return shard_mean(loss, (targets != IGNORE).sum())

    @torch.no_grad()
    def generate_reviews(self, examples: Sequence[Example], max_new_tokens: int) -> list[str]:
        """Greedy review generation for the target items of the examples, with the service's repetition
        penalty (as the demo and the text measurements decode)."""
        ids, mask = left_pad(
            [self.review_prompt(ex) for ex in examples], pad_token_id=self.tokenizer.pad_token_id
        )
        context = self.context(examples, REVIEW_QUERY)
        params = SamplingParams(max_new_tokens=max_new_tokens, repetition_penalty=SERVED_REPETITION_PENALTY)
        out = generate(
            self.model.llm, ids.to(self.device), mask.to(self.device), user_context=context, params=params,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
        )  # fmt: skip
        return [self.tokenizer.decode(row, skip_special_tokens=True).strip() for row in out]
