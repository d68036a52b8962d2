"""The columnar MovieLens engine (Arrow) against the line-by-line engine (the reference): the same data
set, in the same order, on the vendored data, the fixtures and odd but valid files; the same error
naming file and line when a file is malformed (Arrow rejects it and the file is read line by line).

Followed: the hypothesis docs ("What you can generate and how"), with `derandomize=True` as in
`test_parsers_fuzz.py`, for files built from canonical and odd field spellings.
"""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

import pytest
from data_fixtures import write_movielens
from hypothesis import given, settings
from hypothesis import strategies as st

from training.data import ML_LATEST_SMALL, DataFormatError, Dataset, load_movielens
from training.data.movielens_columnar import (
    MOVIES_HEADER,
    TAGS_HEADER,
    read_ratings,
    read_ratings_dat,
    read_rows,
)

FIXTURES = Path(__file__).parent / "fixtures" / "data"
RATINGS = "userId,movieId,rating,timestamp\n"


def assert_same(python: Dataset, columnar: Dataset) -> None:
    """Equal data sets, with users, events and catalogue entries in the same order."""
    assert columnar == python
    assert list(columnar.timelines.items()) == list(python.timelines.items())
    assert list(columnar.items.items()) == list(python.items.items())


def load_both(root: Path, **options) -> tuple[Dataset | str, Dataset | str]:
    """Each engine's data set, or the text of the DataFormatError it raised."""
    out = []
    for engine in ("python", "columnar"):
        try:
            out.append(load_movielens(root, engine=engine, **options))
        except DataFormatError as error:
            out.append(f"DataFormatError: {error}")
    return out[0], out[1]


def assert_equivalent(root: Path, **options) -> None:
    python, columnar = load_both(root, **options)
    if isinstance(python, str) or isinstance(columnar, str):
        assert columnar == python
    else:
        assert_same(python, columnar)


def write(root: Path, name: str, text: str, newline: str = "\n") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / name).write_bytes(text.replace("\n", newline).encode())
    return root


# --- the same data set ---


@pytest.mark.parametrize("tie_break", ["item", "file"])
@pytest.mark.parametrize("root", [ML_LATEST_SMALL, FIXTURES / "ml-latest-small"], ids=["vendored", "cut"])
def test_ml_latest_small_same_with_both_engines(root: Path, tie_break: str) -> None:
    assert read_ratings(root / "ratings.csv") is not None  # the columnar path is the one taken
    assert read_rows(root / "movies.csv", MOVIES_HEADER) is not None
    assert read_rows(root / "tags.csv", TAGS_HEADER, ("timestamp",)) is not None
    python = load_movielens(root, engine="python", tie_break=tie_break)
    assert_same(python, load_movielens(root, engine="columnar", tie_break=tie_break))
    assert load_movielens(root, tie_break=tie_break).timelines == python.timelines  # columnar by default


def test_synthetic_25m_fixture_same_with_both_engines(tmp_path: Path) -> None:
    root = write_movielens("25m", tmp_path)
    assert read_ratings(root / "ratings.csv") is not None
    python = load_movielens(root, engine="python")
    assert_same(python, load_movielens(root, engine="columnar"))
    assert {e.item: e.text for e in python.timelines["1"]}["296"] == "classic, dark, funny"


@pytest.mark.parametrize("kind", ["100k", "1m", "10m"])
def test_other_versions_same_with_both_engines(tmp_path: Path, kind: str) -> None:
    root = write_movielens(kind, tmp_path)
    if kind != "100k":  # 1M / 10M ratings.dat: Arrow takes it
        assert read_ratings_dat(root / "ratings.dat") is not None
    assert_same(load_movielens(root, engine="python"), load_movielens(root, engine="columnar"))


@pytest.mark.parametrize(
    ("rows", "taken", "error"),
    [
        ("1::10::4::5\r\n\n2::10::3.5::5\r\n1::2::5::5\n", True, ""),  # CRLF, a blank line, a same-second tie
        ("1:: 10::4::5\n", False, ""),  # padded id: the line-by-line reader strips it
        ("1::10::4::5 \n", False, ""),
        ("01::10::4::5\n", False, ""),  # a leading zero is kept in the id
        ("   \n1::10::4::5\n", False, ""),  # a line of spaces: skipped line by line
        ("", False, ""),  # an empty file: no users
        ("1::10::4::5::\n", False, "ratings.dat:1: expected 4 '::'-separated fields, got 5"),
        ("1::10::4::5\n1:10::4::5\n", False, "ratings.dat:2: expected 4 '::'-separated fields, got 3"),
        ("1::10:x:4::5\n", False, "ratings.dat:1: expected 4 '::'-separated fields, got 3"),
        ("1::10::x::5\n", False, "ratings.dat:1: rating is not a number: 'x'"),
    ],
)
def test_ratings_dat_odd_lines_give_the_same_result_or_the_same_error(
    tmp_path: Path, rows: str, taken: bool, error: str
) -> None:
    root = write(tmp_path, "ratings.dat", rows)
    write(root, "users.dat", "1::F::1::10::48067\n")  # -> 1M
    assert (read_ratings_dat(root / "ratings.dat") is not None) == taken
    assert_equivalent(root)
    python, _ = load_both(root)
    if error:
        assert isinstance(python, str) and python.startswith(f"DataFormatError: {error}"), python
    else:
        assert isinstance(python, Dataset)


