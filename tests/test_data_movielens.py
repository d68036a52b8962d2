"""MovieLens loaders: every format on small fixtures, the real ML-100K and ml-latest-small.

The 100K/1M/10M/25M fixtures are synthetic and written at test time (`data_fixtures.py`); only the
redistributable ml-latest-small cut is a committed folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from data_fixtures import movielens_encoding, movielens_root_fixture, write_movielens  # noqa: F401

from training.data import ML_LATEST_SMALL, DataFormatError, DatasetNotFoundError, load_dataset, load_movielens
from training.data.stats import compute_stats

FIXTURES = Path(__file__).parent / "fixtures" / "data"


def _items(events: list) -> list[str]:
    return [event.item for event in events]


# --- formats ---


def test_100k_fixture_order_genres_and_latin1(movielens_root: Path) -> None:
    ds = load_movielens(movielens_root / "ml-100k")
    assert ds.name == "movielens-100k"
    assert list(ds.timelines) == ["1", "2", "3"]
    # user 1: item 3 at t=...240000, then items 10 and 2 tie at ...250000 -> ids as integers (2 < 10)
    assert _items(ds.timelines["1"]) == ["3", "2", "10", "4"]
    assert _items(ds.timelines["2"]) == ["1", "10", "3"]
    first = ds.timelines["1"][0]
    assert (first.rating, first.timestamp, first.categories) == (2.0, 881240000, ("Drama",))
    assert ds.items["3"].title == "Café Synthétique (1996)"
    assert ds.items["1"].categories == ("Animation", "Children's", "Comedy")
    assert ds.items["4"].categories == ()  # the "unknown" genre means no category


def test_tie_break_file_keeps_file_order(movielens_root: Path) -> None:
    ds = load_movielens(movielens_root / "ml-100k", tie_break="file")
    assert _items(ds.timelines["1"]) == ["3", "10", "2", "4"]


def test_tie_break_is_deterministic_under_row_shuffles(movielens_root: Path, tmp_path: Path) -> None:
    root = write_movielens("100k", tmp_path)
    lines = (root / "u.data").read_text().splitlines()
    (root / "u.data").write_text("\n".join(reversed(lines)) + "\n")
    assert load_movielens(root).timelines == load_movielens(movielens_root / "ml-100k").timelines


def test_100k_without_u_genre_uses_the_fixed_list(movielens_root: Path, tmp_path: Path) -> None:
    root = write_movielens("100k", tmp_path)
    (root / "u.genre").unlink()
    assert load_movielens(root).items == load_movielens(movielens_root / "ml-100k").items


def test_100k_u_genre_names_are_read(tmp_path: Path) -> None:
    root = write_movielens("100k", tmp_path)
    genre = root / "u.genre"
    genre.write_text(genre.read_text(encoding="latin-1").replace("Drama|", "Synthetic Drama|"), "latin-1")
    assert load_movielens(root).items["3"].categories == ("Synthetic Drama",)


def test_1m_dat_latin1(movielens_root: Path) -> None:
    ds = load_movielens(movielens_root / "ml-1m")
    assert ds.name == "movielens-1m"  # users.dat present -> 1M
    assert _items(ds.timelines["1"]) == ["1193", "914", "661"]
    assert _items(ds.timelines["2"]) == ["661", "1193"]  # same second: 661 < 1193
    assert ds.items["914"].title == "Synthétique Lady (1964)"
    assert ds.items["661"].categories == ("Animation", "Children's", "Musical")


def test_10m_dat_half_stars_tags_and_no_genres(movielens_root: Path) -> None:
    ds = load_movielens(movielens_root / "ml-10m")
    assert ds.name == "movielens-10m"
    user1 = {e.item: e for e in ds.timelines["1"]}
    assert user1["185"].rating == 4.5
    assert user1["185"].text == "a::b tag, cyber"  # tags in time order; '::' inside a tag survives
    assert user1["122"].text is None
    assert ds.items["292"].categories == ()
    assert ds.timelines["2"][0].rating == 0.5


def test_csv_quoted_titles_and_tags(movielens_root: Path) -> None:
    ds = load_movielens(movielens_root / "ml-25m", "25m")
    assert ds.name == "movielens-25m"
    assert ds.items["1"].title == "Synthetic Story, The (1995)"
    assert ds.items["307"].title == 'Three Synthetic Colors: "White" (1994)'
    assert ds.items["307"].categories == ()
    assert {e.item: e.text for e in ds.timelines["1"]}["296"] == "classic, dark, funny"
    assert _items(ds.timelines["2"]) == ["1", "296"]
    assert "3" not in ds.timelines  # a tag on an unrated pair adds no event


def test_latest_small_cut_real_rows() -> None:
    ds = load_movielens(FIXTURES / "ml-latest-small")
    assert ds.name == "movielens-latest"
    assert ds.num_events == 29 and list(ds.timelines) == ["2"]
    texts = {e.item: e.text for e in ds.timelines["2"] if e.text}
    assert texts == {
        "60756": "will ferrell, funny, Highly quotable",
        "89774": "MMA, Tom Hardy, Boxing story",
        "106782": "Leonardo DiCaprio, drugs, Martin Scorsese",
    }
    assert ds.items["11"].title == "American President, The (1995)"
    assert ds.items["114335"].categories == ()
    stamps = [e.timestamp for e in ds.timelines["2"]]
    assert stamps == sorted(stamps)


# --- malformed lines ---


@pytest.mark.parametrize(
    ("kind", "filename", "bad_line", "message"),
    [
        ("100k", "u.data", "1\t5\t3", "u.data:9: expected 4 tab-separated fields, got 3"),
        ("100k", "u.data", "1\t5\tx\t881250000", "u.data:9: rating is not a number: 'x'"),
        ("100k", "u.item", "99|Bad|||url|0|1", "u.item:6: expected 24 '|'-separated fields, got 7"),
        ("1m", "ratings.dat", "1::2::3", "ratings.dat:6: expected 4 '::'-separated fields, got 3"),
        ("10m", "ratings.dat", "1::2::3::soon", "ratings.dat:6: timestamp is not an integer: 'soon'"),
        ("10m", "tags.dat", "1::2", "tags.dat:4: expected 4 '::'-separated fields"),
        ("25m", "ratings.csv", "1,2,3.0", "ratings.csv:7: expected 4 comma-separated fields, got 3"),
        ("25m", "movies.csv", '5,"Unclosed, title,Drama', "movies.csv:6: expected 3 comma-separated"),
    ],
)
def test_malformed_line_names_file_and_line(
    tmp_path: Path, kind: str, filename: str, bad_line: str, message: str
) -> None:
    root = write_movielens(kind, tmp_path)
    with open(root / filename, "a", encoding=movielens_encoding(kind, filename)) as handle:
        handle.write(bad_line + "\n")
    with pytest.raises(DataFormatError) as info:
        load_movielens(root)
    assert str(info.value).startswith(message)
    assert isinstance(info.value, ValueError)
    assert info.value.path == root / filename


def test_skip_mode_counts_malformed_lines(tmp_path: Path) -> None:
    root = write_movielens("100k", tmp_path)
    with open(root / "u.data", "a") as handle:
        handle.write("1\t5\t3\n1\tfive\t3\t881250000\n\n2\t4\t5\t881299999\n")
    ds = load_movielens(root, on_error="skip")
    assert ds.skipped == 2
    assert ds.num_events == 9  # 8 fixture rows + the good appended one; blank lines are not errors
    assert compute_stats(ds).skipped == 2


def test_bad_csv_header_is_an_error(tmp_path: Path) -> None:
    root = write_movielens("25m", tmp_path)
    (root / "ratings.csv").write_text("user,movie,rating,time\n1,2,3.0,4\n")
    with pytest.raises(
        DataFormatError, match=r"ratings.csv:1: expected header userId,movieId,rating,timestamp"
    ):
        load_movielens(root)


def test_missing_path_and_missing_ratings(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="no such file"):
        load_movielens(tmp_path / "absent")
    with pytest.raises(DatasetNotFoundError, match="no MovieLens ratings file"):
        load_movielens(tmp_path)


# --- real data ---


def test_vendored_ml_latest_small() -> None:
    ds = load_dataset("ml-latest-small")  # no path: the vendored copy
    stats = compute_stats(ds)
    assert (stats.users, stats.items, stats.events) == (610, 9724, 100_836)
    assert stats.catalogue_items == 9742
    assert (stats.start_date, stats.end_date) == ("1996-03-29", "2018-09-24")
    assert stats.events_with_text == 1635  # rated (user, movie) pairs carrying tags
    assert ML_LATEST_SMALL.joinpath("README.txt").is_file()
    for events in ds.timelines.values():
        keys = [(e.timestamp, int(e.item)) for e in events]
        assert keys == sorted(keys)


def test_real_ml_100k(shared_data: Path) -> None:
    ds = load_dataset("movielens-100k", shared_data / "movielens-100k")
    stats = compute_stats(ds)
    assert (stats.users, stats.items, stats.events) == (943, 1682, 100_000)
    assert (stats.start_date, stats.end_date) == ("1997-09-20", "1998-04-22")
    assert load_dataset("movielens-100k", shared_data / "movielens-100k").timelines == ds.timelines
