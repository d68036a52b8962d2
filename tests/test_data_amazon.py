"""Amazon 2018 / 2023 loaders: de-duplication, metadata cleaning, errors, the real All_Beauty file.

The fixtures are synthetic (invented ids and text) in the exact 2018 / 2023 formats; see
`tests/fixtures/data/README.md`. The real files are only read from ../shared/data (`shared_data`).
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

from training.data import (
    DataFormatError,
    DatasetNotFoundError,
    load_amazon_2018,
    load_amazon_2023,
    load_dataset,
)
from training.data.amazon import category_feature, clean_title
from training.data.stats import compute_stats

FIXTURES = Path(__file__).parent / "fixtures" / "data"


def _append_gz(path: Path, text: str) -> None:
    data = gzip.decompress(path.read_bytes()).decode()
    path.write_bytes(gzip.compress((data + text).encode()))


def test_2018_dedupe_on_fixture() -> None:
    ds = load_amazon_2018(FIXTURES / "amazon-2018", "All_Beauty")
    # 10 lines: 2 byte-identical repeats, then 3 copies of a (user, text, time) under other asins
    assert ds.counters == {"duplicate_lines": 2, "duplicate_reviews": 3}
    assert ds.num_events == 5
    assert {user: len(events) for user, events in ds.timelines.items()} == {
        "A1SYNTHUSER001": 2,
        "A2SYNTHUSER002": 3,
    }
    last = ds.timelines["A1SYNTHUSER001"][-1]
    assert (last.item, last.rating, last.summary) == ("B0SYNTH001", 5.0, "Five Stars")
    assert last.text == "Does what it says. Fair price"  # the first copy (B0SYNTH001) is kept, not B0SYNTH002
    # same user, same day, same item, two different texts: both kept, file order
    tied = ds.timelines["A2SYNTHUSER002"][:2]
    assert [e.item for e in tied] == ["B0SYNTH004", "B0SYNTH004"]
    assert tied[0].text == "Too large for my soap dish, it keeps sliding off."
    assert "B0SYNTH002" not in {e.item for events in ds.timelines.values() for e in events}
    assert ds.items["B0SYNTH001"].title is None  # no metadata file for All_Beauty


def test_2018_metadata_titles_categories_and_feature() -> None:
    ds = load_amazon_2018(FIXTURES / "amazon-2018", "Magazine_Subscriptions")
    assert ds.name == "amazon-2018-Magazine_Subscriptions"
    assert ds.counters == {"duplicate_lines": 0, "duplicate_reviews": 2}
    item = ds.items["B0SYNTHM01"]
    assert item.title == "Synthetic Press, Inc."  # HTML-debris title -> brand
    assert item.categories == ("Magazine Subscriptions", "Technology", "Computers & Internet")  # &amp;
    assert ds.items["B0SYNTHM07"].categories[1] == "Fashion & Style"
    assert ds.items["B0SYNTHM05"].title == "Synthetic Motoring Monthly"  # a real title is kept
    assert len(ds.items) == 10  # the repeated metadata line counts once
    user = ds.timelines["A3SYNTHREADER1"]
    assert [e.categories for e in user][:2] == [("Technology",), ("Fashion & Style",)]  # level 2
    assert user[0].text is None and user[0].summary == "Best hardware magazine around"  # no reviewText
    other = ds.timelines["A4SYNTHREADER2"]
    assert [e.item for e in other] == ["B0SYNTHM02", "B0SYNTHM03", "B0SYNTHM08"]  # copies on M09, M10 gone
    assert other[-1].categories == ()  # empty category list


def test_category_feature_and_title_rules() -> None:
    assert category_feature(("A", "B", "C")) == ("B",)
    assert category_feature(("A",)) == ("A",)
    assert category_feature((), "Main") == ("Main",)
    assert category_feature(()) == ()
    assert clean_title('<span class="a-size-medium"', "Brand &amp; Co") == "Brand & Co"
    assert clean_title("Plain", "Brand") == "Plain"
    assert clean_title("", None) is None


def test_2023_jsonl_ms_order_parent_asin_and_meta() -> None:
    ds = load_amazon_2023(FIXTURES / "amazon-2023")  # single category in the folder
    assert ds.name == "amazon-2023-Synthetic_Beauty"
    assert ds.counters == {"duplicate_lines": 1, "duplicate_reviews": 1}
    user = ds.timelines["USYNTH01"]
    # same second; milliseconds order SYNP0002 (.100) first, then the .923 tie broken by item id
    assert [e.item for e in user] == ["SYNP0002", "SYNP0001", "SYNP0003"]
    assert {e.timestamp for e in user} == {1588687728}
    assert [e.categories for e in user] == [("All Beauty",), ("Skin Care",), ("Beauty & Personal Care",)]
    assert user[1].summary == "Lovely" and user[1].text == "Smells great."
    assert ds.items["SYNP0001"].title == "Synthetic Rose Lotion"  # first record of the id wins
    assert ds.items["SYNP0002"].title == "SynthCo"  # debris title -> store
    last = ds.timelines["USYNTH02"][-1]
    assert last.text is None and last.categories == ()


@pytest.mark.parametrize(
    ("loader", "folder", "filename", "bad", "message"),
    [
        (
            load_amazon_2018,
            "amazon-2018",
            "All_Beauty_5.json.gz",
            '{"reviewerID": "x"\n',
            "All_Beauty_5.json.gz:11: invalid JSON",
        ),
        (
            load_amazon_2018,
            "amazon-2018",
            "All_Beauty_5.json.gz",
            '{"reviewerID": "x", "asin": "y", "unixReviewTime": 1}\n',
            "All_Beauty_5.json.gz:11: missing field(s) overall",
        ),
        (
            load_amazon_2018,
            "amazon-2018",
            "meta_Magazine_Subscriptions.json.gz",
            '{"title": "no asin"}\n',
            "meta_Magazine_Subscriptions.json.gz:12: missing field parent_asin or asin",
        ),
        (
            load_amazon_2023,
            "amazon-2023",
            "Synthetic_Beauty.jsonl",
            '{"user_id": "u", "asin": "a", "rating": 5, "timestamp": "noon"}\n',
            "Synthetic_Beauty.jsonl:8: timestamp is not an integer: 'noon'",
        ),
        (
            load_amazon_2023,
            "amazon-2023",
            "Synthetic_Beauty.jsonl",
            "[1, 2]\n",
            "Synthetic_Beauty.jsonl:8: expected a JSON object, got list",
        ),
    ],
)
def test_malformed_lines(tmp_path: Path, loader, folder: str, filename: str, bad: str, message: str) -> None:
    root = Path(shutil.copytree(FIXTURES / folder, tmp_path / folder))
    path = root / filename
    if path.suffix == ".gz":
        _append_gz(path, bad)
    else:
        path.write_text(path.read_text() + bad)
    category = (
        "All_Beauty"
        if "All_Beauty" in filename
        else "Magazine_Subscriptions"
        if folder == "amazon-2018"
        else None
    )
    with pytest.raises(DataFormatError) as info:
        loader(root, category)
    assert str(info.value).startswith(message)
    skipped = loader(root, category, on_error="skip")
    assert skipped.skipped == 1
    assert skipped.num_events == loader(FIXTURES / folder, category).num_events


def test_ambiguous_or_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="pass a category"):
        load_amazon_2018(FIXTURES / "amazon-2018")  # two categories in the folder
    with pytest.raises(DatasetNotFoundError, match="no reviews file"):
        load_amazon_2018(FIXTURES / "amazon-2018", "Software")
    with pytest.raises(DatasetNotFoundError, match="no such file"):
        load_amazon_2023(tmp_path / "absent")
    # a reviews file can be passed directly
    direct = load_amazon_2018(FIXTURES / "amazon-2018" / "All_Beauty_5.json.gz")
    assert direct.num_events == 5 and direct.name == "amazon-2018-All_Beauty"


def test_real_all_beauty_dedupe(shared_data: Path) -> None:
    ds = load_dataset("amazon-2018", shared_data / "amazon-2018-5core", category="All_Beauty")
    # 5,269 lines - 1,027 byte-identical repeats = 4,242 distinct lines.
    assert ds.counters["duplicate_lines"] == 1027
    # The 4,242 distinct lines hold only 1,379 distinct (reviewerID, reviewText, unixReviewTime):
    # product variants (sizes/scents under other asins) carry copies of the same review, so 2,863
    # more rows go; the 4 text-less rows are one "Five Stars" review copied onto 4 variants (same
    # user, day, rating and style), so text-less reviews are de-duplicated too.
    assert ds.counters["duplicate_reviews"] == 2863
    assert 5269 - 1027 - 2863 == ds.num_events == 1379
    stats = compute_stats(ds)
    assert (stats.users, stats.items) == (991, 63)  # 22 of the 85 asins only held copies
    assert stats.events_with_text == 1378  # the one remaining text-less review


def test_real_magazine_with_metadata(shared_data: Path) -> None:
    ds = load_amazon_2018(shared_data / "amazon-2018-5core", "Magazine_Subscriptions")
    assert ds.counters["duplicate_lines"] == 42  # 2,375 lines, 2,333 distinct
    assert not any(item.title and item.title.startswith("<") for item in ds.items.values())
    assert not any("&amp;" in c for item in ds.items.values() for c in item.categories)
    stats = compute_stats(ds)
    assert stats.users == 348 and stats.events_with_category > 0.9 * stats.events
