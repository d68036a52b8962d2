"""Synthetic MovieLens-format fixtures, written into a pytest temp folder at test time.

No file named like a MovieLens 100K/1M/10M file (`u.data`, `u.item`, `u.genre`, `ratings.dat`, ...) is
committed: those data sets may not be redistributed, and the licence check flags such file names. The
rows below are invented and written by hand in the exact formats (see `training/data/movielens.py`);
`u.genre` is built from the loader's own fixed genre list. Encodings follow the real files: 100K and 1M
are latin-1, 10M and the CSV versions UTF-8.

Read-only tests use the session fixture `movielens_root` (`movielens_root / "ml-100k"`; import
`movielens_root_fixture` into the test module to register it); a test that modifies files writes a
fresh copy with `write_movielens(kind, tmp_path)`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from training.data.movielens import ML100K_GENRES

# u.genre ends with an empty line, like the real 100K file
_U_GENRE = "".join(f"{name}|{index}\n" for index, name in enumerate(ML100K_GENRES)) + "\n"


def _flags(*genres: str) -> str:
    return "|".join("1" if name in genres else "0" for name in ML100K_GENRES)


# kind -> folder name and {file name: (contents, encoding)}
MOVIELENS: dict[str, tuple[str, dict[str, tuple[str, str]]]] = {
    # user 1: item 3 first, then items 10 and 2 tie at 881250000, then item 4; user 2: 1 and 10 tie
    "100k": (
        "ml-100k",
        {
            "u.data": (
                "1\t10\t4\t881250000\n"
                "1\t2\t5\t881250000\n"
                "2\t3\t3\t881260000\n"
                "1\t3\t2\t881240000\n"
                "2\t1\t1\t881250500\n"
                "3\t2\t4\t881270000\n"
                "1\t4\t3\t881290000\n"
                "2\t10\t5\t881250500\n",
                "latin-1",
            ),
            "u.item": (
                "".join(
                    f"{movie}|{title}|01-Jan-1995||http://example.org/{movie}|{_flags(*genres)}\n"
                    for movie, title, genres in [
                        (1, "Synthetic Film One (1995)", ("Animation", "Children's", "Comedy")),
                        (2, "Synthetic Film Two (1995)", ("Action", "Thriller")),
                        (3, "Café Synthétique (1996)", ("Drama",)),
                        (4, "unknown", ("unknown",)),
                        (10, "Synthetic Film Ten (1997)", ("Comedy", "Drama")),
                    ]
                ),
                "latin-1",
            ),
            "u.genre": (_U_GENRE, "latin-1"),
        },
    ),
    # users.dat present -> detected as 1M; user 2 rates 1193 and 661 in the same second
    "1m": (
        "ml-1m",
        {
            "ratings.dat": (
                "1::1193::5::978300760\n"
                "1::661::3::978302109\n"
                "1::914::3::978301968\n"
                "2::1193::4::978298413\n"
                "2::661::2::978298413\n",
                "latin-1",
            ),
            "movies.dat": (
                "1193::Synthetic Nest (1975)::Drama\n"
                "661::Synthetic Peach (1996)::Animation|Children's|Musical\n"
                "914::Synthétique Lady (1964)::Musical|Romance\n",
                "latin-1",
            ),
            "users.dat": ("1::F::1::10::48067\n2::M::56::16::70072\n", "latin-1"),
        },
    ),
    # half stars, tags (one containing '::'), a '(no genres listed)' movie, UTF-8 titles
    "10m": (
        "ml-10m",
        {
            "ratings.dat": (
                "1::122::5::838985046\n"
                "1::185::4.5::838983525\n"
                "1::231::5::838983392\n"
                "2::122::3.5::868246450\n"
                "2::292::0.5::868245920\n",
                "utf-8",
            ),
            "movies.dat": (
                "122::Synthetic Boomerang (1992)::Comedy|Romance\n"
                "185::Synthetic Net (1995)::Action|Crime|Thriller\n"
                "231::Synthétique Dumber (1994)::Comedy\n"
                "292::Synthetic Outbreak (1995)::(no genres listed)\n",
                "utf-8",
            ),
            "tags.dat": (
                "1::185::cyber::1138537770\n1::185::a::b tag::1138537760\n2::292::virus::1188263867\n",
                "utf-8",
            ),
        },
    ),
    # quoted titles (comma, doubled quotes), quoted tags, a tag on an unrated pair
    "25m": (
        "ml-25m",
        {
            "movies.csv": (
                "movieId,title,genres\n"
                '1,"Synthetic Story, The (1995)",Adventure|Animation\n'
                "296,Synthetic Fiction (1994),Comedy|Crime|Drama|Thriller\n"
                '306,"Three Synthetic Colors: Blue (Trois couleurs: Bleu) (1993)",Drama\n'
                '307,"Three Synthetic Colors: ""White"" (1994)",(no genres listed)\n',
                "utf-8",
            ),
            "ratings.csv": (
                "userId,movieId,rating,timestamp\n"
                "1,296,5.0,1147880044\n"
                "1,306,3.5,1147868817\n"
                "1,307,5.0,1147868828\n"
                "2,296,4.0,1147880044\n"
                "2,1,0.5,1147880044\n",
                "utf-8",
            ),
            "tags.csv": (
                "userId,movieId,tag,timestamp\n"
                '1,296,"dark, funny",1147880045\n'
                "1,296,classic,1147880040\n"
                "2,1,pixar,1147880050\n"
                "3,1,unrated pair,1147880050\n",
                "utf-8",
            ),
        },
    ),
}


def movielens_encoding(kind: str, filename: str) -> str:
    """The encoding a fixture file of `kind` is written in."""
    return MOVIELENS[kind][1][filename][1]


def write_movielens(kind: str, root: Path) -> Path:
    """Write the synthetic `kind` ("100k", "1m", "10m", "25m") folder under `root`; return the folder."""
    name, files = MOVIELENS[kind]
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for filename, (text, encoding) in files.items():
        (folder / filename).write_bytes(text.encode(encoding))
    return folder


@pytest.fixture(scope="session", name="movielens_root")
def movielens_root_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only folder holding `ml-100k/`, `ml-1m/`, `ml-10m/` and `ml-25m/`, written once per session."""
    root = tmp_path_factory.mktemp("movielens")
    for kind in MOVIELENS:
        write_movielens(kind, root)
    return root
