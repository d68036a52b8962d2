"""Google Local 2021 loader: synthetic metadata and review files, the real Vermont metadata."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

from training.data import DataFormatError, load_dataset, load_google_local, load_google_local_meta

FIXTURES = Path(__file__).parent / "fixtures" / "data" / "google-local"
# invented gmap_ids in the real "0x<hex>:0x<hex>" shape
G_FARM = "0x4cb5000000000b02:0x5e1f000000000002"
G_LOCKS = "0x89e0000000000a01:0x5e1f000000000001"
G_NULL = "0x4cca000000000d04:0x5e1f000000000004"


def test_meta_dedupes_gmap_ids() -> None:
    items, skipped = load_google_local_meta(FIXTURES / "meta-Vermont.json.gz")
    assert skipped == 0 and len(items) == 4  # 6 lines, one id three times
    assert items[G_FARM].title == "Maple Hollow Farm and Forest"
    assert items[G_FARM].categories == ("Indoor lodging", "Farm", "Gift shop")
    assert items[G_LOCKS].categories[-2:] == ("Locksmith", "Safe & vault shop")
    assert items[G_NULL].categories == ()  # null category


def test_reviews_ms_order_categories_and_duplicates() -> None:
    ds = load_google_local(FIXTURES)  # one review file in the folder -> state Vermont
    assert ds.name == "google-local-2021-Vermont"
    assert ds.counters == {"duplicate_lines": 1}
    user = ds.timelines["100000000000000000001"]
    assert [e.item for e in user][:2] == [G_FARM, G_LOCKS]  # same second, ms order (.001 < .999)
    assert user[0].categories == ("Indoor lodging", "Farm", "Gift shop")  # multi-valued
    assert user[0].text is None and user[1].text == "Great locksmith."
    assert user[-1].item == G_NULL and user[-1].categories == ()  # null category in the metadata
    assert ds.timelines["100000000000000000002"][-1].categories == ()  # business not in metadata
    assert load_dataset("google-local-2021", FIXTURES, state="Vermont").timelines == ds.timelines


def test_malformed_review_line(tmp_path: Path) -> None:
    root = Path(shutil.copytree(FIXTURES, tmp_path / "g"))
    path = root / "review-Vermont.json.gz"
    data = gzip.decompress(path.read_bytes()).decode() + '{"user_id": "1", "gmap_id": "g"}\n'
    path.write_bytes(gzip.compress(data.encode()))
    with pytest.raises(DataFormatError, match=r"^review-Vermont.json.gz:7: missing field\(s\) time$"):
        load_google_local(root)
    assert load_google_local(root, on_error="skip").skipped == 1


def test_malformed_meta_line(tmp_path: Path) -> None:
    path = tmp_path / "meta-Vermont.json"
    path.write_text('{"gmap_id": "a", "name": "A", "category": ["Cafe"]}\n{"name": "no id"}\n')
    with pytest.raises(DataFormatError, match=r"^meta-Vermont.json:2: missing field\(s\) gmap_id$"):
        load_google_local_meta(path)
    items, skipped = load_google_local_meta(path, on_error="skip")
    assert (list(items), skipped) == (["a"], 1)


def test_real_vermont_meta(shared_data: Path) -> None:
    items, skipped = load_google_local_meta(
        shared_data / "google-local-2021-meta-vermont" / "meta-Vermont.json.gz"
    )
    assert (len(items), skipped) == (11_243, 0)  # 11,291 lines, 48 repeated gmap_ids
    assert sum(1 for item in items.values() if "Restaurant" in item.categories) > 500