def test_ratings_dat_gzip(tmp_path: Path) -> None:
    root = write_movielens("10m", tmp_path)
    (root / "ratings.dat.gz").write_bytes(gzip.compress((root / "ratings.dat").read_bytes()))
    (root / "ratings.dat").unlink()
    assert read_ratings_dat(root / "ratings.dat.gz") is not None
    assert_same(load_movielens(root, engine="python"), load_movielens(root, engine="columnar"))


def test_gzip_crlf_quotes_blank_lines_and_shared_objects(tmp_path: Path) -> None:
    ratings = RATINGS + '1,10,4.0,5\n\n"2","10","3.5","5"\n1,2,5,5\n2,10,0.5,4\n'
    root = write(tmp_path, "ratings.csv", ratings, "\r\n")
    (root / "ratings.csv.gz").write_bytes(gzip.compress((root / "ratings.csv").read_bytes()))
    (root / "ratings.csv").unlink()
    movies = 'movieId,title,genres\n10,"Ten, The ""Film"" (1999)",Drama|Comedy\n2,,\n'
    write(root, "movies.csv", movies, "\r\n")
    write(root, "tags.csv", "userId,movieId,tag,timestamp\n1,10, spaced ,7\n1,10,,8\nx,y,odd ids,9\n")
    assert read_ratings(root / "ratings.csv.gz") is not None
    python, columnar = load_both(root)
    assert_same(python, columnar)
    assert [e.item for e in columnar.timelines["1"]] == ["2", "10"]  # same second: item 2 before 10
    assert columnar.timelines["1"][1].text == "spaced"
    assert columnar.items["10"].title == 'Ten, The "Film" (1999)'
    one, two = columnar.timelines["1"][1], columnar.timelines["2"][1]
    assert one.item is two.item and one.categories is two.categories  # one object per movie


@pytest.mark.parametrize(
    "rows",
    [
        "1, 10,4.0,5\n",  # padded id: the line-by-line reader strips it
        '1,"10\n",4.0,5\n',  # a quoted newline, stripped too
        "01,10,4.0,5\n",  # a leading zero is kept in the id
        "+1,10,4.0,5\n",
        "1234567890,10,4.0,5\n",  # 10 digits: beyond the canonical ids
        "1,10,4.,5\n1,11,1e0,6\n1,12,inf,7\n",  # decimals float() takes
        "1,10,4.0,+5\n1,11,4.0,-5\n1,12,4.0, 6 \n",
    ],
)
def test_odd_valid_fields_fall_back_to_the_same_result(tmp_path: Path, rows: str) -> None:
    root = write(tmp_path, "ratings.csv", RATINGS + rows)
    assert read_ratings(root / "ratings.csv") is None
    assert_equivalent(root)


def test_repeated_movie_keeps_its_first_place_and_last_entry(tmp_path: Path) -> None:
    root = write(tmp_path, "ratings.csv", RATINGS + "1,10,4.0,5\n")
    write(root, "movies.csv", "movieId,title,genres\n10,First,Drama\n11,Other,Comedy\n10,Last,Horror\n")
    python, columnar = load_both(root)
    assert_same(python, columnar)
    assert list(columnar.items) == ["10", "11"] and columnar.items["10"].title == "Last"


def test_empty_ratings_file(tmp_path: Path) -> None:
    root = write(tmp_path, "ratings.csv", RATINGS)
    assert_equivalent(root)
    assert load_movielens(root).timelines == {}


# --- malformed files: Arrow rejects them, the line-by-line reader names file and line ---


