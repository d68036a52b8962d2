"""How much a user's past reviews tell about the length of the next one (the reason for the encoder's
review-length feature, docs/text.md "Amazon reviews").

For every Amazon 2018 category file in the folder: load it with the project's loader (de-duplicated
as training sees it), split leave-last-out, and correlate, over the test users with at least two past
reviews, log(1 + median words of the past reviews) with log(1 + words of the held-out review).

Run: .venv/bin/python scripts/review_length_signal.py [--path ../shared/data/amazon-2018-5core]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.data import leave_last_out, load_dataset  # noqa: E402


def words(text: str | None) -> int:
    return len((text or "").split())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", default="../shared/data/amazon-2018-5core")
    args = parser.parse_args()
    files = sorted(Path(args.path).glob("*_5.json.gz"))
    if not files:
        raise SystemExit(f"error: no <Category>_5.json.gz under {args.path}")
    print("| category | test users | median words (held out) | correlation |")
    print("|---|---|---|---|")
    for file in files:
        category = file.name.removesuffix("_5.json.gz")
        splits = leave_last_out(load_dataset("amazon-2018", args.path, category=category))
        pairs = [
            (math.log1p(statistics.median(words(e.text) for e in ex.history)),
             math.log1p(words(ex.target.text)))
            for ex in splits.test
            if len(ex.history) >= 2 and ex.target.text
        ]  # fmt: skip
        xs, ys = zip(*pairs, strict=True)
        held_out = statistics.median(round(math.expm1(y)) for y in ys)
        print(f"| {category} | {len(pairs)} | {held_out:.0f} | {statistics.correlation(xs, ys):.2f} |")


if __name__ == "__main__":
    main()
