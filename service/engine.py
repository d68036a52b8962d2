"""The PyTorch engine of the generation server: USER-LLM scoring and generation on CPU or CUDA.

`TorchEngine` holds one loaded `PersonalizedLM` (backbone + adapters + heads + user tower) and the
batch functions the engine loop (service/scheduler.py) calls from its one thread: `score_batch`
scores next-item / genre prompts for many users in one forward pass; `join` prefills generation
requests into a running continuous-batching decode (`decode_batch`, models/continuous.py;
cross-attention keys/values computed once per request); `generate_batch` decodes a batch start to
end the same way (benchmarks, evaluation-style callers). Nothing here runs on the event loop. A
generation job cancelled by its caller (`GenerateJob.cancel`, from any thread) leaves at the next
decoding step, and one cancelled before it starts is not run at all.
In mode "pplug" the cached user vectors are the history's sentence embeddings (service/pplug_runtime.py),
aggregated per request against the embedding of the request's input text (`ScoreJob` task
instruction, `GenerateJob.query`). For the vLLM engine (service/vllm_engine.py) it also computes the
prompt embeddings of soft-prompt / PPlug requests (`prompt_embeds_batch`) and keeps scoring and history
encoding."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.backbone import backbone_id, load_backbone
from models.checkpoint import CheckpointError, load_checkpoint
from models.continuous import DecodeBatch
from models.generation import left_pad
from models.lower_layers import lower_states, split_layer
from models.personalized import PersonalizedLM, UserLLMConfig
from models.pplug import DEFAULT_QUERY, SentenceEncoder
from models.prompt_embeds import PREFIX_MODES, context_prompt_embeds
from models.prompts import SUGGEST_QUESTION, instruction, prompt_ids
from models.userllm import UserContext
from service.codec import FeatureCodec
from service.detokenizer import Detokenizer
from service.encoding import UserTowerRuntime
from service.jobs import GenerateJob, GenerateResult, ScoreJob, ScoreResult, ScoreTask, UserInput
from service.pplug_runtime import PPlugRuntime
from service.user_store import StoredEvent

__all__ = [  # the job types are re-exported: callers import them from here or from service.jobs
    "GenerateJob", "GenerateResult", "ScoreJob", "ScoreResult", "TorchEngine", "UserInput", "resolve_device",
]  # fmt: skip

SPECIAL_IDS = (0, 1)  # <pad>, <unk>: never recommended, never a genre


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("USERLLM_DEVICE=cuda but CUDA is not available")
    return device


class TorchEngine:
    """One model on one device; thread-confined (the engine loop calls it one batch at a time)."""

    def __init__(
        self,
        model: PersonalizedLM,
        tokenizer: Any,
        codec: FeatureCodec,
        model_version: str,
        device: str,
        *,
        noun: str = "movie",
        category_noun: str = "genre",
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.codec = codec
        self.model_version = model_version
        self.device = device
        self.noun, self.category_noun = noun, category_noun
        self.tower: UserTowerRuntime | PPlugRuntime
        if model.config.llm.mode == "pplug":
            window = model.config.tower.encoder.window
            self.tower = PPlugRuntime(SentenceEncoder(), codec, model_version, window, device)
        else:
            self.tower = UserTowerRuntime(model.tower, codec, model_version, device)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        self.score_prompt = prompt_ids(tokenizer, instruction("next_item", noun=noun))
        self.genre_prompt = prompt_ids(tokenizer, instruction("genre", category=category_noun))
        self._lower: dict[str, torch.Tensor] = {}  # fixed prompt -> states below the first xattn layer
        self.score_query = {  # PPlug's input text of each scoring task: its whole instruction, as trained
            "next_item": instruction("next_item", noun=noun),
            "genre": instruction("genre", category=category_noun),
        }

    @classmethod
    def load(cls, checkpoint_dir: Path, backbone_dir: Path, device: str = "auto") -> TorchEngine:
        device = resolve_device(device)
        ck = load_checkpoint(checkpoint_dir)
        config = UserLLMConfig(**ck.config)
        want = ck.manifest.get("backbone_id")
        have = backbone_id(backbone_dir)
        if want and want != have:
            raise CheckpointError(
                f"{checkpoint_dir}: trained on backbone {want}, but {backbone_dir} is {have}"
            )
        dtype = getattr(torch, config.backbone_dtype)  # as in training
        backbone, tokenizer = load_backbone(backbone_dir, device=device, dtype=dtype)
        model = PersonalizedLM(config, backbone).to(device)
        model.load_checkpoint_state(ck)
        codec = FeatureCodec.from_extras(ck.extras["vocab"], ck.extras["catalogue"])
        nouns = ck.extras.get("task", {})
        engine = cls(
            model,
            tokenizer,
            codec,
            ck.model_version,
            device,
            noun=nouns.get("noun", "movie"),
            category_noun=nouns.get("category", "genre"),
        )
        # the scoring prompts exactly as training cut them (their last `prompt_tokens` tokens)
        if config.prompt_tokens:
            engine.score_prompt = engine.score_prompt[-config.prompt_tokens :]
            engine.genre_prompt = engine.genre_prompt[-config.prompt_tokens :]
        return engine

    @property
    def user_token_shape(self) -> tuple[int, int]:
        """(L, Du) of the user tokens this model reads (mode pplug: (window, Dt), the longest)."""
        if isinstance(self.tower, PPlugRuntime):
            return (self.tower.window, self.tower.dim)
        tower = self.model.config.tower
        return (tower.num_user_tokens, tower.dim_user)

    def accepts_tokens(self, shape: tuple[int, ...]) -> bool:
        """Whether cached tokens of `shape` are this model's; others are recomputed, never served."""
        if isinstance(self.tower, PPlugRuntime):
            return self.tower.accepts(shape)
        return tuple(shape) == self.user_token_shape

    # --- helpers ---

    def _context(
        self, users: Sequence[UserInput], *, always: bool = False, queries: Sequence[str] = ()
    ) -> UserContext | None:
        """Stack user tokens; rows without tokens get an all-False mask (the bare backbone's output).
        None when no row has tokens, unless `always` (rows that join a running decode need one).
        Mode pplug: always a context (a row without history gets the instruction slot alone, batched
        or not); `queries` are the rows' input texts (default `DEFAULT_QUERY`)."""
        if isinstance(self.tower, PPlugRuntime):
            return self._pplug_context(users, list(queries) or [DEFAULT_QUERY] * len(users))
        if not always and not any(u.personalized for u in users):
            return None
        shape = next((u.user_tokens.shape for u in users if u.user_tokens is not None), self.user_token_shape)
        tokens = torch.zeros(len(users), *shape)
        mask = torch.zeros(len(users), shape[0], dtype=torch.bool)
        for i, u in enumerate(users):
            if u.user_tokens is not None:
                tokens[i] = torch.from_numpy(u.user_tokens.astype(np.float32))
                mask[i] = True
        return self.model.context_from_tokens(tokens.to(self.device), mask.to(self.device))

    def _pplug_context(self, users: Sequence[UserInput], queries: Sequence[str]) -> UserContext:
        """(B, N, Dt) history embeddings (rows without history all masked) weighed against each row's
        query embedding -> the [instruction, personal] prefix (models/pplug.PPlugAggregator)."""
        assert isinstance(self.tower, PPlugRuntime)
        width = max([1] + [len(u.user_tokens) for u in users if u.user_tokens is not None])
        history = torch.zeros(len(users), width, self.tower.dim)  # (B, N, Dt)
        mask = torch.zeros(len(users), width, dtype=torch.bool)  # (B, N)
        for i, u in enumerate(users):
            if u.user_tokens is not None:
                history[i, : len(u.user_tokens)] = torch.from_numpy(u.user_tokens.astype(np.float32))
                mask[i, : len(u.user_tokens)] = True
        query = self.tower.queries(queries).to(self.device)  # (B, Dt)
        return self.model.llm.prepare_pplug_context(query, history.to(self.device), mask.to(self.device))

    @property
    def seen_bias(self) -> float | None:
        """The score the encoder learned for items already in the user's history (models/seen_bias.py),
        added to their next-item scores when they are not excluded; None when the checkpoint has none."""
        bias = self.model.tower.encoder.seen_bias
        return None if bias is None else float(bias.bias.detach())

    @property
    def max_context(self) -> int:
        """Positions a generation request may fill with prompt + new tokens: the backbone's
        `max_position_embeddings`, less the user prefix in soft-prompt / PPlug mode."""
        config = self.model.config
        prefix = {"soft_prompt": config.tower.num_user_tokens, "pplug": 2}.get(config.llm.mode, 0)
        return int(self.model.llm.backbone.config.max_position_embeddings) - prefix

    def review_prompt(self, item_id: str, rating: float | None) -> list[int]:
        return prompt_ids(
            self.tokenizer, instruction("review", title=self.codec.title(item_id), rating=rating)
        )

    def chat_prompt(self, text: str) -> list[int]:
        return prompt_ids(self.tokenizer, instruction("chat", prompt=text))

    def suggest_prompt(self, question: str, item_id: str | None) -> list[int]:
        """The "suggest" prompt: the question (default models/prompts.py SUGGEST_QUESTION), then the
        catalogue entry of `item_id`, as training wrote it; None: the question alone (a length check
        before the item is known)."""
        if item_id is None:
            return self.chat_prompt(question or SUGGEST_QUESTION.format(noun=self.noun))
        entry = self.codec.catalogue.get(item_id) or {}
        text = instruction(
            "suggest", noun=self.noun, category=self.category_noun, prompt=question,
            title=self.codec.title(item_id), categories=[str(c) for c in entry.get("categories") or []],
        )  # fmt: skip
        return prompt_ids(self.tokenizer, text)

    # --- batch functions (engine thread) ---

    @torch.inference_mode()
    def encode_histories(self, histories: list[list[StoredEvent]]) -> list[np.ndarray]:
        """Recompute user tokens from stored histories (cache miss or other model_version)."""
        return [e.user_tokens for e in self.tower.encode_full(histories)]

    def _lower_states(self, task: ScoreTask) -> torch.Tensor:
        """(1, S, Dl) states of a fixed scoring prompt below the first cross-attention layer: the
        same for every user, computed once (models/lower_layers.py)."""
        if task not in self._lower:
            prompt = self.score_prompt if task == "next_item" else self.genre_prompt
            ids = torch.tensor([prompt], device=self.device)
            self._lower[task] = lower_states(self.model.llm, ids)
        return self._lower[task]

    def _score(
        self, users: Sequence[UserInput], task: ScoreTask, seen: Sequence[set[int]] = ()
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, I) item and (B, C) category logits of `users` on one task's prompt (one prompt for all
        rows: no padding); `seen`: each row's history item ids, given the encoder's learned seen-item
        score by the model (`PersonalizedLM.score`) when the checkpoint has one."""
        prompt = self.score_prompt if task == "next_item" else self.genre_prompt
        ids = torch.tensor([prompt], device=self.device).expand(len(users), -1)  # (B, S)
        mask = torch.ones_like(ids, dtype=torch.bool)
        lower = None
        if split_layer(self.model.llm) > 0:  # cross-attention: skip the user-independent lower layers
            lower = self._lower_states(task).expand(len(users), -1, -1)  # (B, S, Dl)
        context = self._context(users, queries=[self.score_query[task]] * len(users))
        history = None  # (B, T) item ids, 0 = padding
        if any(seen):
            history = torch.zeros(len(seen), max(map(len, seen)), dtype=torch.long, device=self.device)
            for row, items in enumerate(seen):
                history[row, : len(items)] = torch.tensor(sorted(items), dtype=torch.long)
        return self.model.score(ids, mask, context, lower, seen=history)

    @torch.inference_mode()
    def score_batch(self, jobs: list[ScoreJob]) -> list[ScoreResult]:
        results: list[ScoreResult | None] = [None] * len(jobs)
        for task in ("next_item", "genre"):
            index = [i for i, job in enumerate(jobs) if job.task == task]
            if index:
                self._score_task([jobs[i] for i in index], task, index, results)
        return [r for r in results if r is not None]

    def _score_task(
        self, jobs: list[ScoreJob], task: ScoreTask, index: list[int], results: list[ScoreResult | None]
    ) -> None:
        item_logits, cat_logits = self._score([j.user for j in jobs], task, [j.seen for j in jobs])
        item_logits[:, list(SPECIAL_IDS)] = float("-inf")
        cat_probs = cat_logits.float()
        cat_probs[:, list(SPECIAL_IDS)] = float("-inf")
        cat_probs = cat_probs.softmax(-1)
        for i, job in enumerate(jobs):
            row = item_logits[i].float().clone()
            if job.exclude:
                row[torch.tensor(sorted(job.exclude), device=row.device)] = float("-inf")
            k = min(job.k, int(torch.isfinite(row).sum()))
            top = row.topk(k)
            cats = cat_probs[i].topk(min(3, cat_probs.shape[1] - len(SPECIAL_IDS)))
            results[index[i]] = ScoreResult(
                list(zip(top.indices.tolist(), top.values.tolist(), strict=True)),
                list(zip(cats.indices.tolist(), cats.values.tolist(), strict=True)),
            )

    @torch.inference_mode()
    def prompt_embeds_batch(self, jobs: list[GenerateJob]) -> list[torch.Tensor | None]:
        """Each job's (P' + S, Dl) prompt embeddings on the CPU, for the vLLM engine: its user prefix
        (the projected user tokens, or PPlug's [instruction, personal] pair weighed by `job.query`) then
        its prompt's token embeddings (models/prompt_embeds.py); None for a soft-prompt user without
        tokens (the bare prompt: its token ids suffice)."""
        if self.model.config.llm.mode not in PREFIX_MODES:
            raise ValueError(f"mode {self.model.config.llm.mode!r} has no prompt embeddings")
        context = self._context([j.user for j in jobs], queries=[j.query for j in jobs])
        if context is None:
            return [None] * len(jobs)
        rows = context_prompt_embeds(self.model.llm, [j.prompt for j in jobs], context)
        pplug = isinstance(self.tower, PPlugRuntime)  # a PPlug user without history: the instruction slot
        return [
            row.cpu() if pplug or job.user.personalized else None for job, row in zip(jobs, rows, strict=True)
        ]

    def decode_batch(self) -> DecodeBatch:
        """An empty continuous-batching decode of this model (models/continuous.py)."""
        return DecodeBatch(self.model.llm, pad_token_id=self.pad_id)

    @torch.inference_mode()
    def join(self, batch: DecodeBatch, jobs: Sequence[GenerateJob]) -> None:
        """Prefill `jobs` and add them to the running `batch`, keyed by `id(job)`."""
        ids, mask = left_pad([j.prompt for j in jobs], pad_token_id=self.pad_id)
        batch.join(
            [id(j) for j in jobs], ids.to(self.device), mask.to(self.device), [j.params for j in jobs],
            self._context([j.user for j in jobs], always=True, queries=[j.query for j in jobs]),
        )  # fmt: skip

    @torch.inference_mode()
    def generate_batch(self, jobs: list[GenerateJob]) -> list[GenerateResult]:
        """Decode `jobs` together, start to end (the scheduler's continuous batching does the same a
        step at a time); jobs cancelled before the batch starts get an empty result, unrun."""
        live = [job for job in jobs if not job.cancelled.is_set()]
        texts: dict[Hashable, Detokenizer] = {id(j): Detokenizer(self.tokenizer, j.on_text) for j in live}
        batch = self.decode_batch()
        if live:
            self.join(batch, live)
        while len(batch):
            for e in batch.step(cancelled={id(j) for j in live if j.cancelled.is_set()}):
                texts[e.key].add(e.token)
        return [
            texts[id(j)].result(len(j.prompt)) if id(j) in texts else GenerateResult("", len(j.prompt), 0)
            for j in jobs
        ]
