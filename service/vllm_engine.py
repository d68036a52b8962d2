"""The vLLM engine of the generation server (`USERLLM_ENGINE=vllm`): decoding in vLLM, the user
context, scoring and history encoding in PyTorch, on the same checkpoint.

Soft prompt (and PPlug): the torch model projects the user tokens into the LLM's input-embedding space
and builds each request's prompt embeddings, the real prefix slots followed by the prompt's token
embeddings (models/prompt_embeds.py, on the engine loop's thread: `EngineLoop.embed`); vLLM decodes
from them (`enable_prompt_embeds=True`; mixed mode: the prompt's token ids ride along with
`prompt_is_token_ids`, so vLLM's repetition penalty sees them as the PyTorch engine's does; the prefix
slots count as token 0 there). A user without tokens is sent as plain token ids.
Cross-attention (experimental): the checkpoint is exported once into a vLLM model folder and decoded
by the `vllm_userllm` plugin (an encoder-decoder request whose encoder input is the user tokens; zeros
for a user without tokens). vLLM runs the frozen backbone from its folder, so checkpoints that change
its weights (strategies "full" and "lora") are refused at start-up.

Next-item and genre scoring stay on the PyTorch path (`EngineLoop.score`): the heads read the last
hidden state of a fixed prompt and score the whole catalogue in one batched forward pass (with
cross-attention, above the reused lower layers); vLLM's generate API returns token log-probs, not
hidden states, and its pooling runner would be a second vLLM engine with its own copy of the backbone
for one forward pass per request, which the PyTorch engine already batches.

In-process, not a separate server: `AsyncLLM` runs its engine core (scheduler, KV cache, model) in a
child process and its client on the generation server's event loop, so `generate` is an async
iterator of text deltas that maps onto the existing streaming (`job.on_text`) and cancellation (a
cancelled or closed iterator aborts the request in vLLM at its next step). A separate `vllm serve`
would add an HTTP hop, a second health check and a prompt-embeds wire format (base64 `torch.save`)
for nothing the server needs. vLLM is imported only here, only when this engine starts.

Based on: vLLM `AsyncLLM` (`vllm/v1/engine/async_llm.py`) and its prompt-embeds inputs
(`EmbedsPrompt`, docs "Prompt Embedding Inputs"); the async client of vLLM's OpenAI server
(`build_async_engine_client`: built in the lifespan, shut down after it).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.generation import SamplingParams
from models.personalized import UserLLMConfig
from models.prompt_embeds import PREFIX_MODES
from service import metrics
from service.encoding import Encoded
from service.engine import TorchEngine
from service.errors import EngineOverloaded, EngineUnavailable
from service.jobs import GenerateJob, GenerateResult, ScoreJob, ScoreResult
from service.scheduler import EngineLoop, start_engine_loop
from service.settings import Settings
from service.user_store import StoredEvent

log = logging.getLogger("userllm.vllm")

FROZEN_LLM_STRATEGIES = ("enc", "proj")  # the backbone's own weights: what vLLM loads from its folder
MAX_LOGPROBS = 20  # top log-probs a caller may ask per generated token


@dataclass
class Decoded:
    """One vLLM decode: text, generated token ids (EOS excluded) and, when asked, per-step top log-probs."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[int, float]] = field(default_factory=list)  # per token: token id -> log-prob


def check_servable(config: UserLLMConfig) -> None:
    """Raise ValueError when a checkpoint of this config cannot decode in vLLM (the reason in the message)."""
    if config.llm.mode not in (*PREFIX_MODES, "cross_attention"):
        raise ValueError(f"USERLLM_ENGINE=vllm cannot serve mode {config.llm.mode!r}")
    if config.strategy not in FROZEN_LLM_STRATEGIES:
        raise ValueError(
            f"USERLLM_ENGINE=vllm loads the frozen backbone; strategy {config.strategy!r} changed its "
            f"weights (servable: {FROZEN_LLM_STRATEGIES}; use USERLLM_ENGINE=torch)"
        )


def plugin_installed() -> bool:
    """The `vllm_userllm` plugin (cross-attention in vLLM) is registered where vLLM looks for it."""
    return any(e.value == "vllm_userllm:register" for e in entry_points(group="vllm.general_plugins"))


