"""EventEmbedding: shapes for both fusions, multi-valued mean pooling, config invariants."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch
from torch.testing import assert_close

from models.event_embedding import EventEmbedding, EventEmbeddingConfig, FeatureConfig, FeatureEmbedding


def _features(b: int = 2, t: int = 5) -> dict[str, torch.Tensor]:
    return {
        "item": torch.randint(2, 99, (b, t)),
        "category": torch.randint(0, 12, (b, t, 3)),
        "rating": torch.randint(2, 8, (b, t)),
    }


@pytest.mark.parametrize("fusion", ["early", "late"])
def test_shapes_and_gradients(fusion: str) -> None:
    model = EventEmbedding(EventEmbeddingConfig.tiny(fusion=fusion))  # type: ignore[arg-type]
    out = model(_features())
    assert out.shape == (2, 5, 32)
    out.sum().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "embed" in n)


def test_early_and_late_fusion_differ_in_structure() -> None:
    early = EventEmbedding(EventEmbeddingConfig.tiny("early"))
    late = EventEmbedding(EventEmbeddingConfig.tiny("late"))
    assert hasattr(early, "proj") and not hasattr(early, "towers")
    assert set(late.towers.keys()) == {"item", "category", "rating"}


def test_multi_valued_mean_ignores_padding() -> None:
    emb = FeatureEmbedding(vocab_size=12, dim=4, multi_valued=True)
    ids = torch.tensor([[[3, 5, 0, 0], [0, 0, 0, 0]]])  # (B=1, T=2, K=4)
    out = emb(ids)
    table = emb.embed.weight
    assert_close(out[0, 0], (table[3] + table[5]) / 2)
    assert_close(out[0, 1], torch.zeros(4))  # no categories -> zero vector
    assert_close(emb(torch.tensor([[[5, 3]]]))[0, 0], out[0, 0])  # order and K do not matter
    with pytest.raises(ValueError):
        emb(torch.tensor([[3, 5]]))  # multi-valued feature needs (B, T, K)


def test_config_invariants_and_json_round_trip() -> None:
    with pytest.raises(ValueError):
        FeatureConfig(name="item", vocab_size=2)
    with pytest.raises(ValueError):
        FeatureConfig(name="item", vocab_size=10, dim=0)
    with pytest.raises(ValueError):
        EventEmbeddingConfig(features=(FeatureConfig("a", 5), FeatureConfig("a", 6)))
    with pytest.raises(ValueError):
        EventEmbeddingConfig(features=())
    with pytest.raises(ValueError):
        EventEmbeddingConfig.tiny(fusion="middle")  # type: ignore[arg-type]
    config = EventEmbeddingConfig.tiny()
    assert EventEmbeddingConfig(**asdict(config)) == config  # dicts from config.json are coerced
    with pytest.raises(KeyError):
        EventEmbedding(config)({"item": torch.ones(1, 2, dtype=torch.long)})
