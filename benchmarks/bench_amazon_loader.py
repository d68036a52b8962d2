"""Loading an Amazon Reviews 2023 category file: the columnar engine (Arrow's JSON reader,
`training/data/amazon_columnar.py`) against the line-by-line engine (`engine="python"`, `json.loads`
per line; the reference) on one synthetic file, in one process, alternated.

The file is written into a temporary directory (deleted at the end, never committed) in the 2023
format (`<Category>.jsonl`: rating, title, text, images, asin, parent_asin, user_id, timestamp in
ms, helpful_vote, verified_purchase; the keys and order of the McAuley Lab release): by default
2,000,000 reviews (`--rows`), about 8 per user (the 2023 release's 54.5M users for 571.5M reviews:
~10), products drawn by popularity (Zipf) with 1 to 3 variants (asin) per parent_asin, review
texts of 5-120 words, 1% of the lines repeated and 1% of the reviews copied onto another variant
(the repeats the loader removes). Each round loads the file with both engines (python first) and
checks that both give the same data set. Reported: median seconds, reviews/s and the ratio
python / columnar (the median of the per-round ratios).

A second table times the metadata file alone (`amazon.load_meta`; the columnar engine converts only
the fields used, `training/data/amazon_meta_columnar.py`): `meta_<Category>.jsonl` with one record
per product in the 2023 format (main_category, title, average_rating, rating_number, features,
description, price, images with four URLs each, videos, store, categories, details, parent_asin,
bought_together; about 2 KB a line, as in the release), written after the reviews are timed.

Run: python -m benchmarks.bench_amazon_loader [--rows 2000000] [--repeats 1] [--threads N]
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from benchmarks.bench_loader import engine_args, engine_table, time_engines
from benchmarks.harness import Report
from training.data import load_amazon_2023
from training.data.amazon import load_meta
from training.data.errors import ErrorPolicy

CATEGORY = "Synthetic_Beauty"
IDS = ("parent_asin", "asin")
WORDS = ("great", "smell", "skin", "lotion", "works", "price", "would", "buy", "again", "soft", "dry",
         "love", "the", "a", "it", "and", "not", "very", "for", "my")  # fmt: skip


def write_reviews(folder: Path, rows: int, seed: int = 0) -> dict[str, int]:
    """Write `<CATEGORY>.jsonl` of about `rows` lines into `folder`; counts written."""
    rng = np.random.default_rng(seed)
    products = max(10, rows // 20)
    popularity = 1.0 / np.arange(1, products + 1)
    parents = rng.choice(products, rows, p=popularity / popularity.sum())
    variants = rng.integers(0, 3, rows)
    users = rng.integers(0, max(1, rows // 8), rows)
    stamps = 1_500_000_000_000 + rng.integers(0, 200_000_000_000, rows)
    lengths = rng.integers(5, 121, rows)
    vocab = np.array(WORDS)
    lines = 0
    with open(folder / f"{CATEGORY}.jsonl", "w", encoding="utf-8") as handle:
        for row in range(rows):
            parent = f"B{int(parents[row]):09d}"
            record = {
                "rating": float(1 + row % 5), "title": "Synthetic review title",
                "text": " ".join(vocab[rng.integers(0, len(vocab), int(lengths[row]))].tolist()),
                "images": [], "asin": f"{parent}{int(variants[row])}", "parent_asin": parent,
                "user_id": f"AGSYNTH{int(users[row]):010d}", "timestamp": int(stamps[row]),
                "helpful_vote": row % 7, "verified_purchase": bool(row % 2),
            }  # fmt: skip
            line = json.dumps(record)
            handle.write(line + "\n")
            lines += 1
            if row % 100 == 1:  # a repeated line
                handle.write(line + "\n")
                lines += 1
            if row % 100 == 2:  # the same review on another variant
                handle.write(json.dumps({**record, "asin": f"{parent}9"}) + "\n")
                lines += 1
    return {"lines": lines, "reviews": rows, "products": products}


def write_meta(folder: Path, products: int, seed: int = 0) -> int:
    """Write `meta_<CATEGORY>.jsonl` with one record per product into `folder`; records written."""
    rng = np.random.default_rng(seed + 1)
    vocab = np.array(WORDS)

    def words(low: int, high: int) -> str:
        return " ".join(vocab[rng.integers(0, len(vocab), int(rng.integers(low, high)))].tolist())

    with open(folder / f"meta_{CATEGORY}.jsonl", "w", encoding="utf-8") as handle:
        for product in range(products):
            parent, depth = f"B{product:09d}", product % 4
            image = {size: f"https://images.example/{parent}-{size}.jpg" for size in ("thumb", "large", "hi")}
            record = {
                "main_category": "All Beauty", "title": words(4, 20).capitalize(),
                "average_rating": round(float(rng.uniform(1, 5)), 1),
                "rating_number": int(rng.integers(1, 5000)),
                "features": [words(5, 25) for _ in range(int(rng.integers(0, 6)))],
                "description": [words(20, 80) for _ in range(int(rng.integers(0, 3)))],
                "price": None if product % 3 else round(float(rng.uniform(2, 80)), 2),
                "images": [{**image, "variant": f"PT0{i}"} for i in range(int(rng.integers(1, 6)))],
                "videos": [], "store": f"Store {product % 997} &amp; Co",
                "categories": ["Beauty &amp; Personal Care", "Skin Care", f"Body {product % 13}"][:depth],
                "details": {"Package Dimensions": "5 x 3 x 2 inches; 4 Ounces", "UPC": str(10**11 + product),
                            "Manufacturer": f"Maker {product % 211}", "Item Weight": "4 ounces"},
                "parent_asin": parent, "bought_together": None,
            }  # fmt: skip
            handle.write(json.dumps(record) + "\n")
    return products


def meta_hash(loaded: tuple[dict, dict]) -> int:
    """A hash of the items and category features, in order."""
    items, features = loaded
    return hash((tuple(items.values()), tuple(features.items())))


def main() -> None:
    args = engine_args(__doc__.splitlines()[0], 2_000_000, "reviews in the synthetic file")
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-amazon-loader-") as tmp:
        folder = Path(tmp)
        begin = time.perf_counter()
        counts = write_reviews(folder, args.rows, args.seed)
        write_seconds = time.perf_counter() - begin
        size_mb = sum(path.stat().st_size for path in folder.iterdir()) / 1e6
        print(f"wrote {counts} ({size_mb:,.0f} MB) in {write_seconds:.1f} s", flush=True)
        seconds = time_engines(lambda engine: load_amazon_2023(folder, CATEGORY, engine=engine), args.repeats)
        begin = time.perf_counter()
        meta_records = write_meta(folder, counts["products"], args.seed)
        meta_path = folder / f"meta_{CATEGORY}.jsonl"
        meta_mb = meta_path.stat().st_size / 1e6
        print(f"wrote {meta_records:,} metadata records ({meta_mb:,.0f} MB) in "
              f"{time.perf_counter() - begin:.1f} s", flush=True)  # fmt: skip
        meta_seconds = time_engines(
            lambda engine: load_meta(meta_path, IDS, "store", ErrorPolicy("raise"), engine),
            args.repeats,
            hash_of=meta_hash,
            describe=lambda loaded: f"{len(loaded[0]):,} items",
        )
    meta_table = engine_table(
        f"Loading {meta_records:,} metadata records ({meta_mb:,.0f} MB), median of {args.repeats} round(s)",
        "records",
        meta_records,
        meta_seconds,
        "python (json.loads, line by line)",
    )
    table = engine_table(
        f"Loading {counts['lines']:,} review lines, median of {args.repeats} round(s)", "lines",
        counts["lines"], seconds, "python (json.loads, line by line)",
    )  # fmt: skip
    report = Report(
        name="amazon-loader",
        title="Data at scale: Amazon 2023 review loading, columnar vs line by line",
        summary=(
            f"`load_amazon_2023` on a synthetic `{CATEGORY}.jsonl` ({counts['lines']:,} lines, "
            f'{size_mb:,.0f} MB, {counts["products"]:,} products) with `engine="python"` (the reference) '
            'and `engine="columnar"` (the default), alternated in one process; both returned the same data '
            f"set and counters. Arrow used {pa.cpu_count()} CPU thread(s) (`--threads`, else one per core)."
        ),
        tables=[table, meta_table],
        notes=[
            "Both engines end with the same Python objects, one frozen `Event` per review, built row by row "
            "with the same de-duplication of copied reviews; the columnar engine parses the JSON and finds "
            "the repeated lines in Arrow.",
            "Metadata: both engines build the same `Item` per product; the columnar engine asks Arrow for "
            "the id, title, store and category fields only, so the nested images and details and the long "
            "description and features never become Python objects.",
        ],
        started=started,
    )
    report.params.update({
        "rows": args.rows, "repeats": args.repeats, "seed": args.seed, "counts": counts,
        "file_mb": round(size_mb, 1), "write_seconds": round(write_seconds, 1),
        "arrow_threads": pa.cpu_count(), "pyarrow": pa.__version__, "seconds": seconds,
        "meta_records": meta_records, "meta_mb": round(meta_mb, 1), "meta_seconds": meta_seconds,
    })  # fmt: skip
    report.save()


if __name__ == "__main__":
    main()