def model_folder(engine: TorchEngine, settings: Settings) -> Path:
    """The folder vLLM loads: the backbone's (prefix modes), or the cross-attention checkpoint exported
    once per `model_version` into `cache_dir/vllm-models/` by `vllm_userllm.export`."""
    if engine.model.config.llm.mode != "cross_attention":
        return settings.resolved_backbone_dir
    if not plugin_installed():
        raise ValueError("cross-attention on vLLM needs the vllm_userllm plugin installed (make vllm-env)")
    from vllm_userllm.export import export

    folder = settings.cache_dir / "vllm-models" / engine.model_version
    if not (folder / "userllm_adapters.safetensors").is_file():
        export(settings.userllm_checkpoint, settings.resolved_backbone_dir, folder)
    return folder


def engine_args(engine: TorchEngine, settings: Settings, folder: Path) -> dict[str, Any]:
    """`AsyncEngineArgs` of the model folder for this checkpoint and these settings."""
    config = engine.model.config
    cross = config.llm.mode == "cross_attention"
    prefix = {"soft_prompt": config.tower.num_user_tokens, "pplug": 2}.get(config.llm.mode, 0)
    positions = int(engine.model.llm.backbone.config.max_position_embeddings)
    args: dict[str, Any] = dict(
        model=str(folder),
        tokenizer=str(settings.resolved_backbone_dir),
        dtype=config.backbone_dtype,  # as in training, as the PyTorch engine loads it
        enable_prompt_embeds=not cross,  # vLLM refuses prompt embeddings for encoder-decoder models
        max_model_len=min(positions, prefix + settings.max_prompt_tokens + settings.max_new_tokens_limit),
        max_num_seqs=settings.max_batch_size,
        max_logprobs=MAX_LOGPROBS,
        enforce_eager=not settings.vllm_compile,
        generation_config="vllm",  # sampling defaults come from each request, not generation_config.json
        seed=0,
        disable_log_stats=True,
    )
    if engine.device == "cpu":
        args["kv_cache_memory_bytes"] = int(settings.vllm_kv_cache_gib * 2**30)
    else:
        args["gpu_memory_utilization"] = settings.vllm_gpu_memory_utilization
    return args


