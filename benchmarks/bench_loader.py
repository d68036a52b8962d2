"""Loading MovieLens at ML-25M size: the columnar engine (Arrow's CSV reader, `training/data/
movielens_columnar.py`) against the line-by-line engine (`engine="python"`, Python's `csv` module;
the reference) on one synthetic data set, in one process, alternated.

The data set is written into a temporary directory (deleted at the end, never committed) in the
format of ML-20M/25M (`ratings.csv`, `movies.csv`, `tags.csv`; GroupLens' README of ML-25M), or with
`--format dat` in that of ML-10M (`ratings.dat`, `movies.dat`, `tags.dat`: the same fields joined by
"::", no header, no quoting; report `loader-dat`): by default 25,000,000 ratings (`--rows`), one
user's ratings together as in the real file (in random movie order), about 154 ratings per user
(ML-25M: 162,541 users), 62,423 movies with ids up to 209,171 and titles with commas (quoted in
CSV), movies drawn by popularity (Zipf), half-star ratings, timestamps 1995-2019 with same-second
ties, and one tag per 23 ratings on rated pairs (ML-25M: 1,093,360).
Each round loads the set with both engines (python first, then columnar; `--repeats` rounds) and
checks that both give the same data set (a hash of the users, events and catalogue in order).
Reported: median seconds, ratings/s and the ratio python / columnar (the median of the per-round
ratios). With `--format dat` also the part the columnar engine still reads line by line (`movies.dat`
and `tags.dat`: small beside the ratings): the columnar load of the same folder with its
`ratings.dat` cut to its first 1,000 lines, as a share of the full columnar load.

One data set is alive at a time. Both engines build one Python `Event` per rating, so memory grows
with `--rows` for both: loading the 1M-row set in a fresh process peaked at 577 MB (python) and
513 MB (columnar) resident, 109 MB of it the interpreter and imports (measured 2026-12-03 with
`/usr/bin/time -f %M`), so 25M rows need about 12 GB free.

Run: python -m benchmarks.bench_loader [--rows 25000000] [--repeats 1] [--threads N (Arrow's threads)]
     [--format csv|dat]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from benchmarks.harness import Report, Table, add_thread_arg, apply_threads, paired_ratio
from training.data import Dataset, load_movielens
from training.data.movielens import Engine

ENGINES: tuple[Engine, ...] = ("python", "columnar")  # the order within each round

GENRES = ("Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Drama", "Fantasy", "Horror",
          "Romance", "Sci-Fi", "Thriller")  # fmt: skip
TAGS = ("atmospheric", "dark, funny", "twist ending", "based on a book", "classic", 'the "best" one')
HALF_STARS = np.array([f"{0.5 * k:.1f}" for k in range(1, 11)])
STAR_SHARE = np.array([1.6, 3.2, 2.0, 6.8, 5.0, 19.6, 13.1, 26.6, 8.9, 14.5]) / 100  # roughly ML-25M's


# --- the synthetic data set ---


def write_movielens(folder: Path, rows: int, seed: int = 0, kind: str = "csv") -> dict[str, int]:
    """Write ratings, movies and tags of `rows` ratings into `folder` as CSV (ML-25M) or "::"-separated
    `.dat` files (ML-10M, `kind="dat"`); counts written."""
    counts = _write_csv(folder, rows, seed)
    if kind == "dat":
        for name in ("ratings", "movies", "tags"):
            _csv_to_dat(folder / f"{name}.csv", folder / f"{name}.dat")
    return counts


def _csv_to_dat(source: Path, target: Path) -> None:
    """The rows of a CSV file without its header, fields joined by "::" (ML-10M's format), then the CSV
    file removed."""
    with open(source, encoding="utf-8", newline="") as reader, open(target, "w", encoding="utf-8") as writer:
        rows = csv.reader(reader)
        next(rows)
        writer.writelines("::".join(row) + "\n" for row in rows)
    source.unlink()


def _write_csv(folder: Path, rows: int, seed: int) -> dict[str, int]:
    rng = np.random.default_rng(seed)
    movie_ids = np.sort(rng.choice(np.arange(1, 209_172), 62_423, replace=False))
    with open(folder / "movies.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["movieId", "title", "genres"])
        for movie in movie_ids.tolist():
            year = 1900 + movie % 120
            title = f"Synthetic Film {movie}, The ({year})" if movie % 3 == 0 else f"Film {movie} ({year})"
            genres = "|".join(GENRES[(movie + k) % len(GENRES)] for k in range(movie % 3 + 1))
            writer.writerow([movie, title, genres if movie % 50 else "(no genres listed)"])
    users = max(1, rows // 154)
    weights = rng.lognormal(0.0, 1.0, users)
    per_user = rng.multinomial(rows, weights / weights.sum()).astype(np.int64)
    user = np.repeat(np.arange(1, users + 1), per_user)
    popularity = 1.0 / np.arange(1, len(movie_ids) + 1)
    movie = rng.choice(movie_ids, rows, p=popularity / popularity.sum())
    start = rng.integers(789_652_009, 1_574_327_703 - 20_000, users + 1)
    stamp = start[user] + rng.integers(0, 20_000, rows)
    stars = HALF_STARS[rng.choice(len(HALF_STARS), rows, p=STAR_SHARE / STAR_SHARE.sum())]
    table = pa.table({"userId": user, "movieId": movie, "rating": pa.array(stars), "timestamp": stamp})
    with open(folder / "ratings.csv", "wb") as handle:
        handle.write(b"userId,movieId,rating,timestamp\n")
        pacsv.write_csv(table, handle, pacsv.WriteOptions(include_header=False, quoting_style="none"))
    tagged = np.sort(rng.choice(rows, rows // 23, replace=False))
    with open(folder / "tags.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["userId", "movieId", "tag", "timestamp"])
        for row, tag in zip(tagged.tolist(), rng.integers(0, len(TAGS), len(tagged)).tolist(), strict=True):
            writer.writerow([int(user[row]), int(movie[row]), TAGS[tag], int(stamp[row]) + tag])
    users_rated = int((per_user > 0).sum())
    return {"ratings": rows, "users": users_rated, "movies": len(movie_ids), "tags": len(tagged)}


def fingerprint(dataset: Dataset) -> int:
    """A hash of the users, their events, the catalogue and the counters, in order (equal data sets,
    equal hashes)."""
    events = tuple(event for _, event in dataset.events())
    counters = tuple(sorted(dataset.counters.items()))
    return hash((tuple(dataset.timelines), events, tuple(dataset.items.values()), dataset.skipped, counters))


# --- timing (shared with bench_amazon_loader) ---


def engine_args(
    description: str, rows: int, what: str, extra: dict[str, dict[str, Any]] | None = None
) -> argparse.Namespace:
    """--rows, --repeats, --seed, --threads (torch's and Arrow's CPU threads, applied here), and the
    `extra` options (name -> `add_argument` keywords)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rows", type=int, default=rows, help=what)
    parser.add_argument("--repeats", type=int, default=1, help="rounds of python + columnar")
    parser.add_argument("--seed", type=int, default=0)
    for name, options in (extra or {}).items():
        parser.add_argument(name, **options)
    add_thread_arg(parser)
    args = parser.parse_args()
    apply_threads(args.threads)
    if args.threads is not None:
        pa.set_cpu_count(args.threads)
    return args


def time_engines(
    load: Callable[[Engine], Any], repeats: int, hash_of: Callable[[Any], int] = fingerprint,
    describe: Callable[[Any], str] = lambda dataset: f"{dataset.num_events:,} events",
) -> dict[str, list[float]]:
    """Seconds per load, per engine (python first in each round); exits when the engines' results
    (`hash_of`; a data set's `fingerprint` by default) differ or one engine's differ between rounds."""
    seconds: dict[str, list[float]] = {engine: [] for engine in ENGINES}
    prints: dict[str, set[int]] = {engine: set() for engine in ENGINES}
    for _ in range(repeats):
        for engine in ENGINES:
            start = time.perf_counter()
            result = load(engine)
            seconds[engine].append(time.perf_counter() - start)
            prints[engine].add(hash_of(result))
            print(f"{engine}: {seconds[engine][-1]:.1f} s, {describe(result)}", flush=True)
            del result
    if prints["python"] != prints["columnar"] or len(prints["python"]) != 1:
        raise SystemExit(f"error: the engines gave different results ({prints})")
    return seconds


def engine_table(title: str, unit: str, count: int, seconds: dict[str, list[float]], python: str) -> Table:
    """Median seconds, `unit`/s over `count` and the paired ratio python / columnar, one row per engine."""
    median = {engine: statistics.median(times) for engine, times in seconds.items()}
    table = Table(title, ["engine", "seconds", f"{unit}/s", "ratio (python / columnar)"])
    for engine, label in (("python", python), ("columnar", "columnar (Arrow)")):
        table.rows.append({
            "engine": label, "seconds": median[engine], f"{unit}/s": count / median[engine],
            "ratio (python / columnar)": paired_ratio(seconds["python"], seconds[engine]),
        })  # fmt: skip
    return table


def _side_files_seconds(folder: Path, repeats: int) -> list[float]:
    """Seconds of the columnar load of `folder` with its ratings.dat cut to 1,000 lines (movies.dat and
    tags.dat whole: the files read line by line), `repeats` times."""
    with tempfile.TemporaryDirectory(prefix="bench-loader-side-") as tmp:
        small = Path(tmp)
        with open(folder / "ratings.dat", encoding="utf-8") as source:
            head = [line for _, line in zip(range(1000), source, strict=False)]
        (small / "ratings.dat").write_text("".join(head), encoding="utf-8")
        for name in ("movies.dat", "tags.dat"):
            (small / name).symlink_to(folder / name)
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            load_movielens(small, engine="columnar")
            seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    args = engine_args(
        __doc__.splitlines()[0], 25_000_000, "ratings in the synthetic ratings file",
        {"--format": dict(choices=("csv", "dat"), default="csv", help="ML-25M CSV or ML-10M .dat files")},
    )  # fmt: skip
    dat = args.format == "dat"
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        folder = Path(tmp)
        begin = time.perf_counter()
        counts = write_movielens(folder, args.rows, args.seed, args.format)
        write_seconds = time.perf_counter() - begin
        size_mb = sum(path.stat().st_size for path in folder.iterdir()) / 1e6
        print(f"wrote {counts} ({size_mb:,.0f} MB) in {write_seconds:.1f} s", flush=True)
        seconds = time_engines(lambda engine: load_movielens(folder, engine=engine), args.repeats)
        side = _side_files_seconds(folder, args.repeats) if dat else []
    table = engine_table(
        f"Loading {args.rows:,} ratings (+ movies, tags), median of {args.repeats} round(s)", "ratings",
        args.rows, seconds, f"python ({'str.split' if dat else 'csv module'}, line by line)",
    )  # fmt: skip
    notes = [
        "Both engines end with the same Python objects, one frozen `Event` per rating; the columnar "
        "engine makes them in one `map` with the garbage collector paused, and that step, not the "
        "parsing, is about half of its time.",
        "The python engine's figure is the loader as it was before the columnar engine.",
    ]
    if side:
        share = statistics.median(side) / statistics.median(seconds["columnar"])
        notes.append(
            f"`movies.dat` and `tags.dat` ({counts['movies']:,} and {counts['tags']:,} lines) are read line "
            "by line by both engines: the columnar load of the folder with `ratings.dat` cut to 1,000 "
            f"lines took {statistics.median(side):.2f} s (median of {len(side)}), {share:.1%} of the full "
            "columnar load."
        )
    report = Report(
        name="loader-dat" if dat else "loader",
        title=f"Data at scale: MovieLens {'.dat' if dat else 'CSV'} loading, columnar vs line by line",
        summary=(
            f"`load_movielens` on a synthetic {'ML-10M' if dat else 'ML-25M'}-format folder "
            f"({counts['users']:,} users, "
            f"{counts['movies']:,} movies, {counts['tags']:,} tags) with `engine=\"python\"` (the reference) "
            "and `engine=\"columnar\"` (the default), alternated in one process; both returned the same data "
            f"set. Arrow used {pa.cpu_count()} CPU thread(s) (`--threads`, else one per core)."
        ),
        tables=[table],
        notes=notes,
        started=started,
    )
    report.params.update({
        "rows": args.rows, "repeats": args.repeats, "seed": args.seed, "format": args.format,
        "counts": counts,
        "files_mb": round(size_mb, 1), "write_seconds": round(write_seconds, 1),
        "arrow_threads": pa.cpu_count(), "pyarrow": pa.__version__, "seconds": seconds,
        "side_files_seconds": side,
    })  # fmt: skip
    report.save()


if __name__ == "__main__":
    main()
