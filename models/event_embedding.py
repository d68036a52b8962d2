"""Per-event fusion of ID-based features into one vector for the user encoder.

USER-LLM (Ning, Liu et al., 2024, arXiv 2402.13598): each event has several features
(item id, categories, rating, ...); each feature gets its own embedding table and the embeddings
are fused into one vector per event before the autoregressive encoder.

Fusion modes (`EventEmbeddingConfig.fusion`):
  - "early" (default): concatenate the feature embeddings, one linear projection to d_model.
  - "late": each feature goes through its own small tower (Linear -> GELU -> Linear to d_model)
    and the towers' outputs are summed. A *sum of linear* projections would be the same function
    class as concat + linear (a block matrix), so the per-feature non-linearity is what makes
    this a distinct, later fusion point.
Multi-valued features (e.g. a movie's genres) embed each value and take the mean over the
non-padding values; an event with no values gets a zero vector.

Shapes: B batch, T events, K values per multi-valued feature, E feature embedding dim, D d_model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

__all__ = ["EventEmbedding", "EventEmbeddingConfig", "FeatureConfig", "coerce_features"]

Fusion = Literal["early", "late"]


@dataclass(frozen=True)
class FeatureConfig:
    """One ID-based event feature."""

    name: str  # key in the collated features dict, e.g. "item"
    vocab_size: int  # ids in [0, vocab_size): 0 = padding, 1 = unknown, >= 2 real values
    multi_valued: bool = False  # True: each event has a list of ids, input (B, T, K)
    dim: int = 32  # embedding width E of this feature

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("feature name must be non-empty")
        if self.vocab_size < 3:
            raise ValueError(
                f"{self.name}: vocab_size must be >= 3 (pad, unknown, one value), got {self.vocab_size}"
            )
        if self.dim < 1:
            raise ValueError(f"{self.name}: dim must be >= 1, got {self.dim}")


def coerce_features(features: Any) -> tuple[FeatureConfig, ...]:
    """Accept FeatureConfigs or their `asdict` form (e.g. from config.json); return a tuple."""
    return tuple(f if isinstance(f, FeatureConfig) else FeatureConfig(**f) for f in features)


def default_features() -> tuple[FeatureConfig, ...]:
    """MovieLens-like defaults; real vocabulary sizes come from the data pipeline."""
    return (
        FeatureConfig(name="item", vocab_size=10_000, dim=64),
        FeatureConfig(name="category", vocab_size=32, multi_valued=True, dim=32),
        FeatureConfig(name="rating", vocab_size=8, dim=16),  # 0 pad, 1 unknown, 2..6 = ratings 1..5
    )


def validate_features(features: tuple[FeatureConfig, ...]) -> None:
    if not features:
        raise ValueError("at least one feature is required")
    names = [f.name for f in features]
    if len(set(names)) != len(names):
        raise ValueError(f"feature names must be unique, got {names}")


@dataclass(frozen=True)
class EventEmbeddingConfig:
    """Event features and how they are fused into one d_model vector per event."""

    features: tuple[FeatureConfig, ...] = field(default_factory=default_features)  # event features
    d_model: int = 128  # output width D (the user encoder width; paper: 128)
    fusion: Fusion = "early"  # "early" = concat + linear; "late" = sum of per-feature towers

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", coerce_features(self.features))  # lists/dicts from JSON
        validate_features(self.features)
        if self.d_model < 1:
            raise ValueError(f"d_model must be >= 1, got {self.d_model}")
        if self.fusion not in ("early", "late"):
            raise ValueError(f"fusion must be 'early' or 'late', got {self.fusion!r}")

    @property
    def concat_dim(self) -> int:
        """Width of the concatenated feature embeddings (early fusion input)."""
        return sum(f.dim for f in self.features)

    @classmethod
    def tiny(cls, fusion: Fusion = "early") -> EventEmbeddingConfig:
        return cls(features=tiny_features(), d_model=32, fusion=fusion)


def tiny_features() -> tuple[FeatureConfig, ...]:
    """Small vocabularies for tests."""
    return (
        FeatureConfig(name="item", vocab_size=99, dim=16),
        FeatureConfig(name="category", vocab_size=12, multi_valued=True, dim=8),
        FeatureConfig(name="rating", vocab_size=8, dim=8),
    )


# --- module ---


class FeatureEmbedding(nn.Module):
    """Embedding table for one feature; multi-valued inputs are mean-pooled over non-padding ids."""

    def __init__(self, *, vocab_size: int, dim: int, multi_valued: bool) -> None:
        super().__init__()
        self.multi_valued = multi_valued
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=0)

    def forward(self, ids: Tensor) -> Tensor:
        """ids (B, T) or (B, T, K) long -> (B, T, E)."""
        if ids.dim() != (3 if self.multi_valued else 2):
            raise ValueError(
                f"expected {'(B, T, K)' if self.multi_valued else '(B, T)'} ids, got {tuple(ids.shape)}"
            )
        if not self.multi_valued:
            return self.embed(ids)  # (B, T, E)
        emb = self.embed(ids)  # (B, T, K, E); padding rows are zero (padding_idx)
        count = (ids != 0).sum(dim=-1, keepdim=True).clamp(min=1)  # (B, T, 1)
        return emb.sum(dim=-2) / count.to(emb.dtype)  # (B, T, E)


class EventEmbedding(nn.Module):
    """Embed every feature of every event and fuse them into one d_model vector per event."""

    def __init__(self, config: EventEmbeddingConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = nn.ModuleDict(
            {
                f.name: FeatureEmbedding(vocab_size=f.vocab_size, dim=f.dim, multi_valued=f.multi_valued)
                for f in config.features
            }
        )
        if config.fusion == "early":
            self.proj = nn.Linear(config.concat_dim, config.d_model)
        else:
            self.towers = nn.ModuleDict(
                {
                    f.name: nn.Sequential(
                        nn.Linear(f.dim, config.d_model), nn.GELU(), nn.Linear(config.d_model, config.d_model)
                    )
                    for f in config.features
                }
            )

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        """Fuse the event features.

        Args:
            features: name -> (B, T) long, or (B, T, K) long for multi-valued features (0 = padding).

        Returns:
            (B, T, D) event vectors (padding events are not zero; mask them downstream).
        """
        missing = [f.name for f in self.config.features if f.name not in features]
        if missing:
            raise KeyError(f"missing event features {missing}")
        per_feature = {
            f.name: self.embeddings[f.name](features[f.name]) for f in self.config.features
        }  # (B, T, E)
        if self.config.fusion == "early":
            return self.proj(torch.cat(list(per_feature.values()), dim=-1))  # (B, T, D)
        return torch.stack([self.towers[n](e) for n, e in per_feature.items()]).sum(dim=0)  # (B, T, D)
