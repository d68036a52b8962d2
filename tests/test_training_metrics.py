"""Full-ranking next-item metrics, exclude-seen protocol, NDCG, accuracy, ROUGE on hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from training.metrics import accuracy, ranking_metrics, rouge, seen_mask, target_ranks

# ids: 0 pad, 1 unk, 2..6 items
SCORES = torch.tensor(
    [
        [9.0, 9.0, 0.1, 0.5, 0.3, 0.5, 0.2],  # pad / unk scores must be ignored
        [0.0, 0.0, 0.9, 0.8, 0.7, 0.6, 0.5],
    ]
)


def test_full_ranking_counts_every_item_and_breaks_ties_by_id() -> None:
    # row 0, target 5 (0.5): item 3 ties at 0.5 with a smaller id -> ranks before; pad/unk ignored
    # row 1, target 6: items 2..5 score higher
    ranks = target_ranks(SCORES, torch.tensor([5, 6]))
    assert ranks.tolist() == [1, 4]
    assert target_ranks(SCORES, torch.tensor([3, 2])).tolist() == [0, 0]


def test_exclude_history_removes_seen_items_and_seen_targets_are_misses() -> None:
    seen = seen_mask([[3, 2], [2, 3, 4]], num_items=7)
    assert seen.tolist()[0] == [False, False, True, True, False, False, False]
    ranks = target_ranks(SCORES, torch.tensor([5, 6]), exclude=seen)
    assert ranks.tolist() == [0, 1]  # row 1: only item 5 left above item 6
    # a target the user has already seen cannot be recommended under exclude-seen: a miss
    assert target_ranks(SCORES, torch.tensor([3, 6]), exclude=seen).tolist()[0] == 7


def test_unknown_and_padding_targets_are_misses() -> None:
    assert target_ranks(SCORES, torch.tensor([1, 0])).tolist() == [7, 7]


def test_recall_and_ndcg_by_hand() -> None:
    ranks = torch.tensor([0, 1, 3, 20])
    out = ranking_metrics(ranks, ks=(1, 5, 10), ndcg_ks=(10,))
    assert out["recall@1"] == pytest.approx(1 / 4)
    assert out["recall@5"] == pytest.approx(3 / 4)
    assert out["recall@10"] == pytest.approx(3 / 4)
    expected = (1.0 + 1 / math.log2(3) + 1 / math.log2(5) + 0.0) / 4
    assert out["ndcg@10"] == pytest.approx(expected)


def test_accuracy_and_rouge() -> None:
    assert accuracy(["a", "b", None], ["a", "c", None]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        accuracy(["a"], [])
    same = rouge(["the film was great fun"], ["the film was great fun"])
    assert same == {"rouge1": pytest.approx(1.0), "rougeL": pytest.approx(1.0)}
    partial = rouge(["great film"], ["the film was great"])
    assert partial["rouge1"] == pytest.approx(2 * (2 / 2) * (2 / 4) / ((2 / 2) + (2 / 4)))
    assert partial["rougeL"] < partial["rouge1"]  # "great film" vs "film ... great": LCS 1


def test_paired_bootstrap_gain_and_interval() -> None:
    from training.metrics import paired_bootstrap, rouge, rouge_pairs

    better = paired_bootstrap([0.2, 0.4, 0.6, 0.8], [0.1, 0.2, 0.3, 0.4])
    assert better["gain"] == pytest.approx(1.0) and better["low"] == pytest.approx(1.0) == better["high"]
    mixed = paired_bootstrap([0.5, 0.1, 0.5, 0.1], [0.1, 0.5, 0.1, 0.5])
    assert mixed["gain"] == pytest.approx(0.0) and mixed["low"] < 0 < mixed["high"]
    with pytest.raises(ValueError):
        paired_bootstrap([0.1], [0.1, 0.2])
    pairs = rouge_pairs(["a gift for my brother", "nice"], ["bought as gift for my brother", "nice"])
    assert pairs[1] == {"rouge1": 1.0, "rougeL": 1.0} and 0 < pairs[0]["rougeL"] < 1
    assert rouge(["a", "b"], ["a", "c"]) == {"rouge1": 0.5, "rougeL": 0.5}
