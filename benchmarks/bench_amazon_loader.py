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
python / columnar (the median of the per-round ratios). Metadata files are not part of the set:
both engines read `meta_<Category>.jsonl` line by line.

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

CATEGORY = "Synthetic_Beauty"
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
    table = engine_table(
        f"Loading {counts['lines']:,} review lines, median of {args.repeats} round(s)", "lines",
        counts["lines"], seconds, "python (json.loads, line by line)",
    )  # fmt: skip
    report = Report(
        name="amazon-loader",
        title="Data at scale: Amazon 2023 review loading, columnar vs line by line",
        summary=(
            f"`load_amazon_2023` on a synthetic `{CATEGORY}.jsonl` ({counts['lines']:,} lines, "
            f"{size_mb:,.0f} MB, {counts['products']:,} products) with `engine=\"python\"` (the reference) "
            "and `engine=\"columnar\"` (the default), alternated in one process; both returned the same data "
            f"set and counters. Arrow used {pa.cpu_count()} CPU thread(s) (`--threads`, else one per core)."
        ),
        tables=[table],
        notes=[
            "Both engines end with the same Python objects, one frozen `Event` per review, built row by row "
            "with the same de-duplication of copied reviews; the columnar engine parses the JSON and finds "
            "the repeated lines in Arrow.",
        ],
        started=started,
    )
    report.params.update({
        "rows": args.rows, "repeats": args.repeats, "seed": args.seed, "counts": counts,
        "file_mb": round(size_mb, 1), "write_seconds": round(write_seconds, 1),
        "arrow_threads": pa.cpu_count(), "pyarrow": pa.__version__, "seconds": seconds,
    })  # fmt: skip
    report.save()


if __name__ == "__main__":
    main()
