"""Checkpoint directories: file set, strict loading, atomic writes, round trip."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from models.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_state_strict,
    save_checkpoint,
    trainable_state_dict,
)


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def test_round_trip_gives_identical_state_and_outputs(tmp_path) -> None:
    model = _model()
    version = save_checkpoint(
        tmp_path / "ck",
        model.state_dict(),
        config={"dim": 4},
        kind="toy",
        trainable_only=False,
        manifest={"seed": 1},
        extras={"vocab": {"a": 2}},
    )
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [
        "config.json",
        "manifest.json",
        "model.safetensors",
        "vocab.json",
    ]
    ck = load_checkpoint(tmp_path / "ck")
    assert ck.model_version == version and version.startswith("toy-")
    assert ck.config == {"dim": 4} and ck.extras == {"vocab": {"a": 2}} and ck.manifest["seed"] == 1
    other = _model()
    load_state_strict(other, ck.state_dict)
    x = torch.randn(5, 4)
    torch.testing.assert_close(other(x), model(x), rtol=0, atol=0)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(ck.state_dict[k], v, rtol=0, atol=0)


def test_model_version_tracks_the_weights(tmp_path) -> None:
    model = _model()
    v1 = save_checkpoint(tmp_path / "a", model.state_dict(), config={}, kind="toy", trainable_only=False)
    v2 = save_checkpoint(tmp_path / "b", model.state_dict(), config={}, kind="toy", trainable_only=False)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    v3 = save_checkpoint(tmp_path / "c", model.state_dict(), config={}, kind="toy", trainable_only=False)
    assert v1 == v2 != v3


def test_strict_loading_rejects_missing_unexpected_and_shapes(tmp_path) -> None:
    state = _model().state_dict()
    with pytest.raises(CheckpointError, match="missing keys"):
        load_state_strict(_model(), {k: v for k, v in state.items() if k != "2.bias"})
    with pytest.raises(CheckpointError, match="unexpected keys"):
        load_state_strict(_model(), {**state, "extra.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_state_strict(_model(), {**state, "2.bias": torch.zeros(5)})


def test_trainable_only_subset(tmp_path) -> None:
    model = _model()
    model[0].requires_grad_(False)
    sub = trainable_state_dict(model)
    assert sorted(sub) == ["2.bias", "2.weight"]
    save_checkpoint(tmp_path / "t", sub, config={}, kind="toy", trainable_only=True)
    fresh = _model()
    load_state_strict(fresh, load_checkpoint(tmp_path / "t").state_dict, subset=True)
    torch.testing.assert_close(fresh[2].weight, model[2].weight, rtol=0, atol=0)


def test_broken_directories_name_the_file(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope")
    save_checkpoint(tmp_path / "ck", _model().state_dict(), config={}, kind="toy", trainable_only=False)
    (tmp_path / "ck" / "manifest.json").write_text("{\n  bad", encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"manifest.json:2: invalid JSON"):
        load_checkpoint(tmp_path / "ck")
    (tmp_path / "ck" / "manifest.json").write_text(json.dumps({"model_version": "x"}), encoding="utf-8")
    with pytest.raises(CheckpointError, match="missing keys"):
        load_checkpoint(tmp_path / "ck")
