"""collate_events: right padding, keep the last max_len events, multi-valued categories."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from models.features import collate_events


def _seq(items: list[int], cats: list[list[int]] | None = None) -> dict[str, list]:
    cats = cats if cats is not None else [[2 + i % 3] for i in range(len(items))]
    return {"item": items, "category": cats, "rating": [2 + i % 5 for i in range(len(items))]}


def test_shapes_dtypes_and_right_padding() -> None:
    feats, mask = collate_events([_seq([5, 6, 7], [[2, 3], [4], []]), _seq([9])], max_len=50)
    assert mask.dtype == torch.bool and mask.shape == (2, 3)
    assert_close(mask, torch.tensor([[True, True, True], [True, False, False]]))
    assert feats["item"].dtype == torch.long
    assert_close(feats["item"], torch.tensor([[5, 6, 7], [9, 0, 0]]))
    assert feats["category"].shape == (2, 3, 2)  # K = widest event in the batch
    assert_close(feats["category"][0], torch.tensor([[2, 3], [4, 0], [0, 0]]))
    assert_close(feats["rating"][1], torch.tensor([2, 0, 0]))


def test_keeps_last_events_and_truncates_categories() -> None:
    seq = _seq(list(range(2, 12)), [[c, c + 1, c + 2] for c in range(10)])
    feats, mask = collate_events([seq], max_len=4, max_categories=2)
    assert mask.all() and mask.shape == (1, 4)
    assert_close(feats["item"][0], torch.tensor([8, 9, 10, 11]))
    assert_close(feats["category"][0, 0], torch.tensor([6, 7]))
    assert_close(feats["rating"][0], torch.tensor(seq["rating"][-4:]))


def test_empty_history_and_errors() -> None:
    feats, mask = collate_events([_seq([])], max_len=5)
    assert mask.shape == (1, 1) and not mask.any()
    assert feats["category"].shape == (1, 1, 1)
    with pytest.raises(ValueError):
        collate_events([{"item": [2, 3], "category": [[2]], "rating": [2, 2]}])  # ragged features
    with pytest.raises(ValueError):
        collate_events([])
    with pytest.raises(ValueError):
        collate_events([_seq([2])], max_len=0)


def test_user_side_models_import_no_service_packages() -> None:
    """STYLE 1: models/ stays pure PyTorch (checked in a fresh interpreter)."""
    code = (
        "import sys, models.attention, models.features, models.event_embedding, models.user_encoder, "
        "models.perceiver\n"
        "bad = {'fastapi', 'redis', 'pydantic', 'transformers', 'pydantic_settings'} & set(sys.modules)\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