class VllmEngine:
    """An `EngineClient` (service/engine_client.py): `generate` in vLLM; `score`, `encode` and the
    prompt embeddings on an `EngineLoop` over the PyTorch engine."""

    def __init__(self, torch_engine: TorchEngine, loop: EngineLoop, llm: Any, *, max_queue: int) -> None:
        self.torch_engine, self.loop, self.llm, self.max_queue = torch_engine, loop, llm, max_queue
        eos = torch_engine.model.llm.backbone.config.eos_token_id
        self.cross_attention = torch_engine.model.config.llm.mode == "cross_attention"
        self.eos = {int(eos)} if isinstance(eos, int) else {int(t) for t in eos or ()}
        self._ids = itertools.count()
        self.active = 0  # generate calls in progress

    @classmethod
    def start(cls, torch_engine: TorchEngine, settings: Settings) -> VllmEngine:
        """Start vLLM's engine core (a child process; tens of seconds) and the torch engine loop.
        Call on the server's event loop (`AsyncLLM` binds its output handler to it)."""
        check_servable(torch_engine.model.config)
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        folder = model_folder(torch_engine, settings)
        llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_args(torch_engine, settings, folder)))
        loop = start_engine_loop(torch_engine, settings)
        return cls(torch_engine, loop, llm, max_queue=settings.max_queue)

    @property
    def alive(self) -> bool:
        return self.loop.alive and not self.llm.errored

    async def stop(self) -> None:
        await self.loop.stop()
        self.llm.shutdown()

    async def score(self, job: ScoreJob) -> ScoreResult:
        return await self.loop.score(job)

    async def encode(self, history: list[StoredEvent]) -> Encoded:
        return await self.loop.encode(history)

    async def generate(self, job: GenerateJob) -> GenerateResult:
        if not self.alive:
            raise EngineUnavailable("the vLLM engine is not running")
        if self.active >= self.max_queue:
            raise EngineOverloaded(f"{self.max_queue} generations are in progress; retry later")
        self.active += 1
        try:
            if self.cross_attention:  # the user tokens are the encoder input; a cold-start user's are zeros
                embeds, users = None, self.user_tokens(job)
            else:
                embeds, users = await self.loop.embed(job), None
            out = await self.decode(
                job.prompt,
                embeds,
                job.params,
                on_text=job.on_text,
                stop=job.cancelled.is_set,
                user_tokens=users,
            )
        except asyncio.CancelledError:
            metrics.CANCELLED.labels("generate").inc()
            raise
        finally:
            self.active -= 1
        return GenerateResult(out.text.strip(), len(job.prompt), len(out.token_ids))

    # --- vLLM requests ---

    def user_tokens(self, job: GenerateJob) -> torch.Tensor:
        """(L, Du) float32 user tokens of a cross-attention request; zeros for a user without tokens
        (the plugin's blocks then add exactly nothing, as the PyTorch engine's masked rows)."""
        if job.user.user_tokens is None:
            return torch.zeros(self.torch_engine.user_token_shape)
        return torch.from_numpy(job.user.user_tokens.astype(np.float32))

    @staticmethod
    def request(
        prompt: Sequence[int], embeds: torch.Tensor | None, user_tokens: torch.Tensor | None = None
    ) -> dict[str, Any]:
        """vLLM's prompt: token ids alone; or the (P' + S, Dl) embeddings with the prompt's ids at
        their positions (mixed mode; the P' prefix slots are marked as embeddings only); or, for the
        cross-attention plugin, an encoder-decoder prompt whose encoder input is the (L, Du) user tokens."""
        if user_tokens is not None:
            return {
                "encoder_prompt": {"prompt_token_ids": [0], "multi_modal_data": {"user": user_tokens}},
                "decoder_prompt": {"prompt_token_ids": list(prompt)},
            }
        if embeds is None:
            return {"prompt_token_ids": list(prompt)}
        n_prefix = embeds.shape[0] - len(prompt)
        if n_prefix < 0:
            raise ValueError(f"{embeds.shape[0]} prompt embeddings for a prompt of {len(prompt)} tokens")
        return {
            "prompt_embeds": embeds,
            "prompt_token_ids": [0] * n_prefix + list(prompt),
            "prompt_is_token_ids": [False] * n_prefix + [True] * len(prompt),
        }

    @staticmethod
    def sampling(params: SamplingParams, logprobs: int | None = None) -> Any:
        """vLLM `SamplingParams` with our semantics: greedy at temperature 0, nucleus sampling with a
        per-request seed, CTRL repetition penalty over prompt and output, text as deltas."""
        from vllm import SamplingParams as VllmSamplingParams
        from vllm.sampling_params import RequestOutputKind

        return VllmSamplingParams(
            max_tokens=params.max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            seed=params.seed,
            repetition_penalty=params.repetition_penalty,
            logprobs=logprobs,
            skip_special_tokens=True,
            output_kind=RequestOutputKind.DELTA,
        )

    async def decode(
        self,
        prompt: Sequence[int],
        embeds: torch.Tensor | None,
        params: SamplingParams,
        *,
        on_text: Callable[[str], None] | None = None,
        stop: Callable[[], bool] | None = None,
        logprobs: int | None = None,
        user_tokens: torch.Tensor | None = None,
    ) -> Decoded:
        """Decode one request in vLLM: text pieces to `on_text` as they come; `stop()` true (checked at
        each piece) or a cancelled call aborts the request in vLLM. `logprobs`: also the top-k raw
        log-probs of every step (at most MAX_LOGPROBS)."""
        if params.max_new_tokens == 0:
            return Decoded("")
        out = Decoded("")
        stream = self.llm.generate(
            self.request(prompt, embeds, user_tokens),
            self.sampling(params, logprobs),
            f"userllm-{next(self._ids)}",
        )
        try:
            async with contextlib.aclosing(stream):  # leaving early aborts the request in vLLM
                async for step in stream:
                    completion = step.outputs[0]
                    out.token_ids.extend(completion.token_ids)
                    for top in completion.logprobs or ():
                        out.logprobs.append({int(t): float(lp.logprob) for t, lp in top.items()})
                    if completion.text:
                        out.text += completion.text
                        if on_text is not None:
                            on_text(completion.text)
                    if stop is not None and stop():
                        break
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self.llm.errored:
                raise EngineUnavailable(f"the vLLM engine died: {type(exc).__name__}: {exc}") from exc
            raise
        if out.token_ids and out.token_ids[-1] in self.eos:
            out.token_ids.pop()  # as the PyTorch engine counts: EOS ends a decode, it is not output
        return out
