"""Most-popular baseline and the evaluation harness on a toy data set, computed by hand."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from training_fixtures import pretrain_tiny_encoder

from training.baselines import main, majority_genre, most_popular_scores, run_baselines
from training.config import EvalConfig
from training.corpus import Corpus, build_catalogue
from training.data import Dataset, Event, Item, build_vocabs, leave_last_out


def _toy() -> Corpus:
    def ev(item: str, t: int, genre: str = "Drama") -> Event:
        return Event(item=item, timestamp=t, rating=4.0, categories=(genre,))

    timelines = {
        # train part = all but the last two events
        "u1": [ev("10", 1), ev("20", 2), ev("30", 3), ev("10", 4), ev("40", 5)],  # valid 10, test 40
        "u2": [ev("20", 1), ev("10", 2), ev("30", 3, "Comedy"), ev("20", 4)],  # valid 30, test 20
        "u3": [ev("20", 1, "Comedy"), ev("30", 2), ev("50", 3)],  # valid 30, test 50 (unseen item)
    }
    items = {i: Item(i, f"Movie {i}", ("Drama",)) for i in ("10", "20", "30", "40", "50")}
    dataset = Dataset("toy", timelines, items)
    splits = leave_last_out(dataset)
    vocabs = build_vocabs(splits.train)
    return Corpus(
        dataset, splits, vocabs, build_catalogue(dataset, splits.train, vocabs["item"]), "0" * 64, []
    )


def test_most_popular_counts_train_events_only() -> None:
    corpus = _toy()
    vocab = corpus.vocabs["item"]
    assert vocab.tokens[2:] == ("10", "20", "30")  # 40 and 50 occur only in held-out events
    scores = most_popular_scores(corpus)
    # train: u1 10 20 30, u2 20 10, u3 20 -> 20: 3, 10: 2, 30: 1
    assert scores.tolist() == [0.0, 0.0, 2.0, 3.0, 1.0]
    assert set(corpus.catalogue) == {"10", "20", "30"}


def test_most_popular_metrics_by_hand() -> None:
    corpus = _toy()
    (popular,) = run_baselines(corpus, corpus.splits.test, ks=(1, 2))
    ni = popular["next_item"]
    assert ni["users"] == 3 and ni["unknown_targets"] == 2  # targets 40 and 50 are not in the vocabulary
    # all items: ranking 20 > 10 > 30; u2's target 20 is at rank 0; the unknown targets are misses
    assert ni["all_items"] == {"recall@1": pytest.approx(1 / 3), "recall@2": pytest.approx(1 / 3),
                               "ndcg@2": pytest.approx(1 / 3)}  # fmt: skip
    # excluding history: u2 has seen 20 (its own target) -> a miss
    assert ni["exclude_history"]["recall@2"] == 0.0
    # per-user target ranks (what `compare` pairs): a miss is ranked V = 5 (pad, unknown, 3 items)
    assert ni["ranks"] == {"user": ["u1", "u2", "u3"], "all_items": [5, 0, 5], "exclude_history": [5, 5, 5]}


def test_majority_genre_baseline() -> None:
    corpus = _toy()
    assert majority_genre(corpus) == "Drama"
    (popular,) = run_baselines(corpus, corpus.splits.test, ks=(1,))
    # favourite genre of the test histories: u1 Drama, u2 Drama (2 vs 1), u3 Drama (tie -> most recent)
    assert popular["favourite_category"] == {"accuracy": pytest.approx(1.0), "users": 3}


def test_baseline_rows_carry_the_group_and_label(tmp_path: Path) -> None:
    encoder = pretrain_tiny_encoder(tmp_path)
    cfg = EvalConfig(checkpoint=str(encoder), out_dir=str(tmp_path / "out"), max_users=12,
                     group="a subset", label="tiny encoder")  # fmt: skip
    main(cfg)
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["model"] for r in rows] == ["most-popular (train counts)", "tiny encoder"]
    assert [r["group"] for r in rows] == ["a subset", "a subset"]
    assert all(r["next_item"]["users"] == 12 for r in rows)


def test_encoder_scorer_marks_the_whole_history_as_seen_beyond_the_window() -> None:
    """With the seen bias, the sequence-only scores = the plain head's + b at every item of the user's
    history, items older than the encoder's window included (item "20" of u1 below)."""
    import torch

    from models.user_encoder import UserEncoder
    from training.config import TrainConfig
    from training.evaluate import encoder_scorers
    from training.pretrain import encoder_config

    corpus = _toy()
    torch.manual_seed(0)
    cfg = encoder_config(TrainConfig.tiny(window=2, seen_bias=True), corpus.vocabs)
    biased = UserEncoder(cfg).eval()
    with torch.no_grad():
        biased.seen_bias.raw.fill_(-0.2)  # b = -10
    plain = UserEncoder(dataclasses.replace(cfg, seen_bias=False)).eval()
    plain.load_state_dict({k: v for k, v in biased.state_dict().items() if not k.startswith("seen_bias")})
    examples = corpus.splits.test
    scores = encoder_scorers(biased, corpus)[0](examples)
    reference = encoder_scorers(plain, corpus)[0](examples)
    item = corpus.vocabs["item"].encode
    u1 = next(i for i, ex in enumerate(examples) if ex.user == "u1")
    assert [e.item for e in examples[u1].history] == ["10", "20", "30", "10"]  # the window holds 30, 10
    for name in ("10", "20", "30"):
        assert float(scores[u1, item(name)] - reference[u1, item(name)]) == pytest.approx(-10.0, abs=1e-4)
    assert float(scores[u1, item("40")] - reference[u1, item("40")]) == pytest.approx(0.0, abs=1e-5)


def test_baselines_read_only_the_newest_history_events_when_asked(tmp_path: Path) -> None:
    """`--history_events` reaches the sequence-only scorer of `baselines` (it was accepted and ignored)."""
    encoder = pretrain_tiny_encoder(tmp_path)
    rows = {}
    for h in (0, 1):
        cfg = EvalConfig(  # NDCG@1000 moves with the rank of every known target
            checkpoint=str(encoder), out_dir=str(tmp_path / f"h{h}"), max_users=12, history_events=h,
            ks="1,1000",
        )
        main(cfg)
        rows[h] = json.loads((tmp_path / f"h{h}" / "results.json").read_text())
        assert rows[h][1]["eval_config"]["history_events"] == h
    assert rows[0][0]["next_item"] == rows[1][0]["next_item"]  # most-popular reads no history
    ndcg = [rows[h][1]["next_item"]["all_items"]["ndcg@1000"] for h in (0, 1)]
    assert ndcg[0] > 0 and ndcg[0] != ndcg[1]  # the encoder read one event instead of its window
