"""The columnar Amazon metadata reader (Arrow's JSON reader, only the fields used) against the
line-by-line reader (the reference): the same items and category features, in the same order, on the
fixtures, the real 2018 metadata files in ../shared/data and odd but valid files; the same error
naming file and line when a file is malformed (Arrow does not take it and it is read line by line).
Also: a file starting with a byte-order mark gives both engines' review readers the same error."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
from test_data_amazon_columnar import load_both, same_with_both

from training.data import DataFormatError, load_amazon_2018, load_amazon_2023
from training.data.amazon import load_meta
from training.data.amazon_columnar import read_reviews
from training.data.amazon_meta_columnar import read_meta
from training.data.errors import ErrorPolicy

FIXTURES = Path(__file__).parent / "fixtures" / "data"
IDS = ("parent_asin", "asin")


def meta_both(path: Path, brand: str = "store", on_error: str = "raise") -> list[object]:
    """Each engine's (items, features) as ordered lists, or the text of the DataFormatError it raised."""
    out: list[object] = []
    for engine in ("python", "columnar"):
        try:
            items, features = load_meta(path, IDS, brand, ErrorPolicy(on_error), engine)
            out.append((list(items.items()), list(features.items())))
        except DataFormatError as error:
            out.append(str(error))
    return out


def _meta(item: str, **fields: object) -> str:
    return json.dumps({"main_category": "All Beauty", "title": f"Product {item}", "average_rating": 4.5,
                       "features": ["soft"], "images": [{"large": "x.jpg", "variant": "MAIN"}],
                       "store": "SynthCo", "categories": ["Beauty", "Skin &amp; Care"],
                       "details": {"Size": "2 oz", "nested": {"a": [1, 2]}}, "parent_asin": item,
                       **fields})  # fmt: skip


def test_fixtures_and_real_2018_files_take_the_fast_path(shared_data: Path) -> None:
    files = [
        (FIXTURES / "amazon-2023" / "meta_Synthetic_Beauty.jsonl.gz", "store"),
        (FIXTURES / "amazon-2018" / "meta_Magazine_Subscriptions.json.gz", "brand"),
        (shared_data / "amazon-2018-5core" / "meta_Gift_Cards.json.gz", "brand"),
        (shared_data / "amazon-2018-5core" / "meta_Magazine_Subscriptions.json.gz", "brand"),
    ]
    for path, brand in files:
        assert read_meta(path, IDS, brand) is not None, path
        python, columnar = meta_both(path, brand)
        assert columnar == python and len(python[0]) > 0  # type: ignore[index]
    same_with_both(load_amazon_2023, FIXTURES / "amazon-2023")  # reviews and metadata together
    same_with_both(load_amazon_2018, shared_data / "amazon-2018-5core", "Gift_Cards")


@pytest.mark.parametrize("gz", [False, True])
def test_odd_but_valid_records_give_the_same_items(tmp_path: Path, gz: bool) -> None:
    lines = [
        _meta("P1"),
        _meta("P1", title="a later record of P1"),  # the first record per id wins
        "",
        _meta("P2", title="<span class=x", store="Brand &amp; Co"),  # HTML debris -> the store
        _meta("", asin="A3", categories=None, main_category=" Beauty &amp; More "),  # asin; main category
        _meta("P4", category=None, categories=["Only", "Categories"]),  # a null category: categories
        _meta("P5", category=["Coarse", "Fine"], categories=["Other"]),  # category wins
        _meta("P6", categories=[" ", None, "Top"], title=None, store=None),  # blank, null dropped; no title
        json.dumps({"parent_asin": "P7"}),  # nothing else
    ]
    text = "\n".join(lines) + "\n"
    path = tmp_path / ("meta_Odd.jsonl.gz" if gz else "meta_Odd.jsonl")
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    assert read_meta(path, IDS, "store") is not None
    python, columnar = meta_both(path)
    assert columnar == python
    items, features = dict(python[0]), dict(python[1])  # type: ignore[index]
    assert list(items) == ["P1", "P2", "A3", "P4", "P5", "P6", "P7"]
    assert items["P1"].title == "Product P1" and items["P2"].title == "Brand & Co"
    assert features["A3"] == ("Beauty & More",) and features["P4"] == ("Categories",)
    assert features["P5"] == ("Fine",) and features["P6"] == ("Top",) and items["P6"].title is None


@pytest.mark.parametrize(
    ("odd", "arrow_takes_the_file"),
    [
        ("   ", False),  # a line of spaces: skipped by both, but not by Arrow's line reader
        (_meta("Q", title=1.5), False),  # a number for a string field: the reference writes "1.5"
        (_meta("Q", categories="Beauty"), False),  # a category path as one string: no categories
        (_meta("Q", categories=["Beauty", 3]), False),  # a number entry
        ('{"parent_asin": "Q", "parent_asin": "R"}', False),  # a key twice: the last wins in the reference
        (_meta("Q") + _meta("R"), False),  # two objects on one line: an error
        ('{"parent_asin": "Q"', False),  # invalid JSON: an error
        ('["Q"]', False),  # not an object: an error
        ('{"parent_asin": "Q", "price": NaN}', True),  # NaN outside the fields used: read by both
        (json.dumps({"title": "no id"}), True),  # no item id: Arrow reads it, the loader falls back
        (_meta("", asin=""), True),  # empty ids: the same
    ],
)
def test_odd_or_malformed_records_fall_back_to_the_same_result_or_error(
    tmp_path: Path, odd: str, arrow_takes_the_file: bool
) -> None:
    path = tmp_path / "meta_Odd.jsonl"
    path.write_text("\n".join([_meta("P1"), odd, _meta("P2")]) + "\n")
    assert (read_meta(path, IDS, "store") is not None) == arrow_takes_the_file
    python, columnar = meta_both(path)
    assert columnar == python
    if isinstance(python, str):
        assert "meta_Odd.jsonl:2:" in python
    skipping = meta_both(path, on_error="skip")  # skip mode drops the same lines
    assert skipping[0] == skipping[1]


def test_byte_order_mark_gives_the_same_error_with_both_engines(tmp_path: Path) -> None:
    root = Path(shutil.copytree(FIXTURES / "amazon-2023", tmp_path / "amazon-2023"))
    meta = tmp_path / "meta_Bom.jsonl"
    meta.write_bytes(b"\xef\xbb\xbf" + (_meta("P1") + "\n").encode())
    assert read_meta(meta, IDS, "store") is None
    python, columnar = meta_both(meta)
    assert columnar == python and "meta_Bom.jsonl:1:" in str(python) and "BOM" in str(python)
    reviews = root / "Synthetic_Beauty.jsonl"
    reviews.write_bytes(b"\xef\xbb\xbf" + reviews.read_bytes())
    assert read_reviews(reviews, {"user": "user_id", "rating": "rating", "time": "timestamp",
                                  "text": "text", "summary": "title"}, IDS) is None  # fmt: skip
    python_ds, columnar_ds = load_both(load_amazon_2023, root)
    assert columnar_ds == python_ds and "Synthetic_Beauty.jsonl:1:" in str(python_ds)
