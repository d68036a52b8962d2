"""Pretraining window sampling: every stride window as before, one window per user, each user's newest."""

from __future__ import annotations

from collections import Counter

import pytest

from training.data import Event, build_vocabs, encode_events, sliding_windows
from training.window_sampler import WindowSampler, batch_order

LENGTHS = {"a": 3, "b": 12, "c": 30, "d": 1, "e": 9}  # "d" has nothing to predict
WINDOW = 8


def _timelines() -> dict[str, list[Event]]:
    return {
        user: [Event(item=f"{user}{t}", timestamp=t, rating=4.0, categories=("x",)) for t in range(n)]
        for user, n in LENGTHS.items()
    }


def _sampler(sampling: str, batch_size: int = 2, recent: int = 0) -> WindowSampler:
    timelines = _timelines()
    return WindowSampler(
        timelines, build_vocabs(timelines), window=WINDOW, stride=WINDOW, sampling=sampling,
        batch_size=batch_size, seed=3, recent=recent,
    )  # fmt: skip


def _user_and_span(window: dict) -> tuple[str, int, int]:
    """Which user and which [start, end) of its timeline a window is (the item ids name both)."""
    names = [build_vocabs(_timelines())["item"].decode(i) for i in window["item"]]
    user = names[0][0]
    start, end = int(names[0][1:]), int(names[-1][1:]) + 1
    assert names == [f"{user}{t}" for t in range(start, end)]  # contiguous, in order
    return user, start, end


def test_windows_sampling_reads_the_stride_windows_in_the_seeded_order() -> None:
    sampler = _sampler("windows")
    timelines = _timelines()
    vocabs = build_vocabs(timelines)
    windows = sliding_windows(timelines, window=WINDOW, stride=WINDOW)
    expected = [encode_events(w.events, vocabs) for w in windows]
    assert len(sampler) == len(expected) == 1 + 2 + 4 + 2  # a, b (2), c (4 with the end-aligned one), e (2)
    for step in range(3 * sampler.steps_per_epoch):
        assert sampler.batch(step) == [expected[i] for i in batch_order(step, len(expected), 2, 3)]


@pytest.mark.parametrize("sampling", ["users", "last"])
def test_one_window_per_user_and_epoch_full_when_the_timeline_allows(sampling: str) -> None:
    sampler = _sampler(sampling)
    assert len(sampler) == 4 and sampler.steps_per_epoch == 2  # user "d" (one event) is left out
    for epoch in range(5):
        batch = [w for s in range(2) for w in sampler.batch(epoch * 2 + s)]
        spans = [_user_and_span(w) for w in batch]
        assert sorted(u for u, _, _ in spans) == ["a", "b", "c", "e"]
        for user, start, end in spans:
            assert end - start == min(WINDOW, LENGTHS[user])
            if sampling == "last":
                assert end == LENGTHS[user]
    assert sampler.batch(3) == sampler.batch(3)  # a step reads the same windows every time (resume)


def test_users_sampling_moves_the_window_and_covers_every_event() -> None:
    sampler = _sampler("users")
    ends: dict[str, set[int]] = {u: set() for u in LENGTHS}
    targets: Counter = Counter()
    for step in range(2 * 200):
        for window in sampler.batch(step):
            user, start, end = _user_and_span(window)
            ends[user].add(end)
            targets.update(f"{user}{t}" for t in range(start + 1, end))  # every position predicts the next
    assert ends["c"] == set(range(WINDOW, 31)) and ends["b"] == set(range(WINDOW, 13)) and ends["a"] == {3}
    predictable = {f"{u}{t}" for u, n in LENGTHS.items() if n >= 2 for t in range(1, n)}
    assert set(targets) == predictable


def test_an_unknown_sampling_is_an_error() -> None:
    with pytest.raises(ValueError, match="sampling must be one of"):
        _sampler("random")


@pytest.mark.parametrize("sampling", ["windows", "users", "last"])
def test_recent_keeps_each_users_newest_training_events_only(sampling: str) -> None:
    sampler = _sampler(sampling, recent=10)
    spans = [_user_and_span(w) for s in range(4 * sampler.steps_per_epoch) for w in sampler.batch(s)]
    for user, start, end in spans:  # nothing older than the newest 10 events of any user
        assert start >= max(0, LENGTHS[user] - 10) and end <= LENGTHS[user]
    if sampling == "windows":  # a (3), b (newest 10: 2 windows), c (newest 10: 2), e (9: 2)
        assert len(sampler) == 1 + 2 + 2 + 2
        assert {(u, e) for u, _, e in spans} >= {("b", 12), ("c", 30), ("c", 28)}
    with pytest.raises(ValueError, match="recent"):
        _sampler(sampling, recent=-1)
