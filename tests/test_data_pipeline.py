"""Vocabularies, encoding, leave-last-out, sliding windows, k-core and favourite-category labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from data_fixtures import movielens_root_fixture  # noqa: F401

from training.data import (
    PAD_ID,
    UNK_ID,
    Dataset,
    Event,
    Item,
    Vocab,
    build_vocabs,
    encode_events,
    favourite_categories,
    favourite_category,
    k_core,
    leave_last_out,
    load_movielens,
    sliding_windows,
)

FIXTURES = Path(__file__).parent / "fixtures" / "data"


def _ev(item: str, t: int, *cats: str, rating: float | None = 4.0) -> Event:
    return Event(item=item, timestamp=t, rating=rating, categories=cats)


def _timeline(n: int, user: str = "u") -> dict[str, list[Event]]:
    return {user: [_ev(str(i), i) for i in range(n)]}


# --- vocab ---


def test_vocab_specials_order_and_round_trip() -> None:
    vocab = Vocab.build(["10", "2", "b", "2", "a"])
    assert vocab.tokens == ("<pad>", "<unk>", "2", "10", "a", "b")  # numeric ids as integers first
    assert (vocab.pad_id, vocab.unk_id) == (PAD_ID, UNK_ID) == (0, 1)
    assert vocab.encode("10") == 3 and vocab.encode("zzz") == UNK_ID and vocab.encode(None) == UNK_ID
    assert vocab.decode(3) == "10" and len(vocab) == 6 and "a" in vocab
    restored = Vocab.from_dict(json.loads(json.dumps(vocab.to_dict())))
    assert restored == vocab and restored.encode("b") == 5
    with pytest.raises(IndexError):
        vocab.decode(6)
    with pytest.raises(ValueError):
        Vocab.from_dict({"tokens": ["x"]})
    assert Vocab.build(["a", "a", "b"], min_count=2).tokens == ("<pad>", "<unk>", "a")


def test_build_vocabs_and_encode_events(movielens_root: Path) -> None:
    ds = load_movielens(movielens_root / "ml-10m")
    vocabs = build_vocabs(ds)
    assert set(vocabs) == {"item", "category", "rating"}
    assert vocabs["rating"].tokens[2:] == ("0.5", "3.5", "4.5", "5.0")  # numeric order, canonical strings
    assert vocabs["item"].tokens[2:] == ("122", "185", "231", "292")
    events = ds.timelines["1"] + [_ev("999", 0, "Nope", rating=None)]
    encoded = encode_events(events, vocabs)
    assert set(encoded) == {"item", "category", "rating"}
    assert [vocabs["item"].decode(i) for i in encoded["item"][:3]] == [e.item for e in ds.timelines["1"]]
    assert encoded["item"][-1] == UNK_ID and encoded["rating"][-1] == UNK_ID
    assert encoded["category"][-1] == [UNK_ID]
    comedy = vocabs["category"].encode("Comedy")
    assert comedy in encoded["category"][0] or comedy in encoded["category"][1]
    assert all(isinstance(ids, list) for ids in encoded["category"])


def test_review_length_feature_buckets_and_encodes() -> None:
    from models.vocab import LENGTH_TOKENS, length_bucket

    assert [length_bucket(" ".join(["w"] * n)) for n in (0, 1, 2, 3, 10, 11, 80, 81, 500)] == [
        "0 words", "1-2 words", "1-2 words", "3-5 words", "6-10 words", "11-20 words", "41-80 words",
        "81+ words", "81+ words",
    ]  # fmt: skip
    assert length_bucket(None) is None and LENGTH_TOKENS[0] == "0 words" and LENGTH_TOKENS[-1] == "81+ words"
    timeline = {"u": [_ev("1", 0, "A")]}
    assert "length" not in build_vocabs(timeline) and "length" not in encode_events(
        timeline["u"], build_vocabs(timeline)
    )
    vocabs = build_vocabs(timeline, length=True)
    assert vocabs["length"].tokens[2:] == LENGTH_TOKENS  # fixed: texts of any length encode
    events = [Event("1", 0, 4.0, ("A",), text="great read"), Event("1", 1, 4.0, ("A",), text=None)]
    encoded = encode_events(events, vocabs)["length"]
    assert [vocabs["length"].decode(i) for i in encoded] == ["1-2 words", "<unk>"]


def test_encoding_of_event_without_category_is_empty_list() -> None:
    vocabs = build_vocabs({"u": [_ev("1", 0, "A")]})
    assert encode_events([_ev("1", 1)], vocabs)["category"] == [[]]


# --- leave-last-out ---


def test_leave_last_out_small_timeline() -> None:
    timelines = {"a": [_ev(str(i), i) for i in range(5)], "b": [_ev("x", 1), _ev("y", 2)]}
    splits = leave_last_out(timelines)
    assert [e.item for e in splits.train["a"]] == ["0", "1", "2"]
    (valid,), (test,) = splits.valid, splits.test
    assert (valid.user, valid.target.item, [e.item for e in valid.history]) == ("a", "3", ["0", "1", "2"])
    assert (test.target.item, [e.item for e in test.history]) == ("4", ["0", "1", "2", "3"])
    # fewer than 3 events: everything in train, no held-out example
    assert [e.item for e in splits.train["b"]] == ["x", "y"]
    assert all(example.user != "b" for example in splits.valid + splits.test)
    with pytest.raises(ValueError):
        leave_last_out(timelines, min_events=2)


def test_leave_last_out_on_real_fixture() -> None:
    ds = load_movielens(FIXTURES / "ml-latest-small")
    splits = leave_last_out(ds)
    events = ds.timelines["2"]
    assert splits.test[0].target == events[-1] and splits.valid[0].target == events[-2]
    assert len(splits.train["2"]) == len(events) - 2


# --- windows ---


def test_sliding_windows_cover_and_end_at_last_event() -> None:
    windows = sliding_windows(_timeline(120), window=50)
    assert [(w.start, len(w.events)) for w in windows] == [(0, 50), (50, 50), (70, 50)]
    assert windows[-1].events[-1].item == "119"
    strided = sliding_windows(_timeline(60), window=50, stride=5)
    assert [w.start for w in strided] == [0, 5, 10]
    assert [len(w.events) for w in sliding_windows(_timeline(7), window=50)] == [7]
    assert sliding_windows(_timeline(1)) == []  # nothing to predict
    assert [w.start for w in sliding_windows(_timeline(100), window=50)] == [0, 50]
    with pytest.raises(ValueError):
        sliding_windows(_timeline(5), window=0)


# --- k-core ---


def test_k_core_is_iterative() -> None:
    # items: A seen by u1,u2,u3; B by u1,u2; C only by u3. With k=2: C goes, then u3 has 1 event -> goes,
    # then A has 2 users left; result: u1, u2 with A and B.
    timelines = {
        "u1": [_ev("A", 1), _ev("B", 2)],
        "u2": [_ev("A", 1), _ev("B", 3)],
        "u3": [_ev("A", 2), _ev("C", 4)],
    }
    items = {name: Item(name) for name in "ABC"}
    ds = Dataset("toy", timelines, items)
    core = k_core(ds, 2)
    assert sorted(core.timelines) == ["u1", "u2"]
    assert sorted(core.items) == ["A", "B"]
    assert core.counters["k_core_removed_events"] == 2
    assert k_core(ds, 3).timelines == {}
    assert k_core(ds, 1).timelines == timelines


# --- favourite category ---


def test_favourite_category_counts_and_ties_to_most_recent() -> None:
    assert favourite_category([_ev("1", 1, "A"), _ev("2", 2, "B"), _ev("3", 3, "A")]) == "A"
    assert favourite_category([_ev("1", 1, "A"), _ev("2", 2, "B")]) == "B"  # tie -> most recent
    assert favourite_category([_ev("1", 1, "B"), _ev("2", 2, "A")]) == "A"
    assert favourite_category([_ev("1", 1, "A", "B"), _ev("2", 2, "B", "A")]) == "B"  # same event: first
    assert favourite_category([_ev("1", 1), _ev("2", 2)]) is None
    assert favourite_categories({"u": [_ev("1", 1, "X")], "v": [_ev("1", 1)]}) == {"u": "X"}
