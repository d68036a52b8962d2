"""Offline metrics: next-item Recall@K / NDCG@K with full ranking, accuracy, ROUGE, a paired bootstrap.

Full ranking: every catalogue item (vocabulary ids >= 2) is a candidate, never a sample of negatives
(sampled metrics are inconsistent with the full ones: Krichene & Rendle, KDD 2020). With one held-out
target per user, Recall@K equals HitRate@K and NDCG@K = 1 / log2(rank + 2) when rank < K (0-based).
Ties are broken by item id ascending: a candidate ranks before the target when its score is higher,
or equal with a smaller id (a stable sort by score). Targets that cannot be ranked (unknown item,
or excluded because already in the history under the exclude-seen protocol) count as misses.

References: SASRec (Kang & McAuley, 2018) evaluation (HR@10 / NDCG@10, leave-last-out);
USER-LLM (arXiv 2402.13598) Recall@K; `rouge-score` (Google) for ROUGE-1 / ROUGE-L F1.

Shapes: B users, V item vocabulary (ids 0 pad, 1 unknown, >= 2 items).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "accuracy", "paired_bootstrap", "ranking_metrics", "rouge", "rouge_pairs", "seen_mask", "target_ranks",
]  # fmt: skip

NON_ITEM_IDS = (0, 1)  # padding and unknown are never candidates


def seen_mask(histories: Sequence[Sequence[int]], num_items: int) -> Tensor:
    """(B, V) bool, True where item id occurs in the user's history (the exclude-seen protocol)."""
    mask = torch.zeros(len(histories), num_items, dtype=torch.bool)
    for b, items in enumerate(histories):
        ids = [i for i in items if 0 <= i < num_items]
        if ids:
            mask[b, ids] = True
    return mask


def target_ranks(scores: Tensor, targets: Tensor, exclude: Tensor | None = None) -> Tensor:
    """0-based rank of each target among the candidates; V (a miss at any K) if it cannot be ranked.

    Args:
        scores: (B, V) item scores (higher = better).
        targets: (B,) long target ids.
        exclude: (B, V) bool, candidates removed from the ranking (e.g. `seen_mask`), or None.

    Returns:
        (B,) long: number of candidates ranked before the target (ties: smaller id first).
    """
    b, v = scores.shape
    scores = scores.detach().float().clone()
    scores[:, list(NON_ITEM_IDS)] = -math.inf
    if exclude is not None:
        scores = scores.masked_fill(exclude.to(scores.device), -math.inf)
    targets = targets.to(scores.device).long()
    target_score = scores.gather(1, targets[:, None])  # (B, 1)
    ids = torch.arange(v, device=scores.device)[None, :]  # (1, V)
    before = (scores > target_score) | ((scores == target_score) & (ids < targets[:, None]))  # (B, V)
    ranks = before.sum(dim=1)  # (B,)
    unrankable = torch.isinf(target_score[:, 0]) | (targets < len(NON_ITEM_IDS)) | (targets >= v)
    return torch.where(unrankable, torch.full_like(ranks, v), ranks)


def ranking_metrics(ranks: Tensor, ks: Sequence[int] = (1, 5, 10), ndcg_ks: Sequence[int] = (10,)) -> dict:
    """{"recall@K": mean(rank < K), "ndcg@K": mean(1 / log2(rank + 2) if rank < K)} over users."""
    ranks = ranks.float()
    out: dict[str, float] = {}
    for k in ks:
        out[f"recall@{k}"] = float((ranks < k).float().mean()) if len(ranks) else 0.0
    for k in ndcg_ks:
        gain = torch.where(ranks < k, 1.0 / torch.log2(ranks + 2.0), torch.zeros_like(ranks))
        out[f"ndcg@{k}"] = float(gain.mean()) if len(ranks) else 0.0
    return out


def accuracy(predictions: Sequence[object], labels: Sequence[object]) -> float:
    """Share of equal pairs (0.0 for no pairs)."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    return sum(p == y for p, y in zip(predictions, labels, strict=True)) / len(labels) if labels else 0.0


def rouge_pairs(predictions: Sequence[str], references: Sequence[str]) -> list[dict[str, float]]:
    """ROUGE-1 and ROUGE-L F1 (`rouge-score`, Porter stemming) of each (prediction, reference) pair."""
    from rouge_score import rouge_scorer  # imported only where review generation is evaluated

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    return [
        {key: score.fmeasure for key, score in scorer.score(reference, prediction).items()}
        for prediction, reference in zip(predictions, references, strict=True)
    ]


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1 and ROUGE-L F1 over the pairs (`rouge_pairs`)."""
    pairs = rouge_pairs(predictions, references)
    n = max(1, len(pairs))
    return {key: sum(p[key] for p in pairs) / n for key in ("rouge1", "rougeL")}


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], *, samples: int = 2000, seed: int = 0, relative: bool = True
) -> dict:
    """Gain of mean(a) over mean(b) on the same examples, relative (mean(a) / mean(b) - 1) or, with
    `relative=False`, absolute (mean(a) - mean(b)), with a 95% percentile interval from resampling the
    examples (paired bootstrap)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"need two equally long non-empty score lists, got {len(a)} and {len(b)}")

    def gain(sum_a: float, sum_b: float) -> float:
        if not relative:
            return (sum_a - sum_b) / n
        return sum_a / sum_b - 1 if sum_b else 0.0

    rng = random.Random(seed)
    n, gains = len(a), []
    for _ in range(samples):
        idx = [rng.randrange(n) for _ in range(n)]
        gains.append(gain(sum(a[i] for i in idx), sum(b[i] for i in idx)))
    gains.sort()
    return {"gain": gain(sum(a), sum(b)), "low": gains[int(0.025 * samples)],
            "high": gains[int(0.975 * samples) - 1], "examples": n}  # fmt: skip
