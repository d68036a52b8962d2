"""Baselines in the same harness and split as USER-LLM: most-popular and sequence-only.

  - most-popular: items ranked by their number of TRAIN events (ties: item id ascending), the same
    list for everyone; favourite genre = the most common favourite genre of the training users.
  - sequence-only: the pretrained user encoder's own next-item head at the last real history event,
    i.e. a SASRec-style next-item model (Kang & McAuley, 2018) on ID features; favourite genre from its
    category head (training/evaluate.py `encoder_scorers`).

Reference anchor (pmixer/SASRec.pytorch on ML-100K, maxlen 50, full ranking): Recall@10 0.066 /
NDCG@10 0.027 over all items, 0.130 / 0.066 excluding the history; most-popular Recall@10 0.029 (all)
/ 0.050 (excluding history). training/results.py prints these beside ours.

    python -m training baselines --checkpoint=checkpoints/encoder --out_dir=results/baselines
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch
from torch import Tensor

from training.config import EvalConfig
from training.corpus import Corpus, load_corpus_for
from training.data import Example, favourite_categories
from training.evaluate import (
    command_line,
    encoder_scorers,
    evaluate_genre,
    evaluate_next_item,
    load_encoder,
    write_results,
)

__all__ = ["main", "most_popular_scores", "run_baselines"]


def most_popular_scores(corpus: Corpus) -> Tensor:
    """(V,) train-event counts per item id (pad / unknown 0)."""
    vocab = corpus.vocabs["item"]
    counts = Counter(vocab.encode(e.item) for events in corpus.splits.train.values() for e in events)
    scores = torch.zeros(len(vocab))
    for item_id, count in counts.items():
        if item_id >= 2:
            scores[item_id] = float(count)
    return scores


def majority_genre(corpus: Corpus) -> str | None:
    """The most common favourite category over the training timelines (ties: alphabetical)."""
    labels = Counter(favourite_categories(corpus.splits.train).values())
    return min(labels, key=lambda c: (-labels[c], c)) if labels else None


def run_baselines(
    corpus: Corpus,
    examples: Sequence[Example],
    *,
    ks: Sequence[int],
    encoder: Any = None,
    batch_size: int = 128,
    history_events: int = 0,
) -> list[dict[str, Any]]:
    """Results of most-popular (always) and sequence-only (when an encoder is given; it reads the newest
    `history_events` events when that is smaller than its window)."""
    popular = most_popular_scores(corpus)
    genre = majority_genre(corpus)
    results = [
        {
            "model": "most-popular (train counts)",
            "next_item": evaluate_next_item(
                lambda chunk: popular.expand(len(chunk), -1), corpus, examples, ks=ks, batch_size=batch_size
            ),
            "favourite_category": evaluate_genre(lambda chunk: [genre] * len(chunk), examples),
        }
    ]
    if encoder is not None:
        score_items, predict_genre = encoder_scorers(encoder, corpus, history_events)
        results.append(
            {
                "model": "sequence-only (pretrained encoder item head)",
                "next_item": evaluate_next_item(score_items, corpus, examples, ks=ks, batch_size=batch_size),
                "favourite_category": evaluate_genre(predict_genre, examples, batch_size=batch_size),
            }
        )
    return results


def main(cfg: EvalConfig) -> list[dict[str, Any]]:
    """Most-popular + sequence-only on the checkpoint's vocabulary and split; writes out_dir/results.*"""
    encoder, _, ck = load_encoder(cfg.checkpoint)
    corpus = load_corpus_for(ck, cfg.dataset, cfg.path, category=cfg.category, max_users=cfg.max_users)
    examples = corpus.examples(cfg.split)
    results = run_baselines(
        corpus, examples, ks=cfg.k_list, encoder=encoder, batch_size=cfg.batch_size,
        history_events=cfg.history_events,
    )  # fmt: skip
    if cfg.label:
        results[-1]["model"] = cfg.label  # name the sequence-only row, e.g. after the encoder's size
    for result in results:
        result.update(
            dataset=corpus.dataset.name, split=cfg.split, checkpoint=str(cfg.checkpoint),
            model_version=ck.model_version, data_sha256=corpus.data_sha256, eval_config=asdict(cfg),
            command=command_line(), train_config=ck.manifest.get("train_config"), group=cfg.group,
        )  # fmt: skip
    write_results(results, cfg.out_dir)
    return results
