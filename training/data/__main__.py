"""Command line: `python -m training.data {stats,download} --dataset NAME ...`.

    python -m training.data stats --dataset movielens-100k --path ../shared/data/movielens-100k
    python -m training.data stats --dataset amazon-2018 --category All_Beauty --path DIR --json
    python -m training.data download --dataset movielens-latest --dest data/raw
Errors (missing path, malformed line, failed download) go to stderr as one line; exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from training.data.download import download
from training.data.errors import DataError, DataFormatError
from training.data.registry import ALIASES, DATASETS, load_dataset
from training.data.stats import compute_stats, format_stats


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.data", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    names = [*DATASETS, *ALIASES]
    stats = commands.add_parser("stats", help="load a data set and print its statistics")
    stats.add_argument("--dataset", required=True, choices=names)
    stats.add_argument(
        "--path",
        help="data set directory (or reviews file); default for movielens-latest: "
        "the vendored data/ml-latest-small",
    )
    stats.add_argument("--category", help="Amazon category, e.g. All_Beauty")
    stats.add_argument("--state", help="Google Local state, e.g. Vermont")
    stats.add_argument("--tie-break", choices=["item", "file"], default="item")
    stats.add_argument("--on-error", choices=["raise", "skip"], default="raise")
    stats.add_argument("--json", action="store_true", help="machine-readable output")
    fetch = commands.add_parser("download", help="fetch a data set from its official address")
    fetch.add_argument("--dataset", required=True, choices=names)
    fetch.add_argument("--dest", required=True, help="directory to write into")
    fetch.add_argument("--category", help="Amazon category, e.g. All_Beauty")
    fetch.add_argument("--state", help="Google Local state, e.g. Vermont")
    fetch.add_argument("--base-url", help="mirror replacing the official host (same layout)")
    fetch.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "stats":
            dataset = load_dataset(
                args.dataset, args.path, category=args.category, state=args.state,
                tie_break=args.tie_break, on_error=args.on_error,
            )  # fmt: skip
            stats = compute_stats(dataset)
            print(json.dumps(stats.to_dict(), indent=2) if args.json else format_stats(stats))
        else:
            name = ALIASES.get(args.dataset, args.dataset)
            paths = download(
                name,
                args.dest,
                category=args.category,
                state=args.state,
                base_url=args.base_url,
                progress=not args.no_progress,
            )
            for path in paths:
                print(path)
    except DataFormatError as exc:
        print(f"error: {exc.location}: {exc.message}", file=sys.stderr)
        return 2
    except (DataError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # e.g. `| head`: stop quietly (Python docs, "Note on SIGPIPE")
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
