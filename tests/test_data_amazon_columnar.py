"""The columnar Amazon review reader (Arrow's JSON reader) against the line-by-line reader (the
reference): the same data set, in the same order, with the same counters, on the fixtures, the real
2018 files in ../shared/data and odd but valid files; the same error naming file and line when a file
is malformed (Arrow does not take it and the file is read line by line)."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
from test_data_columnar import assert_same

from training.data import DataFormatError, Dataset, load_amazon_2018, load_amazon_2023
from training.data.amazon import _FIELDS_2018, _FIELDS_2023
from training.data.amazon_columnar import read_reviews

FIXTURES = Path(__file__).parent / "fixtures" / "data"
IDS = ("parent_asin", "asin")


def load_both(loader, root: Path, category: str | None = None, **options) -> list[Dataset | str]:  # noqa: ANN001
    """Each engine's data set, or the text of the DataFormatError it raised."""
    out: list[Dataset | str] = []
    for engine in ("python", "columnar"):
        try:
            out.append(loader(root, category, engine=engine, **options))
        except DataFormatError as error:
            out.append(str(error))
    return out


def same_with_both(loader, root: Path, category: str | None = None, **options) -> Dataset:  # noqa: ANN001
    python, columnar = load_both(loader, root, category, **options)
    assert isinstance(python, Dataset), python
    assert_same(python, columnar)
    assert columnar.counters == python.counters and columnar.skipped == python.skipped
    return columnar


def _review(user: str, item: str, t: int, **fields: object) -> str:
    return json.dumps({"user_id": user, "asin": item, "parent_asin": item, "rating": 4.0, "timestamp": t,
                       "text": f"review of {item}", "title": "ok", **fields})  # fmt: skip


def test_fixtures_take_the_fast_path_and_give_the_same_data_set() -> None:
    assert read_reviews(FIXTURES / "amazon-2023" / "Synthetic_Beauty.jsonl", _FIELDS_2023, IDS) is not None
    assert read_reviews(FIXTURES / "amazon-2018" / "All_Beauty_5.json.gz", _FIELDS_2018, IDS) is not None
    ds = same_with_both(load_amazon_2023, FIXTURES / "amazon-2023")
    assert ds.counters == {"duplicate_lines": 1, "duplicate_reviews": 1}
    for category in ("All_Beauty", "Magazine_Subscriptions"):
        same_with_both(load_amazon_2018, FIXTURES / "amazon-2018", category)


@pytest.mark.parametrize("category", ["All_Beauty", "Magazine_Subscriptions"])
def test_real_2018_files_same_with_both_engines(shared_data: Path, category: str) -> None:
    ds = same_with_both(load_amazon_2018, shared_data / "amazon-2018-5core", category)
    assert ds.counters["duplicate_lines"] > 0 and ds.counters["duplicate_reviews"] > 0


@pytest.mark.parametrize("gz", [False, True])
def test_duplicates_blank_lines_empty_ids_and_blank_text(tmp_path: Path, gz: bool) -> None:
    lines = [
        _review("u1", "A", 1_000),
        _review("u1", "A", 1_000),  # an identical line
        "",
        _review("u1", "B", 1_000, asin="B1", text="review of A"),  # same (user, text, time): a copy
        _review("u1", "C", 3_000, parent_asin="", asin="C2", rating=5),  # empty parent_asin -> asin
        _review("u2", "D", 2_500, text="   ", title=None),  # blank text -> None
        _review("u2", "E", 2_600, text=None),  # no text, another time: kept
        json.dumps({"timestamp": 7_000, "rating": 1, "user_id": "u2", "asin": "F"}),  # other key order
    ]
    text = "\r\n".join(lines) + "\r\n"
    path = tmp_path / ("Odd.jsonl.gz" if gz else "Odd.jsonl")
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    assert read_reviews(path, _FIELDS_2023, IDS) is not None
    ds = same_with_both(load_amazon_2023, tmp_path)
    assert ds.counters == {"duplicate_lines": 1, "duplicate_reviews": 1}
    assert [e.item for e in ds.timelines["u1"]] == ["A", "C2"]
    assert [(e.item, e.text, e.summary) for e in ds.timelines["u2"]] == [
        ("D", None, None), ("E", None, "ok"), ("F", None, None)
    ]  # fmt: skip


@pytest.mark.parametrize(
    "odd",
    [
        "   ",  # a line of spaces: skipped by both, but not by Arrow's line reader
        _review("u3", "G", 4_000, timestamp=4.0e3),  # a time written as a float
        _review("u3", "G", 4_000, user_id=33),  # a number for a string field
        _review("u3", "G", 4_000, rating="4.5"),  # a rating as a string
        _review("u3", "G", 4_000, parent_asin=None, asin=None),  # no item id: an error
        _review("u3", "G", 4_000, timestamp="noon"),  # a bad time: an error
        _review("u3", "G", 4_000, rating=None),  # a null rating: an error
        '{"user_id": "u3"',  # invalid JSON: an error
        '{"user_id": "u3", "asin": "G", "rating": NaN, "timestamp": 4000}',  # Arrow reads NaN: an error
        '{"user_id": "u3", "user_id": "u4", "asin": "G", "rating": 1, "timestamp": 4000}',  # a key twice
    ],
)
def test_odd_or_malformed_lines_fall_back_to_the_same_result_or_error(tmp_path: Path, odd: str) -> None:
    root = Path(shutil.copytree(FIXTURES / "amazon-2023", tmp_path / "amazon-2023"))
    path = root / "Synthetic_Beauty.jsonl"
    path.write_text(path.read_text() + odd + "\n")
    assert read_reviews(path, _FIELDS_2023, IDS) is None
    python, columnar = load_both(load_amazon_2023, root)
    if isinstance(python, str):
        assert columnar == python and "Synthetic_Beauty.jsonl:8:" in python
    else:
        assert_same(python, columnar)
    for engine in ("python", "columnar"):  # skip mode drops the same lines
        skipping = load_amazon_2023(root, engine=engine, on_error="skip")
        assert skipping.skipped == (0 if not isinstance(python, str) else 1)


def test_unknown_engine() -> None:
    with pytest.raises(ValueError, match="unknown engine"):
        load_amazon_2023(FIXTURES / "amazon-2023", engine="polars")