@pytest.mark.parametrize(
    ("filename", "text", "message"),
    [
        ("ratings.csv", RATINGS + "1,2,3.0,4\n1,2,3.0\n", "ratings.csv:3: expected 4 comma-separated fields"),
        ("ratings.csv", RATINGS + "1,2,3.0,4\n\n1,2,3.0,4,5\n", "ratings.csv:4: expected 4 comma-separated"),
        ("ratings.csv", RATINGS + "1,2,3.0,4\n1,2,x,4\n", "ratings.csv:3: rating is not a number: 'x'"),
        ("ratings.csv", RATINGS + "1,2,nan,4\n", "ratings.csv:2: rating is not a number: 'nan'"),
        ("ratings.csv", RATINGS + '1,2,3.0,4\n1,"2\n3",3.0,4\n', "ratings.csv:4: item id is not an integer"),
        ("ratings.csv", "\ufeff" + RATINGS + "1,2,3.0,4\n", "ratings.csv:1: expected header"),
        ("movies.csv", "movieId,title,genres\n1,A,Drama\n2,B\n", "movies.csv:3: expected 3 comma-separated"),
        ("tags.csv", "userId,movieId,tag,timestamp\n1,2,a,3\n1,2,b,soon\n", "tags.csv:3: timestamp is not"),
        ("tags.csv", "userId,movieId,tag,timestamp\n1,2,a,3,4\n", "tags.csv:2: expected 4 comma-separated"),
    ],
)
def test_malformed_file_error_names_file_and_line(
    tmp_path: Path, filename: str, text: str, message: str
) -> None:
    root = write(tmp_path, "ratings.csv", RATINGS + "1,2,3.0,4\n")
    write(root, filename, text)
    python, columnar = load_both(root)
    assert isinstance(columnar, str) and columnar.startswith(f"DataFormatError: {message}")
    assert columnar == python
    with pytest.raises(DataFormatError) as info:
        load_movielens(root)
    assert info.value.path == root / filename


def test_skip_mode_counts_the_same_lines(tmp_path: Path) -> None:
    root = write(tmp_path, "ratings.csv", RATINGS + "1,2,3.0,4\n1,2,3.0\n1,3,x,5\n2,2,4.5,6\n")
    python, columnar = load_both(root, on_error="skip")
    assert_same(python, columnar)
    assert columnar.skipped == 2 and columnar.num_events == 2


def test_unknown_engine(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown engine 'polars'"):
        load_movielens(write(tmp_path, "ratings.csv", RATINGS), engine="polars")  # type: ignore[arg-type]


# --- any mix of canonical and odd spellings: the same data set or the same error ---

CANONICAL = {  # fields the columnar reader takes
    "id": ["1", "2", "10", "0", "123456789"],
    "decimal": ["4.0", "3.5", "5", "0.5"],
    "stamp": ["5", "5", "6", "-7", "0005"],
}
ODD = {  # fields the line-by-line reader takes (or rejects) in its own way
    "id": ["007", " 3", "+4", "x", "", "1234567890"],
    "decimal": ["4.", " 2.0", "1e0", "nan", "-1.0", "", "x"],
    "stamp": ["+8", " 9", "1.5", "", "soon"],
}
TEXTS = st.sampled_from(["Film", "Film, The (1999)", 'Say "hi"', "", " pad ", "Drama|Comedy", "é"])


def _field(value: str, quoted: bool) -> str:
    return '"' + value.replace('"', '""') + '"' if quoted or any(c in value for c in ',"') else value


def _csv(header: str, rows: list[list[str]], quotes: list[bool], blank: bool, crlf: bool) -> str:
    lines = [header] + [",".join(_field(v, q) for v, q in zip(row, quotes, strict=False)) for row in rows]
    if blank and len(lines) > 1:
        lines.insert(len(lines) // 2 + 1, "")
    return ("\r\n" if crlf else "\n").join(lines) + "\n"


def _files(odd: bool) -> st.SearchStrategy[dict]:
    """Files whose fields are canonical, or canonical and odd ones mixed (`odd`)."""
    kinds = {k: st.sampled_from(v + ODD[k]) if odd else st.sampled_from(v) for k, v in CANONICAL.items()}
    ids, decimal, stamp = kinds["id"], kinds["decimal"], kinds["stamp"]
    return st.fixed_dictionaries({
        "ratings": st.lists(st.tuples(ids, ids, decimal, stamp).map(list), max_size=8),
        "short": st.sampled_from([None, 0, 1] if odd else [None]),  # a row one field short
        "movies": st.lists(st.tuples(ids, TEXTS, TEXTS).map(list), max_size=5),
        "tags": st.lists(st.tuples(ids, ids, TEXTS, stamp).map(list), max_size=5),
        "quotes": st.lists(st.booleans(), min_size=4, max_size=4),
        "blank": st.booleans(), "crlf": st.booleans(),
    })  # fmt: skip


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(
    spec=st.booleans().flatmap(_files),
    tie_break=st.sampled_from(["item", "file"]),
    on_error=st.sampled_from(["raise", "skip"]),
)
def test_any_file_same_data_set_or_same_error(spec: dict, tie_break: str, on_error: str) -> None:
    ratings = [list(row) for row in spec["ratings"]]
    if spec["short"] is not None and len(ratings) > spec["short"]:
        ratings[spec["short"]] = ratings[spec["short"]][:3]
    texts = {
        "ratings.csv": _csv(RATINGS.strip(), ratings, spec["quotes"], spec["blank"], spec["crlf"]),
        "movies.csv": _csv("movieId,title,genres", spec["movies"], spec["quotes"], False, spec["crlf"]),
        "tags.csv": _csv("userId,movieId,tag,timestamp", spec["tags"], spec["quotes"], spec["blank"], False),
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, text in texts.items():
            write(root, name, text)
        assert_equivalent(root, tie_break=tie_break, on_error=on_error)
